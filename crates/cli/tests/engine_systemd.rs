//! The systemd runtime end to end: a real `systemd --user` (testkit), a real `nonstop proxy` and
//! `nonstop deploy` restarting the operator's template unit per node under continuous load.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use nonstop_testkit::systemd::UserManager;
use support::*;

/// The operator's unit: it runs whatever release `current/<node>` points at, on the port and
/// with the version nonstop's drop-in gives it.
fn hello_unit(base: &Path) -> String {
    let b = base.display();
    format!(
        "[Unit]\nDescription=nonstop test: sample app %i\n\n[Service]\n\
         WorkingDirectory={b}/current/%i\n\
         ExecStart={b}/current/%i/run --port ${{NONSTOP_PORT}} --version ${{NONSTOP_VERSION}} --node ${{NONSTOP_NODE}}\n"
    )
}

/// A proxy, a user manager with `hello@.service` installed, and a rolling `[services.shop]` on it.
struct Shop {
    // Dropped first: stops the units, then the manager, by pid.
    manager: UserManager,
    proxy: Proxy,
    base: PathBuf,
    _instances: KillUnder,
    _manager_dir: tempfile::TempDir,
}

impl Shop {
    fn start(nodes: &[&str]) -> Shop {
        let manager_dir = tempfile::tempdir().unwrap();
        let manager = UserManager::start(manager_dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("shop");
        manager
            .install_unit("hello@.service", &hello_unit(&base))
            .unwrap();
        let mut config = format!(
            r#"[proxy]
listen = "127.0.0.1:0"
admin = "unix:{socket}"

[pools.shop]

[services.shop]
strategy = "rolling"
balancer = {{ kind = "builtin", pool = "shop" }}
runtime = {{ kind = "systemd", unit = "hello@{{node}}.service", scope = "user", timeout = "20s", stop_grace = "5s" }}
releases = {{ dir = "{base}", keep = 3 }}
drain = {{ timeout = "5s" }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
verify = "300ms"
"#,
            socket = dir.path().join("admin.sock").display(),
            base = base.display(),
        );
        for node in nodes {
            config.push_str(&format!(
                "\n[[services.shop.nodes]]\nname = \"{node}\"\nport = {}\n",
                nonstop_testkit::free_port()
            ));
        }
        write(&dir.path().join("nonstop.toml"), &config);
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        let proxy = Proxy::start_in(dir);
        Shop {
            manager,
            proxy,
            _instances: KillUnder(base.clone()),
            base,
            _manager_dir: manager_dir,
        }
    }

    /// A release: the script `run`, which starts the sample app (or, `broken`, fails at once).
    fn artifact(&self, version: &str, broken: bool) -> PathBuf {
        let dir = self.proxy.dir.path().join("artifacts").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run");
        let body = if broken {
            format!("echo \"release {version}: cannot read /etc/shop/app.conf\" >&2\nexit 3")
        } else {
            format!("exec \"{}\" \"$@\"", hello_bin().display())
        };
        write(&path, &format!("#!/bin/sh\n# release {version}\n{body}\n"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = self.proxy.command(args);
        self.manager.apply(&mut command);
        command.output().unwrap()
    }

    fn deploy(&self, version: &str, broken: bool) -> Output {
        let artifact = self.artifact(version, broken);
        self.run(&[
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            version,
        ])
    }

    fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "shop", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// What systemd itself says each node's unit runs: (node, state, version on its command line).
    fn units(&self, nodes: &[&str]) -> Vec<(String, String, String)> {
        nodes
            .iter()
            .map(|node| {
                let unit = format!("hello@{node}.service");
                let show = self
                    .manager
                    .show(&unit, &["ActiveState", "SubState", "MainPID"]);
                let pid = &show["MainPID"];
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let version = args
                    .iter()
                    .position(|a| a == "--version")
                    .and_then(|i| args.get(i + 1))
                    .cloned()
                    .unwrap_or_default();
                (
                    node.to_string(),
                    format!("{}/{} pid {pid}", show["ActiveState"], show["SubState"]),
                    version,
                )
            })
            .collect()
    }

    async fn versions_now(&self, n: usize) -> std::collections::BTreeSet<String> {
        let client = client();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let reply = get(&client, &self.proxy.url("/")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            seen.insert(reply.version().to_string());
        }
        seen
    }
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
}

fn report(what: &str, report: &LoadCounts, took: std::time::Duration) {
    eprintln!(
        "{what}: {took:.1?}, sent {} ok {} failed {} by version {:?} by node {:?}",
        report.sent, report.ok, report.failed, report.by_version, report.by_node
    );
    assert_eq!(
        report.failed,
        0,
        "{what}: failures {:?}",
        report.failures.iter().take(5).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploys_through_real_systemd_units_fail_nothing_and_roll_back() {
    if let Some(why) = UserManager::unavailable() {
        eprintln!(
            "\n\n!!! SKIPPED engine_systemd: no real systemd user manager here: {why} !!!\n\n"
        );
        return;
    }
    let nodes = ["n1", "n2"];
    let shop = Shop::start(&nodes);
    assert_exit(&shop.deploy("1", false), 0);
    for (node, state, version) in shop.units(&nodes) {
        assert!(state.starts_with("active/running"), "{node}: {state}");
        assert_eq!(version, "1", "{node}");
    }

    // (1) v1 -> v2, one unit at a time, under continuous load.
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let started = Instant::now();
    let out = shop.deploy("2", false);
    let took = started.elapsed();
    assert_exit(&out, 0);
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
    let seen = load.stop().await;
    report("systemd rolling 1 -> 2", &seen, took);
    assert!(seen.by_version.contains_key("1") && seen.by_version.contains_key("2"));
    let status = shop.status();
    for (node, state, version) in shop.units(&nodes) {
        eprintln!("systemctl --user show hello@{node}.service: {state}, runs --version {version}");
        assert!(state.starts_with("active/running"), "{node}: {state}");
        assert_eq!(version, "2", "{node}: the unit runs v2");
        let entry = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap();
        assert_eq!(entry["process"], "running", "{status}");
        assert_eq!(entry["version"], "2", "{status}");
        assert!(
            state.ends_with(&format!("pid {}", entry["pid"])),
            "{state} vs {entry}"
        );
        let link = std::fs::read_link(shop.base.join("current").join(&node)).unwrap();
        assert!(link.ends_with("releases/2"), "{}", link.display());
    }

    // (2) v3 dies at start-up: rolled back on its own, v2 serves throughout.
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let started = Instant::now();
    let out = shop.deploy("3", true);
    let took = started.elapsed();
    assert_exit(&out, 2);
    let why = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find(|l| l.contains("did not start") || l.contains("exited"))
        .map(str::to_string);
    eprintln!("v3 failed: {}", why.as_deref().unwrap_or("?"));
    assert!(why.is_some(), "{}", text(&out));
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
    let seen = load.stop().await;
    report("systemd rolling 2 -> broken 3, rolled back", &seen, took);
    assert!(!seen.by_version.contains_key("3"));
    for (node, state, version) in shop.units(&nodes) {
        assert!(state.starts_with("active/running"), "{node}: {state}");
        assert_eq!(version, "2", "{node}: back on v2");
    }
    let v3_log = shop.base.join("releases/3/logs/n1.log");
    let v3_log = std::fs::read_to_string(&v3_log).unwrap_or_default();
    assert!(
        v3_log.contains("release 3: cannot read /etc/shop/app.conf"),
        "the unit's stderr lands in the release's log: {v3_log}"
    );

    // (3) status and logs show the unit's log file.
    let out = shop.run(&["status", "shop"]);
    assert_exit(&out, 0);
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(status.contains("shop: serving 2"), "{status}");
    let out = shop.run(&["logs", "shop", "n2"]);
    assert_exit(&out, 0);
    let logs = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        logs.contains("--- nonstop: restarting hello@n2.service")
            && logs.contains("listening on 127.0.0.1:"),
        "{}",
        text(&out)
    );

    let mut manager = shop.manager;
    let down = manager.shutdown();
    eprintln!("user manager shut down: {down:?}");
    assert_eq!(down.processes_left, 0, "{down:?}");
}
