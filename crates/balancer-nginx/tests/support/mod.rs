//! Test harness shared by the nginx and HAProxy driver tests: sample-app backends, processes
//! killed on drop, a bounded concurrent GET stream, and condition waits with deadlines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use nonstop_testkit::hello::{Hello, hello_bin};
#[allow(unused_imports)]
pub use nonstop_testkit::process::Proc;
#[allow(unused_imports)]
pub use nonstop_testkit::{free_port, wait_until};

pub const DEADLINE: Duration = Duration::from_secs(20);

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
