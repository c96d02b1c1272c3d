//! An enrolled agent cannot pose as the console: a fake console on 127.0.0.1 presents an
//! agent-profile certificate (client + server auth, from the console's own CA, the pinned one)
//! for `localhost`, and `nonstop agent join` and `nonstop deploy --console` must refuse it in the
//! TLS handshake, before a join token, a CI token or an artifact is sent. Such a certificate
//! can no longer be issued (`localhost` is reserved); the test makes it with the CA key, as a
//! console before this rule could have.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nonstop_pki::Authority;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use support::binaries;
use tokio::io::AsyncReadExt;

/// An agent certificate as the CA signed them: the agent's name as DNS SAN and CN, client and
/// server auth.
fn agent_profile_cert(pki: &std::path::Path, name: &str) -> (String, String) {
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (format!("{}{ca_pem}", cert.pem()), key.serialize_pem())
}

/// A TLS server with `chain`; counts the application bytes its clients send.
async fn fake_console(chain: &str, key: &str) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connections, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (connections.clone(), received.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (acceptor, r) = (acceptor.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    r.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (port, connections, received)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_cannot_pose_as_the_console() {
    let (nonstop, _) = binaries();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let authority = Authority::open(&pki, "nonstop console").unwrap();
    let fingerprint = nonstop_pki::ca_fingerprint(&authority.cert_pem).unwrap();
    let (chain, key) = agent_profile_cert(&pki, "localhost");
    let (port, connections, received) = fake_console(&chain, &key).await;
    let url = format!("https://localhost:{port}");

    let join = tokio::process::Command::new(&nonstop)
        .args(["agent", "join", &url, "--token", "nsj_the_real_join_token"])
        .args(["--ca-sha256", &fingerprint, "--name", "web1", "--state"])
        .arg(dir.path().join("agent"))
        .output()
        .await
        .unwrap();
    assert!(!join.status.success(), "join must fail: {}", text(&join));
    assert!(text(&join).contains("not the console's"), "{}", text(&join));

    let artifact = dir.path().join("app.bin");
    std::fs::write(&artifact, b"the release").unwrap();
    let deploy = tokio::process::Command::new(&nonstop)
        .args(["deploy", "shop"])
        .arg(&artifact)
        .args(["--version", "v1", "--console", &url])
        .args([
            "--token",
            "nst_the_real_ci_token",
            "--console-ca-sha256",
            &fingerprint,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !deploy.status.success(),
        "deploy must fail: {}",
        text(&deploy)
    );
    assert!(
        text(&deploy).contains("not the console's"),
        "{}",
        text(&deploy)
    );

    // Both reached the fake console, and neither sent it a single byte after the handshake.
    support::wait_until("both clients connected", support::DEADLINE, || {
        let c = connections.clone();
        async move { c.load(Ordering::SeqCst) >= 2 }
    })
    .await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "nothing was sent to the impostor"
    );
    assert!(!dir.path().join("agent/identity").exists());
}

#[tokio::test]
async fn reserved_names_get_no_join_token() {
    let console = support::TestConsole::start(support::Setup::default()).await;
    let admin = console.admin().await;
    for name in [
        "localhost",
        "nonstop-console",
        "127.0.0.1",
        "10.1",
        "a.localhost",
    ] {
        let r = console
            .client
            .post_json(
                "/api/agents/tokens",
                &serde_json::json!({"name": name}),
                &admin.headers(),
            )
            .await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(r.text().contains("reserved"), "{name}: {}", r.text());
    }
    let r = console
        .client
        .post_json(
            "/api/agents/tokens",
            &serde_json::json!({"name": "web1"}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}
