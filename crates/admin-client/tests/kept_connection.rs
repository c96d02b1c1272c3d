//! The client keeps its connection between calls, and opens a new one when the proxy closed it
//! (a restart, or an answer with `Connection: close`): no call fails for a connection it reused.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nonstop_admin_client::{AdminClient, Endpoint};

/// A stand-in admin API on a unix socket answering `GET /v1/pools`; counts its connections.
/// With `keep_alive` false it closes each connection after one answer.
fn serve(path: &std::path::Path, keep_alive: bool) -> Arc<AtomicUsize> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"pools\":[]}",
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    accepted
}

#[tokio::test]
async fn calls_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let accepted = serve(&path, true);
    let client = AdminClient::new(Endpoint::Unix(path), None);
    for _ in 0..5 {
        assert!(client.pools().await.unwrap().is_empty());
    }
    let clone = client.clone();
    assert!(clone.pools().await.unwrap().is_empty());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for six calls"
    );
}

#[tokio::test]
async fn a_connection_the_proxy_closed_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let accepted = serve(&path, false);
    let client = AdminClient::new(Endpoint::Unix(path), None);
    for _ in 0..5 {
        assert!(client.pools().await.unwrap().is_empty());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "a new connection per call"
    );
}

#[test]
fn a_call_from_another_runtime_opens_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let server = tokio::runtime::Runtime::new().unwrap();
    let accepted = server.block_on(async { serve(&path, true) });
    let client = AdminClient::new(Endpoint::Unix(path), None);
    // The first runtime ends with the connection its task drove; the second must not wait on it.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async { client.pools().await.unwrap() });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), client.pools())
            .await
            .expect("not stuck on the first runtime's connection")
            .unwrap()
    });
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
