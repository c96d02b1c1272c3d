//! Test harness shared by the nginx and HAProxy driver tests: sample-app backends, processes
//! killed on drop, a bounded concurrent GET stream, and condition waits with deadlines.
#![allow(dead_code)]

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
pub use nonstop_testkit::load::{Load, LoadCounts};
#[allow(unused_imports)]
pub use nonstop_testkit::process::Proc;
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

/// Panics unless the run had no failure; prints the counts for the record.
pub fn assert_no_failures(what: &str, report: &LoadCounts) {
    eprintln!(
        "{what}: sent {} ok {} failed {} (resent after a closed keep-alive: {}) by node {:?}",
        report.sent, report.ok, report.failed, report.resent, report.by_node
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
