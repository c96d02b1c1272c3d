//! The deploy lifecycle on remote hosts: per-node hooks run on the node's host through its
//! agent (order, environment, a failing one rolls back under load), and a release's `--env`,
//! the service's `env` and a host's `env_files` reach the instance there.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::fleet::{self, deploy_with, service_toml_with};
use support::{KillUnder, Load, Proxy};

const SECRET: &str = "pw-7f3a9c1e-never-logged";

/// A hook that writes what it saw, one line per run: the point, the node, the namespace it
/// runs in and its `NONSTOP_*` values; it fails where `fail_at` (`point node version`) says.
fn hook_script(path: &Path, log: &Path, fail_at: &Path) {
    let script = format!(
        r#"#!/bin/sh
ns=$(ip netns identify $$)
echo "$NONSTOP_HOOK node=$NONSTOP_NODE ns=$ns arg=$1 version=$NONSTOP_VERSION old=$NONSTOP_OLD_VERSION port=$NONSTOP_PORT deploy=$NONSTOP_DEPLOY strategy=$NONSTOP_STRATEGY release_dir=$NONSTOP_RELEASE_DIR" >> {log}
if [ "$NONSTOP_HOOK $NONSTOP_NODE $NONSTOP_VERSION" = "$(cat {fail_at} 2>/dev/null)" ]; then
  echo "refusing $NONSTOP_NODE on purpose"
  exit 7
fi
echo "hook $NONSTOP_HOOK ok on $NONSTOP_NODE"
"#,
        log = log.display(),
        fail_at = fail_at.display()
    );
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The `key=value` words of each hook line, in order.
fn hook_lines(log: &Path) -> Vec<BTreeMap<String, String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let mut seen = BTreeMap::from([("hook".to_string(), words.next().unwrap().into())]);
            for word in words {
                let (k, v) = word.split_once('=').unwrap();
                seen.insert(k.to_string(), v.to_string());
            }
            seen
        })
        .collect()
}

