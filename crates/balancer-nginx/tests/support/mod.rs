//! Test harness shared by the nginx and HAProxy driver tests: sample-app backends, processes
//! killed on drop, a bounded concurrent GET stream, and condition waits with deadlines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !condition().await {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `target/debug` (or release), from the test binary's own path.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The sample app's binary, built on first use if this run did not build it already.
pub fn hello_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = target_dir().join("nonstop-hello");
            if !path.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.args(["build", "-p", "nonstop-hello"]);
                if target_dir().ends_with("release") {
                    build.arg("--release");
                }
                assert!(
                    build.status().unwrap().success(),
                    "building nonstop-hello failed"
                );
            }
            path
        })
        .clone()
}

/// A child we started, killed (by its own pid) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has already exited: the test's server died.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what} exited: {status}");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instance of the sample app.
pub struct Hello {
    pub proc: Proc,
    pub port: u16,
}

impl Hello {
    pub fn start(node: &str, version: &str) -> Hello {
        let mut child = Command::new(hello_bin())
            .args(["--port", "0", "--version", version, "--node", node])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nonstop-hello");
        let stdout = child.stdout.take().unwrap();
        let proc = Proc { child };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains("listening on ") {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("nonstop-hello printed no `listening on`");
        let addr = line.split_whitespace().nth(2).expect("listening on ADDR");
        let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        Hello { proc, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A port that was free a moment ago, for servers that cannot report the one they bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub node: String,
    pub body: String,
}

pub async fn get(client: &HttpClient, url: &str) -> Result<Reply, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let response = client.get(uri).await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let node = response
        .headers()
        .get("x-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        node,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Which node answers a fresh connection now.
pub async fn node_of(url: &str) -> String {
    match get(&client(), url).await {
        Ok(reply) if reply.status == 200 => reply.node,
        Ok(reply) => format!("status {}", reply.status),
        Err(e) => e,
    }
}

/// What a load run saw: every response counted by outcome and by the node that served it.
#[derive(Default, Debug)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: Vec<String>,
    pub by_node: BTreeMap<String, u64>,
    /// GETs resent once because the server closed an idle keep-alive connection as they were sent.
    pub retried: u64,
}

/// An idle keep-alive connection closed by the server as the request went out: no response
/// started, so an idempotent request may be resent (RFC 9112 §9.3.1; browsers do).
fn closed_idle_connection(error: &str) -> bool {
    error.contains("SendRequest")
        && (error.contains("IncompleteMessage") || error.contains("ConnectionReset"))
}

/// A continuous stream of GETs from `concurrency` keep-alive clients until stopped or `max_requests`.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    pub fn start(url: String, concurrency: usize, max_requests: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let tasks = (0..concurrency)
            .map(|_| {
                let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
                tokio::spawn(async move {
                    let client = client();
                    let mut report = LoadReport::default();
                    while !stop.load(Ordering::Relaxed)
                        && sent.fetch_add(1, Ordering::Relaxed) < max_requests
                    {
                        report.sent += 1;
                        let mut reply = get(&client, &url).await;
                        if matches!(&reply, Err(e) if closed_idle_connection(e)) {
                            report.retried += 1;
                            reply = get(&client, &url).await;
                        }
                        match reply {
                            Ok(reply) if reply.status == 200 => {
                                report.ok += 1;
                                *report.by_node.entry(reply.node).or_default() += 1;
                            }
                            Ok(reply) => {
                                report.failed += 1;
                                report.failures.push(format!(
                                    "{} {}",
                                    reply.status,
                                    reply.body.trim()
                                ));
                            }
                            Err(e) => {
                                report.failed += 1;
                                report.failures.push(e);
                            }
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, tasks, sent }
    }

    /// Waits until `n` more requests than now have been sent.
    pub async fn wait_for_more(&self, n: u64) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        let sent = self.sent.clone();
        wait_until(&format!("{target} requests sent"), DEADLINE, || {
            let sent = sent.clone();
            async move { sent.load(Ordering::Relaxed) >= target }
        })
        .await;
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for task in self.tasks {
            let report = task.await.unwrap();
            total.sent += report.sent;
            total.ok += report.ok;
            total.failed += report.failed;
            total.failures.extend(report.failures);
            total.retried += report.retried;
            for (k, v) in report.by_node {
                *total.by_node.entry(k).or_default() += v;
            }
        }
        total
    }
}

/// Panics unless the run had no failure; prints the counts for the record.
pub fn assert_no_failures(what: &str, report: &LoadReport) {
    eprintln!(
        "{what}: sent {} ok {} failed {} (resent after a closed keep-alive: {}) by node {:?}",
        report.sent, report.ok, report.failed, report.retried, report.by_node
    );
    assert_eq!(
        report.failed,
        0,
        "{what}: {} of {} requests failed, first: {:?}",
        report.failed,
        report.sent,
        report.failures.iter().take(5).collect::<Vec<_>>()
    );
}
