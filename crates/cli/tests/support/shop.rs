//! `Shop`: a `nonstop proxy` plus a `[services.shop]` whose nodes run the sample app, in one
//! temp dir, driven through the real `nonstop` binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::*;

/// A proxy plus a `[services.shop]` whose nodes run nonstop-hello, in one temp dir.
pub struct Shop {
    pub proxy: Proxy,
    pub base: PathBuf,
    _instances: KillUnder,
}

impl Shop {
    pub fn start(strategy: &str, nodes: &[&str], extra: &str) -> Shop {
        Shop::start_with_pool(strategy, nodes, "", extra)
    }

    /// [`Shop::start`] with `pool` settings in `[pools.shop]` (e.g. its active health check).
    pub fn start_with_pool(strategy: &str, nodes: &[&str], pool: &str, extra: &str) -> Shop {
        Shop::start_full(strategy, nodes, "", pool, extra)
    }

    /// [`Shop::start_with_pool`] with `proxy` lines in `[proxy]` (e.g. a `metrics` listener).
    pub fn start_full(
        strategy: &str,
        nodes: &[&str],
        proxy: &str,
        pool: &str,
        extra: &str,
    ) -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let base = dir.path().join("shop");
        let mut config = format!(
            r#"[proxy]
listen = "127.0.0.1:0"
admin = "unix:{socket}"
{proxy}
[pools.shop]
{pool}
[services.shop]
strategy = "{strategy}"
{balancer}
{runtime}
releases = {{ dir = "{base}", keep = 3 }}
drain = {{ timeout = "5s" }}
{extra}
"#,
            socket = socket.display(),
            base = base.display(),
            runtime = if extra.contains("runtime =") {
                String::new()
            } else {
                format!(
                    "runtime = {{ kind = \"process\", start = [\"{}\", \"--port\", \"{{port}}\", \"--version\", \"{{version}}\", \"--node\", \"{{node}}\"], stop_grace = \"5s\" }}",
                    hello_bin().display()
                )
            },
            balancer = if extra.contains("balancer =") {
                ""
            } else {
                "balancer = { kind = \"builtin\", pool = \"shop\" }"
            },
        );
        if !extra.contains("health") {
            config.push_str(
                "health = { path = \"/health\", expect_body = \"UP\", interval = \"50ms\", deadline = \"10s\", successes = 2 }\n",
            );
        }
        if !extra.contains("verify") {
            config.push_str("verify = \"300ms\"\n");
        }
        if !extra.contains("keep_warm") {
            config.push_str("keep_warm = \"0s\"\n");
        }
        for node in nodes {
            config.push_str(&format!(
                "\n[[services.shop.nodes]]\nname = \"{node}\"\nport = {}\n",
                free_port()
            ));
        }
        std::fs::write(dir.path().join("nonstop.toml"), config).unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let proxy = Proxy::start_in(dir);
        Shop {
            proxy,
            _instances: KillUnder(base.clone()),
            base,
        }
    }

    pub fn artifact(&self, version: &str) -> PathBuf {
        let path = self
            .proxy
            .dir
            .path()
            .join("artifacts")
            .join(format!("shop-{version}.jar"));
        std::fs::write(&path, format!("release {version}")).unwrap();
        path
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.proxy.command(args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `nonstop deploy shop ARTIFACT --version VERSION EXTRA…`, the artifact written first.
    fn deploy_command(&self, version: &str, extra: &[&str]) -> Command {
        let artifact = self.artifact(version);
        let mut args = vec![
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            version,
        ];
        args.extend_from_slice(extra);
        self.command(&args)
    }

    pub fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        self.deploy_command(version, extra).output().unwrap()
    }

    /// `nonstop deploy shop ARTIFACT --version VERSION EXTRA…` in the background, its stdout
    /// and stderr piped.
    pub fn spawn_deploy(&self, version: &str, extra: &[&str]) -> Proc {
        Proc {
            child: self
                .deploy_command(version, extra)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        }
    }

    /// Waits until deploy `id` has journaled a step of `kind` (e.g. `health`, `verify`).
    pub async fn wait_for_step(&self, id: i64, kind: &str, timeout: std::time::Duration) {
        let needle = format!("\"{kind}\"");
        wait_until(
            &format!("deploy #{id} is at its {kind} step"),
            timeout,
            || async {
                let out = self.run(&["history", "shop", "--deploy", &id.to_string(), "--json"]);
                String::from_utf8_lossy(&out.stdout).contains(&needle)
            },
        )
        .await;
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "shop", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn history(&self) -> serde_json::Value {
        let out = self.run(&["history", "shop", "--json", "--limit", "100"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Versions answering through the proxy right now, from `n` fresh requests.
    pub async fn versions_now(&self, n: usize) -> std::collections::BTreeSet<String> {
        let client = client();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let reply = get(&client, &self.proxy.url("/")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            seen.insert(reply.version().to_string());
        }
        seen
    }

    pub fn running_pids(&self) -> Vec<i32> {
        let Ok(store) = nonstop_store::Store::open(&self.base.join("nonstop.db"), "shop") else {
            return Vec::new();
        };
        store
            .instances()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| nonstop_runtime_process::is_running(&r.instance))
            .map(|r| r.instance.pid)
            .collect()
    }
}

pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
}

/// SIGKILL to `pid`, as a crash or an OOM kill does.
pub fn kill9(pid: i32) {
    nonstop_testkit::process::send_signal(pid as u32, "KILL")
        .unwrap_or_else(|e| panic!("SIGKILL {pid}: {e}"));
}
