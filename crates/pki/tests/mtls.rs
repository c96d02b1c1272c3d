//! Mutual TLS between a console and agents over 127.0.0.1: an enrolled agent is accepted and
//! named; no certificate, a foreign CA's certificate, or a spent join token gets nothing.

use std::sync::Arc;

use nonstop_pki::{
    AgentRequest, Authority, Identity, JoinTokens, TokenError, client_config, peer_name,
    server_config,
};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A console endpoint that answers each verified client with its certificate's name.
async fn console(
    authority: &Authority,
) -> (u16, tokio::task::JoinHandle<Vec<Result<String, String>>>) {
    let identity = authority.issue_server(&["console.local".into()]).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&identity, &authority.cert_pem).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let name = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first().and_then(peer_name))
                        .unwrap_or_default();
                    let _ = tls.write_all(format!("hello {name}").as_bytes()).await;
                    let _ = tls.shutdown().await;
                    seen.push(Ok(name));
                }
                Err(e) => seen.push(Err(e.to_string())),
            }
        }
        seen
    });
    (port, task)
}

async fn call(port: u16, identity: &Identity, ca_pem: &str) -> Result<String, String> {
    let connector = TlsConnector::from(Arc::new(client_config(identity, ca_pem).unwrap()));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("console.local").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// An agent enrols: CSR with its own key, join token redeemed once, certificate signed.
fn enrol(
    authority: &Authority,
    tokens: &JoinTokens,
    token: &str,
    now: i64,
) -> Result<Identity, TokenError> {
    let agent = tokens.redeem(token, now)?;
    let request = AgentRequest::new(&agent).unwrap();
    let cert_pem = authority.sign_agent(&request.csr_pem, &agent).unwrap();
    Ok(Identity {
        cert_pem,
        key_pem: request.key_pem,
    })
}

#[tokio::test]
async fn only_enrolled_agents_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open(&dir.path().join("ca"), "console").unwrap();
    let tokens = JoinTokens::open(&dir.path().join("console.db")).unwrap();
    let token = tokens.issue("web-1", 10_000).unwrap();
    let agent = enrol(&authority, &tokens, &token, 5_000).unwrap();

    // The token is spent, and a stolen copy is worthless; an expired one never worked.
    assert_eq!(
        enrol(&authority, &tokens, &token, 5_001).unwrap_err(),
        TokenError::Invalid
    );
    let late = tokens.issue("web-2", 10_000).unwrap();
    assert_eq!(
        tokens.redeem(&late, 10_000).unwrap_err(),
        TokenError::Invalid
    );
    assert_eq!(
        tokens.redeem("nsj_guess", 1).unwrap_err(),
        TokenError::Invalid
    );

    let (port, server) = console(&authority).await;
    assert_eq!(
        call(port, &agent, &authority.cert_pem).await.unwrap(),
        "hello web-1"
    );

    // A certificate from another CA, even for the same name, is refused by the console.
    let rogue_ca = Authority::create("rogue").unwrap();
    let rogue = AgentRequest::new("web-1").unwrap();
    let rogue = Identity {
        cert_pem: rogue_ca.sign_agent(&rogue.csr_pem, "web-1").unwrap(),
        key_pem: rogue.key_pem,
    };
    assert!(call(port, &rogue, &authority.cert_pem).await.is_err());

    // No client certificate at all: a raw TLS client without one is refused too.
    let bare = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(authority.cert_pem.as_bytes())
                    .unwrap(),
            )
            .unwrap();
        roots
    })
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let bare_result = async {
        let mut tls = TlsConnector::from(Arc::new(bare))
            .connect(ServerName::try_from("console.local").unwrap(), tcp)
            .await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    }
    .await;
    assert!(
        matches!(bare_result.as_deref(), Err(_) | Ok("")),
        "{bare_result:?}"
    );

    let seen = server.await.unwrap();
    assert_eq!(seen[0], Ok("web-1".to_string()));
    assert!(seen[1].is_err() && seen[2].is_err(), "{seen:?}");
}

#[test]
fn the_ca_persists_with_a_private_key_and_ignores_what_a_csr_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::open(dir.path(), "console").unwrap();
    let again = Authority::open(dir.path(), "console").unwrap();
    assert_eq!(first.cert_pem, again.cert_pem);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The CSR asks for another name; the certificate carries the one the console chose.
    let request = AgentRequest::new("console.local").unwrap();
    let cert = first.sign_agent(&request.csr_pem, "web-3").unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(peer_name(&der).as_deref(), Some("web-3"));
    assert!(AgentRequest::new("../etc").is_err());
}

/// A server presenting `chain` (PEM, leaf first) for one connection.
async fn server_with(identity: Identity) -> u16 {
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        if let Ok(mut tls) = TlsAcceptor::from(Arc::new(config)).accept(tcp).await {
            let _ = tls.write_all(b"hi").await;
            let _ = tls.shutdown().await;
        }
    });
    port
}

#[tokio::test]
async fn the_pinned_console_client_takes_only_the_consoles_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::open(dir.path(), "console").unwrap();
    let pin = nonstop_pki::ca_fingerprint(&authority.cert_pem).unwrap();
    let with_ca = |identity: Identity| Identity {
        cert_pem: format!("{}{}", identity.cert_pem, authority.cert_pem),
        key_pem: identity.key_pem,
    };
    let connect = |port: u16| {
        let config = nonstop_pki::pinned_client_config(&pin).unwrap();
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            // The URL's host does not matter: the name checked is the console's.
            TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("web-1").unwrap(), tcp)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let console = authority
        .issue_server(&[nonstop_pki::CONSOLE_NAME.into(), "localhost".into()])
        .unwrap();
    connect(server_with(with_ca(console)).await).await.unwrap();
    // An enrolled agent's certificate (server auth, same CA) is not the console's.
    let request = AgentRequest::new("web-1").unwrap();
    let agent = Identity {
        cert_pem: authority.sign_agent(&request.csr_pem, "web-1").unwrap(),
        key_pem: request.key_pem,
    };
    let refused = connect(server_with(with_ca(agent)).await)
        .await
        .unwrap_err();
    assert!(refused.contains("not the console's"), "{refused}");
    // Nor is the console's own client identity (client auth only).
    let client = authority.console_identity(dir.path()).unwrap();
    assert!(connect(server_with(with_ca(client)).await).await.is_err());
    // And the CA will not sign the console's name, localhost or an address for an agent.
    for reserved in [nonstop_pki::CONSOLE_NAME, "localhost", "127.0.0.1"] {
        assert!(
            authority.sign_agent(&request.csr_pem, reserved).is_err(),
            "{reserved}"
        );
        assert!(AgentRequest::new(reserved).is_err(), "{reserved}");
    }
}
