//! The sample app (`examples/hello`) as a test backend: its binary, built on first use, and one
//! running instance on 127.0.0.1 whose port is read from its own `listening on` line.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{Proc, read_line_matching};

/// The sample app's binary, built on first use if this test run did not build it already.
pub fn hello_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = crate::target_dir();
            let path = dir.join("nonstop-hello");
            if !path.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.args(["build", "-p", "nonstop-hello"]);
                if dir.ends_with("release") {
                    build.arg("--release");
                }
                assert!(
                    build.status().expect("run cargo").success(),
                    "building nonstop-hello failed"
                );
            }
            path
        })
        .clone()
}

/// One instance of the sample app.
pub struct Hello {
    pub proc: Proc,
    pub port: u16,
    pub node: String,
}

impl Hello {
    pub fn start(node: &str, version: &str) -> Hello {
        Self::start_with(node, version, &[])
    }

    pub fn start_with(node: &str, version: &str, extra: &[&str]) -> Hello {
        Self::start_on(0, node, version, extra)
    }

    /// On `port` (0: any free one), with `extra` arguments (`--start-delay`, `--route`, …).
    pub fn start_on(port: u16, node: &str, version: &str, extra: &[&str]) -> Hello {
        let mut child = Command::new(hello_bin())
            .args(["--port", &port.to_string()])
            .args(["--version", version, "--node", node])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nonstop-hello");
        let stdout = child.stdout.take().expect("piped stdout");
        let proc = Proc { child };
        let line = read_line_matching(stdout, "listening on ", Duration::from_secs(15));
        let addr = line.split_whitespace().nth(2).expect("listening on ADDR");
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("ADDR ends with :PORT");
        Hello {
            proc,
            port,
            node: node.to_string(),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
