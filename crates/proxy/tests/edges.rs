//! Hostile and heavy input at the edges (issue 12): client faults are the client's (400/408, never
//! a backend failure), header and connection caps, duplicate Host, and what passive health sees.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_backend(backend: &Backend, settings: &str) -> String {
    format!(
        "[pools.app]\n{settings}\n[[pools.app.backends]]\nname = \"{}\"\naddr = \"{}\"\n",
        backend.name, backend.addr
    )
}

const EJECT_AT_ONCE: &str = "eject = { consecutive_failures = 1, cooldown = \"60s\" }";

fn assert_untouched(proxy: &TestProxy, what: &str) {
    let view = proxy.backend("app", "a");
    assert!(!view.ejected, "{what}: the backend was ejected");
    assert_eq!(view.failures, 0, "{what}: counted as a backend failure");
    assert_eq!(view.responses["5xx"], 0, "{what}: counted as a 5xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_400_and_never_ejects_the_backend() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a, EJECT_AT_ONCE)).await;
    let head = "POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    for (what, body) in [
        ("bad chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk longer than its size", "2\r\nhello\r\n0\r\n\r\n"),
        ("LF-only framing", "5\nhello\n0\n\n"),
    ] {
        for _ in 0..4 {
            let answer = raw(proxy.addr, format!("{head}{body}").as_bytes(), DEADLINE).await;
            assert!(
                status_line(&answer).starts_with("HTTP/1.1 400"),
                "{what}: {answer}"
            );
            assert!(answer.contains("malformed"), "{what}: {answer}");
        }
        assert_untouched(&proxy, what);
    }
    // A body cut short: the client sends half a chunk and closes its side.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(format!("{head}a\r\nhello").as_bytes())
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert_untouched(&proxy, "short chunk");

    let metrics = proxy.metrics();
    assert!(
        metric(
            &metrics,
            "nonstop_proxy_errors_total{pool=\"app\",kind=\"ClientBody\"}"
        ) >= 12.0,
        "{metrics}"
    );
    let (status, body) = get(&client(), &proxy.url("/")).await.unwrap();
    assert_eq!((status, body.starts_with("node=a")), (200, true), "{body}");
    proxy.stop().await;
}

