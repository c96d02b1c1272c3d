//! Connection limits after the TLS handshake: a request trickling its headers and an idle
//! connection are closed within their timeouts, and one address cannot hold more connections
//! than its cap (a closed one frees its place).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nonstop_console::Limits;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use support::{Setup, TestConsole};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(1),
    idle: Duration::from_secs(2),
    per_address: 4,
};

async fn console() -> TestConsole {
    TestConsole::start(Setup {
        limits: Some(LIMITS),
        ..Setup::default()
    })
    .await
}

/// A TLS connection to the console (HTTP/1.1 only), handshake done.
async fn connect(console: &TestConsole) -> std::io::Result<TlsStream<TcpStream>> {
    let ca = std::fs::read_to_string(console.state.join("pki/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(console.addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// How long until the server closes `tls` (reading whatever it sends); panics after `limit`.
async fn closed_after(tls: &mut (impl AsyncRead + Unpin), limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_trickled_request_and_an_idle_connection_are_closed() {
    let console = console().await;
    // Headers a byte every 300 ms, never finished: cut at the header-read timeout, though
    // bytes keep coming (the idle timeout alone would not).
    let slow = connect(&console).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(slow);
    writer
        .write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b"X").await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    });
    let after = closed_after(&mut reader, Duration::from_secs(6)).await;
    trickle.abort();
    assert!(after < Duration::from_secs(4), "{after:?}");

    // Nothing at all after the handshake: cut at the idle timeout.
    let mut idle = connect(&console).await.unwrap();
    let after = closed_after(&mut idle, Duration::from_secs(6)).await;
    assert!(
        after >= Duration::from_millis(1500),
        "not before the idle timeout: {after:?}"
    );

    // A connection kept alive after a request is idle too.
    let mut kept = connect(&console).await.unwrap();
    kept.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let after = closed_after(&mut kept, Duration::from_secs(6)).await;
    assert!(after >= Duration::from_millis(900), "{after:?}");
}

#[tokio::test]
async fn one_address_holds_at_most_its_cap_of_connections() {
    let console = console().await;
    let mut open = Vec::new();
    for _ in 0..LIMITS.per_address {
        open.push(connect(&console).await.unwrap());
    }
    let refused = connect(&console).await;
    assert!(
        refused.is_err(),
        "one connection above the cap is closed at once"
    );
    open.pop();
    support::wait_until(
        "a closed connection frees its place",
        support::DEADLINE,
        || async { connect(&console).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn a_trusted_proxy_is_not_capped() {
    let console = TestConsole::start(Setup {
        limits: Some(LIMITS),
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..Setup::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..2 * LIMITS.per_address {
        open.push(connect(&console).await.unwrap());
    }
}
