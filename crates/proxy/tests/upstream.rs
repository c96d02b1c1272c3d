//! The proxy's own per-worker pool of backend connections: keep-alive reuse, idle connections the
//! backend closed are replaced before a request is written, the idle timeout closes the rest, and
//! answers framed by length, chunks, or close, after interim 1xx answers, reach the client whole.

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

/// A backend written by hand, answering each request by its path as listed in `raw_answer`.
async fn raw_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut served = 0;
                let mut buf = Vec::new();
                loop {
                    let mut piece = [0u8; 4096];
                    let n = match socket.read(&mut piece).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&piece[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    served += 1;
                    let (answer, close): (&[u8], bool) = match path.as_str() {
                        "/interim" => (
                            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ninterim",
                            false,
                        ),
                        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the backend closes", true),
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n",
                            false,
                        ),
                        // Every second request on a connection: closed unanswered, as a
                        // backend closing an idle connection just as a request arrives.
                        _ if served % 2 == 0 => return,
                        _ => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
                    };
                    if socket.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_framed_every_way_and_a_lost_reused_connection_are_handled() {
    let addr = raw_backend().await;
    let rest = format!("[pools.app]\n[[pools.app.backends]]\nname = \"raw\"\naddr = \"{addr}\"\n");
    let proxy = TestProxy::start("", &rest).await;
    let client = client();
    for (path, body) in [
        ("/interim", "interim"),
        ("/until-close", "until the backend closes"),
        ("/chunked", "chunked"),
    ] {
        assert_eq!(
            get(&client, &proxy.url(path)).await.unwrap(),
            (200, body.to_string()),
            "{path}"
        );
    }
    // Each GET after the first on a backend connection finds it closed unanswered: the proxy
    // sends it again on a new connection, so the client sees no failure (and no resend of its own).
    for round in 0..6 {
        assert_eq!(
            get(&client, &proxy.url("/")).await.unwrap(),
            (200, "ok".to_string()),
            "round {round}"
        );
    }
    let view = proxy.backend("app", "raw");
    assert!(
        !view.ejected,
        "a closed idle connection is not the backend's failure"
    );
    proxy.stop().await;
}
