//! The proxy's own HTTP/1 server connection, on the wire: pipelining, HTTP/1.0 keep-alive,
//! `100 Continue`, HEAD, chunked uploads, an early answer to an unread body, keep-alive reuse.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_backend(backend: &Backend) -> String {
    format!(
        "[pools.app]\n[[pools.app.backends]]\nname = \"{}\"\naddr = \"{}\"\n",
        backend.name, backend.addr
    )
}

/// Reads from `stream` until `text` has arrived `times` times in all, or panics after [`DEADLINE`].
async fn read_until(stream: &mut TcpStream, text: &str, times: usize) -> String {
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    while String::from_utf8_lossy(&out).matches(text).count() < times {
        let mut piece = [0u8; 4096];
        let n = tokio::time::timeout_at(until, stream.read(&mut piece))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {text:?} × {times} in {:?}",
                    String::from_utf8_lossy(&out)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {text:?} × {times}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&piece[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let three = "GET /one HTTP/1.1\r\nhost: x\r\n\r\nPOST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /three HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(three.as_bytes()).await.unwrap();
    let answers = read_until(&mut stream, "node=a", 3).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers}");
    assert!(answers.contains("node=a body=5"), "{answers}");
    assert_eq!(*a.paths.lock().unwrap(), ["/one", "/two", "/three"]);
    assert_eq!(a.count(), 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_closes_unless_it_asks_for_keep_alive() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a)).await;
    let answer = raw(proxy.addr, b"GET / HTTP/1.0\r\n\r\n", DEADLINE).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("node=a body=0"),
        "closed after the answer: {answer}"
    );

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let ask = b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n";
    stream.write_all(ask).await.unwrap();
    let first = read_until(&mut stream, "node=a", 1).await;
    assert!(first.contains("connection: keep-alive\r\n"), "{first}");
    assert!(first.contains("content-length: 13\r\n"), "{first}");
    stream.write_all(ask).await.unwrap();
    read_until(&mut stream, "node=a", 1).await;
    assert_eq!(a.count(), 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_its_go_ahead_and_the_body_arrives() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head =
        "PUT /up HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let go = read_until(&mut stream, "\r\n\r\n", 1).await;
    // The go-ahead comes when the proxy starts reading the body: a body this large is streamed,
    // so the backend may already have the head.
    assert_eq!(go, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(&[b'b'; 100_000]).await.unwrap();
    let answer = read_until(&mut stream, "node=a body=100000", 1).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_carry_the_length_and_no_body() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answers = read_until(&mut stream, "node=a", 1).await;
    let (head_answer, get_answer) = answers.split_once("\r\n\r\n").unwrap();
    assert!(head_answer.contains("content-length: 13"), "{answers}");
    assert!(
        get_answer.starts_with("HTTP/1.1 200 OK\r\n"),
        "the HEAD answer had a body: {answers}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_streams_through_in_pieces() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let piece = format!("{:x};note=1\r\n{}\r\n", 30_000, "c".repeat(30_000));
    for _ in 0..10 {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream
        .write_all(b"0\r\nx-trailer: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(&mut stream, "node=a body=300000", 1).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The connection is reusable after a chunked body.
    stream
        .write_all(b"GET /again HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut stream, "node=a body=0", 1).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_reaches_the_client_and_closes_the_connection() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("max_body = \"1KiB\"", &one_backend(&a)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // Part of the body is sent; the 413 comes without the rest, then the connection closes.
    let _ = stream.write_all(&[b'x'; 200_000]).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert_eq!(a.count(), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_their_status_and_nothing_is_forwarded() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("", &one_backend(&a)).await;
    for (request, status) in [
        ("GET / HTTP/1.1\r\nho st: x\r\n\r\n", "400"),
        ("GET / HTTP/1.1\r\nhost: x\r\nfold: a\r\n b\r\n\r\n", "400"),
        ("GET / HTTP/3.0\r\nhost: x\r\n\r\n", "505"),
        (
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
            "501",
        ),
        ("GET / HTTP/1.1\r\nconnection: close\r\n\r\n", "400"),
    ] {
        let answer = raw(proxy.addr, request.as_bytes(), DEADLINE).await;
        assert!(
            status_line(&answer).starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?}: {answer}"
        );
    }
    assert_eq!(a.count(), 0);
    proxy.stop().await;
}
