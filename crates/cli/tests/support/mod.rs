//! Test harness: real `nonstop proxy` and `nonstop-hello` processes on 127.0.0.1 with ephemeral
//! ports, an HTTP client, a bounded load generator, and condition waits with deadlines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nonstop_admin_client::{AdminClient, Endpoint};

// Each test file uses some of these.
#[allow(unused_imports)]
pub use nonstop_testkit::hello::{Hello, hello_bin};
#[allow(unused_imports)]
pub use nonstop_testkit::load::{Load, LoadCounts};
#[allow(unused_imports)]
pub use nonstop_testkit::process::{KillUnder, Proc, read_line_matching};
pub use nonstop_testkit::wait_until;

pub mod fleet;
pub mod modjk;
pub mod shop;

#[allow(unused_imports)]
pub use shop::{Shop, assert_exit, kill9};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn nonstop_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nonstop"))
}

/// A running `nonstop proxy` with its own config directory.
pub struct Proxy {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub admin: AdminClient,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts a proxy whose config is `[proxy]` (listen/admin filled in) plus `rest`.
    pub fn start(proxy_extra: &str, rest: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let config = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"unix:{}\"\n{proxy_extra}\n{rest}",
            socket.display()
        );
        std::fs::write(dir.path().join("nonstop.toml"), config).unwrap();
        Self::start_in(dir)
    }

    /// Stops this proxy with SIGTERM and starts a new one on the same config directory.
    pub fn restart(self) -> Proxy {
        let Proxy { mut proc, dir, .. } = self;
        proc.signal("TERM");
        assert!(proc.wait_exit(Duration::from_secs(10)).success());
        Self::start_in(dir)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("nonstop.toml")
    }

    pub fn start_in(dir: tempfile::TempDir) -> Proxy {
        let mut child = Command::new(nonstop_bin())
            .args(["proxy", "--json-logs", "--config"])
            .arg(dir.path().join("nonstop.toml"))
            .env("NONSTOP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nonstop proxy");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("proxy started") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let proc = Proc { child };
        let started = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("proxy did not start: {:?}", log.lock().unwrap()));
        let event: serde_json::Value = serde_json::from_str(&started).unwrap();
        let listen = event["listen"].as_str().unwrap();
        let port = listen
            .trim_matches(['[', ']'])
            .split(',')
            .next()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let admin = AdminClient::new(Endpoint::Unix(dir.path().join("admin.sock")), None);
        Proxy {
            proc,
            port,
            dir,
            admin,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `pool/backend`, as the admin API reports it, satisfies `condition`.
    pub async fn wait_backend(
        &self,
        pool: &str,
        backend: &str,
        what: &str,
        condition: impl Fn(&nonstop_admin_client::Backend) -> bool,
    ) {
        let until = Instant::now() + DEADLINE;
        loop {
            let pool = self.admin.pool(pool).await.unwrap();
            if pool.backend(backend).is_some_and(&condition) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out after {DEADLINE:?} waiting for: {what}; last seen {pool:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `nonstop ARGS --config <this proxy's config>`, stdin closed, ready to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(nonstop_bin());
        command
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .stdin(std::process::Stdio::null());
        command
    }

    /// Runs `nonstop ARGS` (e.g. `lb pools`) against this proxy's config; returns (success, stdout+stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(nonstop_bin())
            .args(args)
            .env("NONSTOP_CONFIG", self.config_path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }
}

/// `nonstop status shop --json` against `config`.
pub fn status_json(config: &Path) -> serde_json::Value {
    let out = Command::new(nonstop_bin())
        .args(["status", "shop", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out)))
}

/// `nonstop status`: every node of `shop` runs `version` and takes traffic.
pub fn assert_all_on(config: &Path, version: &str) {
    for node in status_json(config)["nodes"].as_array().unwrap() {
        assert_eq!(node["version"], version, "{node}");
        assert_eq!(node["balancer"], "active", "{node}");
    }
}

/// Config text for a pool named `name` with the given backends `(name, addr, extra)`.
pub fn pool_toml(name: &str, settings: &str, backends: &[(&str, String, &str)]) -> String {
    let mut text = format!("[pools.{name}]\n{settings}\n");
    for (backend, addr, extra) in backends {
        text.push_str(&format!(
            "[[pools.{name}.backends]]\nname = \"{backend}\"\naddr = \"{addr}\"\n{extra}\n"
        ));
    }
    text
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn node(&self) -> &str {
        self.headers
            .get("x-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn version(&self) -> &str {
        self.headers
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, "GET", url, &[], "")
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Runs `nonstop ARGS CONFIG` on a temporary file holding `config`; returns (success, stderr).
pub fn nonstop_on_config(args: &[&str], config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nonstop.toml");
    write(
        &path,
        &config.replace("{dir}", &dir.path().display().to_string()),
    );
    let output = Command::new(nonstop_bin())
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A finished command's exit code, stdout and stderr, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The one free-port rule: testkit's (below the ephemeral range, never handed out twice).
pub use nonstop_testkit::free_port;