/// The instance's environment, from the sample app's `/env`.
async fn env_of(addr: &str) -> serde_json::Value {
    let reply = support::get(&support::client(), &format!("http://{addr}/env")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// Every file under `dir` (but `except`) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str, except: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path != except
                && std::fs::read(&path)
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_release_environment_on_remote_hosts() {
    let tag = std::process::id() % 100_000;
    let dir = tempfile::tempdir().unwrap();
    let _instances = KillUnder(dir.path().to_path_buf());
    let console_state = dir.path().join("console");
    let names = ["web1", "web2"];
    let mut hosts = fleet::hosts(&format!("{tag}l"), &names, dir.path(), &console_state);
    let hook_log = dir.path().join("hooks.log");
    let fail_at = dir.path().join("fail-at");
    let hook = dir.path().join("hook.sh");
    hook_script(&hook, &hook_log, &fail_at);
    let env_file = dir.path().join("shop.env");
    std::fs::write(
        &env_file,
        format!("# the host's secrets\nDB_PASSWORD={SECRET}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut hosts_toml = String::new();
    for (name, host) in names.iter().zip(&hosts) {
        hosts_toml.push_str(&format!(
            "[hosts.{name}]\nagent = \"{}\"\n\n",
            host.agent_addr()
        ));
    }
    let run = |point: &str| {
        format!(
            "{point} = {{ run = [\"{}\", \"{{node}}@{{version}}\"], timeout = \"10s\" }}",
            hook.display()
        )
    };
    let hooks = format!(
        "hooks = {{ {}, {}, {} }}",
        run("after_install"),
        run("before_traffic"),
        run("after_traffic")
    );
    let runtime_extra = format!(
        ", env = {{ SERVICE_SETTING = \"from-config\" }}, env_files = [\"{}\"]",
        env_file.display()
    );
    let nodes = [("a1", "web1", 8081), ("b1", "web2", 8081)];
    let rest = format!(
        "[pools.shop]\n\n{hosts_toml}{}",
        service_toml_with(
            "shop",
            "balancer = { kind = \"builtin\", pool = \"shop\" }",
            &dir.path().join("console-releases"),
            &nodes,
            &runtime_extra,
            &hooks,
        )
    );
    let proxy = Proxy::start("", &rest);
    let config = proxy.config_path();
    for host in &mut hosts {
        host.start_agent(&config).await;
    }
    let artifact = |v: &str| {
        let path = dir.path().join(format!("shop-{v}.bin"));
        std::fs::write(&path, format!("release {v}\n")).unwrap();
        path
    };
    let deploy = |version: &'static str, extra: &'static [&'static str]| {
        let (config, fleet, artifact) = (config.clone(), console_state.clone(), artifact(version));
        async move { deploy_with(&config, &fleet, "shop", version, &artifact, extra).await }
    };

    let out = deploy("v1", &["--env", "RELEASE_SETTING=from-cli-v1"]).await;
    assert!(out.status.success(), "v1: {}", support::text(&out));
    std::fs::remove_file(&hook_log).unwrap();
    let load = Load::start(proxy.url("/"), 4, 200_000);
    let out = deploy("v2", &["--env", "RELEASE_SETTING=from-cli-v2"]).await;
    let report = load.stop().await;
    let output = support::text(&out);
    assert!(out.status.success(), "v2: {output}");
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.by_version.contains_key("v2"),
        "{:?}",
        report.by_version
    );

    // Each node's three hooks ran on its own host (namespace), in order, with its values.
    let seen = hook_lines(&hook_log);
    for (node, host) in [("a1", &hosts[0]), ("b1", &hosts[1])] {
        let runs: Vec<&BTreeMap<String, String>> =
            seen.iter().filter(|s| s["node"] == node).collect();
        let points: Vec<&str> = runs.iter().map(|s| s["hook"].as_str()).collect();
        assert_eq!(
            points,
            ["after_install", "before_traffic", "after_traffic"],
            "{seen:#?}"
        );
        for run in &runs {
            assert_eq!(run["ns"], host.ns.name, "{node} ran on its host: {run:?}");
            assert_eq!(run["arg"], format!("{node}@v2"), "{run:?}");
            assert_eq!(run["version"], "v2");
            assert_eq!(run["old"], "v1");
            assert_eq!(run["port"], "8081");
            assert_eq!(run["strategy"], "rolling");
            assert!(run["deploy"].parse::<i64>().is_ok_and(|d| d > 0), "{run:?}");
            let release_dir = &run["release_dir"];
            assert!(
                release_dir.starts_with(&host.state.display().to_string()),
                "the host's own release dir: {release_dir} in {run:?}"
            );
        }
    }
    // Rolling, one node at a time: a1's three hooks come before b1's.
    assert_eq!(seen[0]["node"], "a1", "{seen:#?}");
    assert_eq!(seen[3]["node"], "b1", "{seen:#?}");
    assert!(
        output.contains("hook after_install ok on b1"),
        "hook output in the deploy's log: {output}"
    );
    eprintln!("hooks on remote hosts, in order: {seen:#?}");

    // The release's --env, the service's env and the host's env file reach each instance.
    for (node, host) in [("a1", &hosts[0]), ("b1", &hosts[1])] {
        let env = env_of(&format!("{}:8081", host.ns.ns_addr)).await;
        assert_eq!(env["RELEASE_SETTING"], "from-cli-v2", "{node}: {env}");
        assert_eq!(env["SERVICE_SETTING"], "from-config", "{node}: {env}");
        assert_eq!(env["DB_PASSWORD"], SECRET, "{node}: {env}");
        assert_eq!(env["NONSTOP_NODE"], node, "{node}: {env}");
        assert_eq!(env["NONSTOP_VERSION"], "v2", "{node}: {env}");
    }

    // A before_traffic hook failing on b1 (the second host) rolls the deploy back: exit 2, its
    // output in the log, a1 back on v2, and no request fails.
    std::fs::write(&fail_at, "before_traffic b1 v3").unwrap();
    std::fs::remove_file(&hook_log).unwrap();
    let load = Load::start(proxy.url("/"), 4, 200_000);
    let out = deploy("v3", &[]).await;
    let report = load.stop().await;
    let output = support::text(&out);
    assert_eq!(out.status.code(), Some(2), "rolled back: {output}");
    assert!(output.contains("refusing b1 on purpose"), "{output}");
    assert!(output.contains("exit status: 7"), "{output}");
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    eprintln!(
        "failing hook on web2: exit 2, {} requests, 0 failed",
        report.sent
    );
    for host in &hosts {
        let env = env_of(&format!("{}:8081", host.ns.ns_addr)).await;
        assert_eq!(
            env["NONSTOP_VERSION"], "v2",
            "back on v2 after the rollback: {env}"
        );
    }

    // The secret is on the hosts' instances only: in no log, journal, store or release.
    let found = files_containing(dir.path(), SECRET, &env_file);
    assert!(
        found.is_empty(),
        "the env file's value leaked into {found:?}"
    );
    let (ok, history) = proxy.cli(&[
        "history",
        "shop",
        "--fleet",
        &console_state.display().to_string(),
    ]);
    assert!(ok, "{history}");
    assert!(!history.contains(SECRET), "{history}");
    assert!(!output.contains(SECRET));
}
