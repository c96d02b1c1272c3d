//! The proxy's own per-worker pool of backend connections: keep-alive reuse, idle connections the
//! backend closed are replaced before a request is written, and the idle timeout closes the rest.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn pool(backend: &Backend) -> String {
    format!(
        "[pools.app]\n[[pools.app.backends]]\nname = \"{}\"\naddr = \"{}\"\n",
        backend.name, backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_client_uses_one_backend_connection() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &pool(&a)).await;
    let client = client();
    for _ in 0..300 {
        assert_eq!(get(&client, &proxy.url("/")).await.unwrap().0, 200);
    }
    assert_eq!(a.count(), 300);
    assert_eq!(
        a.connections.load(Ordering::Relaxed),
        1,
        "every request reused the first connection"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_backend_closed_are_replaced_without_a_failure() {
    let a = Backend::start_with("a", Some(Duration::from_millis(100))).await;
    let proxy = TestProxy::start("", &pool(&a)).await;
    let client = client();
    for round in 1..=8u64 {
        // POST: not idempotent, so this must work without any resend of a written request.
        let request = http::Request::post(proxy.url("/"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "round {round}");
        wait_until("the backend closed the idle connection", || {
            a.closed.load(Ordering::Relaxed) >= round
        })
        .await;
    }
    assert_eq!(a.connections.load(Ordering::Relaxed), 8);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_unused_backend_connections() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("timeouts = { idle = \"1s\" }", &pool(&a)).await;
    assert_eq!(get(&client(), &proxy.url("/")).await.unwrap().0, 200);
    assert_eq!(a.closed.load(Ordering::Relaxed), 0);
    wait_until("the proxy closed its idle backend connection", || {
        a.closed.load(Ordering::Relaxed) == 1
    })
    .await;
    proxy.stop().await;
}
