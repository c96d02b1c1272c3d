//! Active HTTP health checks: one task per pool probes every member on the pool's interval.
//! `rise` passes bring a backend up, `fall` failures take it down; probes use fresh connections.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nonstop_config::HealthCheck;

use crate::state::{Backend, Pool};

pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

pub fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // A probe must notice a closed listener, which a reused connection could hide.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector)
}

/// Starts the health-check task of `pool`, if it has a check; it ends when the pool is closed.
pub fn spawn(pool: &Arc<Pool>, client: ProbeClient) {
    let Some(check) = pool.health.clone() else {
        return;
    };
    let weak = Arc::downgrade(pool);
    let closed = pool.closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = closed.cancelled() => {}
            _ = run(weak, check, client) => {}
        }
    });
}

async fn run(pool: Weak<Pool>, check: HealthCheck, client: ProbeClient) {
    let mut ticker = tokio::time::interval(check.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let members = pool.members.load_full();
        let results = futures_util::future::join_all(
            members
                .backends
                .iter()
                .map(|backend| probe(&client, &check, backend)),
        )
        .await;
        for (backend, verdict) in members.backends.iter().zip(results) {
            let (passed, why) = match verdict {
                Ok(()) => (true, String::new()),
                Err(why) => (false, why),
            };
            match backend.record_probe(passed, check.rise, check.fall) {
                Some(true) => {
                    tracing::info!(pool = %pool.name, backend = %backend.name, "backend is up: {} checks passed", check.rise)
                }
                Some(false) => {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, reason = %why, "backend is down: {} checks failed", check.fall)
                }
                None => {}
            }
        }
    }
}

async fn probe(client: &ProbeClient, check: &HealthCheck, backend: &Backend) -> Result<(), String> {
    let uri = format!("http://{}{}", backend.addr, check.path);
    let request = Request::get(uri)
        .header(header::HOST, backend.addr.as_str())
        .header(header::USER_AGENT, "nonstop-health/1")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let attempt = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status != StatusCode::from_u16(check.expect_status).unwrap_or(StatusCode::OK) {
            return Err(format!("status {status}, expected {}", check.expect_status));
        }
        if let Some(expected) = &check.expect_body {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(expected.as_str()) {
                return Err(format!("body does not contain `{expected}`"));
            }
        }
        Ok(())
    };
    tokio::time::timeout(check.timeout.0, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", check.timeout)))
}