/// Sends `pieces` × `size` bytes of a Content-Length body with `gap` between them; returns the answer.
async fn slow_upload(
    proxy: &TestProxy,
    pieces: usize,
    size: usize,
    declared: usize,
    gap: Duration,
) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {declared}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..pieces {
        tokio::time::sleep(gap).await;
        if stream.write_all(&vec![b'u'; size]).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_gets_its_answer_and_a_stalled_one_a_408_without_ejection() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "timeouts = { response_header = \"300ms\", request_body = \"700ms\" }",
        &one_backend(&a, EJECT_AT_ONCE),
    )
    .await;
    // 200 KB (streamed, over the 64 KiB retry buffer) over ~1.5 s: five response-header timeouts
    // long. The timeout starts once the body is sent, so the backend's answer arrives.
    let answer = slow_upload(&proxy, 15, 13_334, 200_010, Duration::from_millis(100)).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("body=200010"), "{answer}");

    // A client that stops half-way gets 408 after timeouts.request_body; the backend is fine.
    let answer = slow_upload(&proxy, 2, 50_000, 200_000, Duration::from_millis(50)).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("timeouts.request_body"), "{answer}");
    // Small (buffered) bodies are held to the same pause limit.
    let answer = slow_upload(&proxy, 1, 100, 1000, Duration::from_millis(10)).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 408"), "{answer}");
    assert_untouched(&proxy, "stalled uploads");
    let metrics = proxy.metrics();
    assert_eq!(
        metric(
            &metrics,
            "nonstop_proxy_errors_total{pool=\"app\",kind=\"ClientTimeout\"}"
        ),
        2.0,
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_cap_get_431_and_are_not_forwarded() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a, "")).await;
    let request = |filler: usize| {
        format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\nconnection: close\r\n\r\n",
            "f".repeat(filler)
        )
    };
    let answer = raw(proxy.addr, request(60_000).as_bytes(), DEADLINE).await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 200"),
        "60 KB of headers: {answer}"
    );
    assert_eq!(a.count(), 1);
    for size in [100_000, 1_000_000] {
        let answer = raw(proxy.addr, request(size).as_bytes(), DEADLINE).await;
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 431"),
            "{size} bytes of headers: {}",
            status_line(&answer)
        );
    }
    assert_eq!(a.count(), 1, "an oversized request reached the backend");
    proxy.stop().await;

    let proxy = TestProxy::start(
        "limits = { max_header_size = \"16KiB\" }",
        &one_backend(&a, ""),
    )
    .await;
    let answer = raw(proxy.addr, request(20_000).as_bytes(), DEADLINE).await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(a.count(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_get_400_and_nothing_is_forwarded() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a, "")).await;
    let answer = raw(
        proxy.addr,
        b"GET /echo-host HTTP/1.1\r\nhost: shop.example\r\nhost: admin.internal\r\nconnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
    assert_eq!(a.count(), 0);
    let answer = raw(
        proxy.addr,
        b"GET /echo-host HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(answer.ends_with("shop.example"), "{answer}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_at_its_connection_cap_stops_accepting_until_one_closes() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "limits = { connections_per_worker = 2 }",
        &one_backend(&a, ""),
    )
    .await;
    let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(get).await.unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third.write_all(get).await.unwrap();
    wait_until("the cap counted", || {
        metric(&proxy.metrics(), "nonstop_connection_limit_reached_total") >= 1.0
    })
    .await;
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served past the cap");
    assert_eq!(metric(&proxy.metrics(), "nonstop_client_connections"), 2.0);
    drop(held.pop());
    let n = tokio::time::timeout(DEADLINE, third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_response_counts_as_a_backend_failure() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a, EJECT_AT_ONCE)).await;
    let answer = raw(
        proxy.addr,
        b"GET /truncate HTTP/1.1\r\nhost: x\r\n\r\n",
        DEADLINE,
    )
    .await;
    // The client sees the connection close before a whole answer (head and part of the body, or
    // nothing, depending on when the backend's close is read); never a padded or complete one.
    assert!(
        answer.len() < 100_000,
        "the client got a short body, not a padded one"
    );
    wait_until("the cut-short body counted", || {
        proxy.backend("app", "a").failures == 1
    })
    .await;
    assert!(proxy.backend("app", "a").ejected);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_the_client_gave_up_on_counts_as_a_backend_failure() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "timeouts = { response_header = \"500ms\" }",
        &one_backend(&a, EJECT_AT_ONCE),
    )
    .await;
    let answer = raw(
        proxy.addr,
        b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(answer, "", "the client left before any answer");
    wait_until("the hang counted", || {
        proxy.backend("app", "a").failures == 1
    })
    .await;
    assert!(proxy.backend("app", "a").ejected);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_never_reach_the_backend_as_a_hidden_request() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a, EJECT_AT_ONCE)).await;
    let hidden = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    for (what, head, body) in [
        (
            "CL.TE",
            "content-length: 6\r\ntransfer-encoding: chunked",
            format!("0\r\n\r\n{hidden}"),
        ),
        (
            "TE.CL",
            "transfer-encoding: chunked\r\ncontent-length: 3",
            format!("5c\r\n{hidden}\r\n0\r\n\r\n"),
        ),
        (
            "two lengths",
            "content-length: 0\r\ncontent-length: 44",
            hidden.to_string(),
        ),
        (
            "TE with a space",
            "transfer-encoding : chunked",
            format!("0\r\n\r\n{hidden}"),
        ),
        (
            "TE not last chunked",
            "transfer-encoding: chunked, identity",
            format!("0\r\n\r\n{hidden}"),
        ),
        (
            "TE obfuscated",
            "transfer-encoding: xchunked",
            format!("0\r\n\r\n{hidden}"),
        ),
    ] {
        let request = format!("POST /front HTTP/1.1\r\nhost: x\r\n{head}\r\n\r\n{body}");
        let answer = raw(proxy.addr, request.as_bytes(), Duration::from_secs(2)).await;
        let paths = a.paths.lock().unwrap().clone();
        assert!(
            !paths.iter().any(|p| p == "/smuggled"),
            "{what}: {paths:?}\n{answer}"
        );
        println!("{what}: {} | backend saw {paths:?}", status_line(&answer));
    }
    assert_untouched(&proxy, "smuggling attempts");
    proxy.stop().await;
}
