//! The agent's API against every kind of caller, over real mutual TLS on 127.0.0.1: each route
//! of the protocol is refused without the console's identity, and bad input changes nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use nonstop_agent::{Agent, AgentOptions, Credentials};
use nonstop_agent_client::protocol::{self, routes};
use nonstop_agent_client::{AgentClient, empty, full};
use nonstop_pki::{AgentRequest, Authority, Identity, client_config};
use rustls::pki_types::pem::PemObject;

struct Setup {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    ca_pem: String,
    console: Identity,
    other_agent: Identity,
}

fn agent_identity(authority: &Authority, name: &str) -> Identity {
    let request = AgentRequest::new(name).unwrap();
    Identity {
        cert_pem: authority.sign_agent(&request.csr_pem, name).unwrap(),
        key_pem: request.key_pem,
    }
}

impl Setup {
    async fn start(max_artifact: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("console/pki");
        let authority = Authority::open(&pki, "test console").unwrap();
        let console = authority.console_identity(&pki).unwrap();
        let state = dir.path().join("agent");
        Credentials {
            name: "web1".into(),
            identity: agent_identity(&authority, "web1"),
            ca_pem: authority.cert_pem.clone(),
        }
        .save(&state)
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("nonstop.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[hosts.web1]
agent = "127.0.0.1:1"

[services.shop]
strategy = "rolling"
balancer = {{ kind = "command", enable = ["true"], drain = ["true"], disable = ["true"], status = ["true"] }}
runtime = {{ kind = "process", start = ["sleep", "60"] }}
releases = {{ dir = "{}" }}

[[services.shop.nodes]]
name = "a1"
host = "web1"
port = {port}
"#,
                dir.path().join("console-releases").display()
            ),
        )
        .unwrap();
        let agent = Agent::bind(&AgentOptions {
            config,
            state,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            max_artifact,
        })
        .await
        .unwrap();
        let addr = agent.addr;
        tokio::spawn(agent.serve());
        Setup {
            addr,
            ca_pem: authority.cert_pem.clone(),
            console,
            other_agent: agent_identity(&authority, "web2"),
            dir,
        }
    }

    fn client(&self, identity: &Identity, ca_pem: &str) -> AgentClient {
        AgentClient::new(
            "web1",
            self.addr,
            Arc::new(client_config(identity, ca_pem).unwrap()),
        )
    }

    fn console(&self) -> AgentClient {
        self.client(&self.console, &self.ca_pem)
    }

    fn releases(&self) -> Vec<String> {
        let dir = self.dir.path().join("agent/services/shop/releases");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn route_path(route: &str) -> String {
    nonstop_agent_client::path(
        route,
        &[("service", "shop"), ("node", "a1"), ("version", "v1")],
    )
}

async fn status_of(client: &AgentClient, method: &str, path: &str) -> Result<StatusCode, String> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    client
        .send(method, path, &[], empty(), Duration::from_secs(10))
        .await
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_route_refuses_callers_without_the_console_identity() {
    let setup = Setup::start(1 << 20).await;
    let foreign = Authority::create("someone else").unwrap();
    let foreign_dir = setup.dir.path().join("foreign");
    let foreign_console = foreign.console_identity(&foreign_dir).unwrap();
    let no_cert = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(setup.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        AgentClient::new("web1", setup.addr, Arc::new(config))
    };
    let other_agent = setup.client(&setup.other_agent, &setup.ca_pem);
    let foreign_cert = setup.client(&foreign_console, &setup.ca_pem);
    let console = setup.console();
    assert_eq!(
        routes::ALL.len(),
        11,
        "a new route must be added to this test's reasoning"
    );
    for (method, route) in routes::ALL {
        let path = route_path(route);
        let refused = status_of(&no_cert, method, &path).await;
        assert!(
            refused.is_err(),
            "{method} {path} without a certificate: {refused:?}"
        );
        let refused = status_of(&foreign_cert, method, &path).await;
        assert!(
            refused.is_err(),
            "{method} {path} with a foreign CA's certificate: {refused:?}"
        );
        let forbidden = status_of(&other_agent, method, &path).await.unwrap();
        assert_eq!(
            forbidden,
            StatusCode::FORBIDDEN,
            "{method} {path} from another agent"
        );
        let served = status_of(&console, method, &path).await.unwrap();
        assert!(
            served != StatusCode::FORBIDDEN && served != StatusCode::UNAUTHORIZED,
            "{method} {path} from the console: {served}"
        );
    }
}

async fn upload_raw(
    client: &AgentClient,
    version: &str,
    name: &str,
    sha: &str,
    bytes: Vec<u8>,
) -> (StatusCode, String) {
    let path = format!("/v1/services/shop/releases/{version}");
    let response = client
        .send(
            Method::PUT,
            &path,
            &[
                (protocol::SHA256_HEADER, sha.to_string()),
                (protocol::ARTIFACT_NAME_HEADER, name.to_string()),
            ],
            full(bytes),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn bad_uploads_and_requests_get_clear_errors_and_change_nothing() {
    let setup = Setup::start(1024).await;
    let console = setup.console();
    let small = b"release v1\n".to_vec();

    let (status, body) = upload_raw(
        &console,
        "..%2F..%2Fescape",
        "app.bin",
        &sha256(&small),
        small.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("version"), "{body}");
    assert!(!setup.dir.path().join("agent/services/escape").exists());

    let (status, body) = upload_raw(
        &console,
        "v1",
        "../evil.bin",
        &sha256(&small),
        small.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("plain file name"), "{body}");

    let big = vec![b'x'; 4096];
    let (status, body) = upload_raw(&console, "v1", "app.bin", &sha256(&big), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("1024 bytes"), "{body}");

    let (status, body) =
        upload_raw(&console, "v1", "app.bin", &sha256(b"other"), small.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("checksum mismatch"), "{body}");
    assert!(
        setup.releases().is_empty(),
        "nothing installed: {:?}",
        setup.releases()
    );
    let incoming = setup.dir.path().join("agent/services/shop/incoming");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&incoming)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "scratch files removed: {leftovers:?}");

    let start = route_path(routes::START);
    let response = console
        .send(
            Method::POST,
            &start,
            &[("content-type", "application/json".into())],
            full(b"{\"version\": ".to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        response.status().is_client_error(),
        "malformed JSON: {}",
        response.status()
    );

    let missing: Result<serde_json::Value, _> = console
        .post(
            "/v1/services/shop/nodes/zz/start",
            &serde_json::json!({ "version": "v1" }),
        )
        .await;
    let err = missing.unwrap_err();
    assert_eq!(err.status, Some(StatusCode::NOT_FOUND), "{err}");
    assert!(err.message.contains("not placed on host"), "{err}");

    let not_uploaded: Result<serde_json::Value, _> = console
        .post(&start, &serde_json::json!({ "version": "v1" }))
        .await;
    let err = not_uploaded.unwrap_err();
    assert_eq!(err.status, Some(StatusCode::CONFLICT), "{err}");

    // The happy path, and a stop that names another instance is refused.
    let artifact = setup.dir.path().join("app.bin");
    std::fs::write(&artifact, &small).unwrap();
    console.upload("shop", "v1", &artifact).await.unwrap();
    assert_eq!(setup.releases(), ["v1"]);
    let instance: nonstop_ports::Instance = console
        .post(&start, &serde_json::json!({ "version": "v1" }))
        .await
        .unwrap();
    let status_path = route_path(routes::STATUS);
    let reference = |pid: i32| protocol::InstanceRef {
        version: instance.version.clone(),
        pid,
        start_ticks: instance.start_ticks,
    };
    let running: protocol::Status = console
        .post(&status_path, &reference(instance.pid))
        .await
        .unwrap();
    assert!(running.running);
    let stop = route_path(routes::STOP);
    let wrong = protocol::StopRequest {
        instance: reference(1),
        grace_ms: 1000,
    };
    let err = console
        .post::<_, serde_json::Value>(&stop, &wrong)
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(StatusCode::CONFLICT), "{err}");
    let still: protocol::Status = console
        .post(&status_path, &reference(instance.pid))
        .await
        .unwrap();
    assert!(still.running, "a refused stop stops nothing");
    let right = protocol::StopRequest {
        instance: reference(instance.pid),
        grace_ms: 1000,
    };
    let _: serde_json::Value = console.post(&stop, &right).await.unwrap();
    let after: protocol::Status = console
        .post(&status_path, &reference(instance.pid))
        .await
        .unwrap();
    assert!(!after.running);
}
