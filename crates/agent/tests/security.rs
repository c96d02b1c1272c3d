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
hooks = {{ after_install = {{ run = ["/bin/echo", "installed {{node}} {{version}} after {{old_version}}"] }}, before_deploy = {{ run = ["/bin/true"] }} }}

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
        &[
            ("service", "shop"),
            ("node", "a1"),
            ("version", "v1"),
            ("hook", "after_install"),
        ],
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
        12,
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

/// A route's path with every parameter set to `value` (percent-encoded as a client would).
fn route_path_with(route: &str, value: &str) -> String {
    nonstop_agent_client::path(
        route,
        &[
            ("service", value),
            ("node", value),
            ("version", value),
            ("hook", value),
        ],
    )
}

#[tokio::test]
async fn every_route_checks_names_versions_and_body_size_before_acting() {
    let setup = Setup::start(1 << 20).await;
    let console = setup.console();
    let with_params: Vec<_> = routes::ALL
        .iter()
        .filter(|(_, route)| route.contains('{'))
        .collect();
    assert_eq!(
        with_params.len(),
        routes::ALL.len() - 1,
        "all but INSTANCES"
    );
    for (method, route) in with_params {
        for bad in ["../../escape", "..", "a b", ".hidden", "x\u{202e}"] {
            let path = route_path_with(route, bad);
            let status = status_of(&console, method, &path).await.unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
        }
    }

    // A traversing version in a body: refused before a release is looked up outside the state
    // dir, even where a release.json waits there.
    let artifact = setup.dir.path().join("app.bin");
    std::fs::write(&artifact, b"release v1\n").unwrap();
    console.upload("shop", "v1", &artifact).await.unwrap();
    let outside = setup.dir.path().join("outside-release");
    copy_dir(
        &setup.dir.path().join("agent/services/shop/releases/v1"),
        &outside,
    );
    let before = list(&outside);
    let start = route_path(routes::START);
    let err = console
        .post::<_, serde_json::Value>(
            &start,
            &serde_json::json!({ "version": "../../../../outside-release" }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(StatusCode::BAD_REQUEST), "{err}");
    assert!(err.message.contains("not a plain name"), "{err}");
    assert_eq!(
        list(&outside),
        before,
        "nothing created outside the state dir"
    );
    for (route, body) in [
        (
            routes::STATUS,
            serde_json::json!({"version": "../v1", "pid": 1, "start_ticks": 0}),
        ),
        (
            routes::STOP,
            serde_json::json!({"instance": {"version": "../v1", "pid": 1, "start_ticks": 0}, "grace_ms": 10}),
        ),
        (routes::REGISTER, serde_json::json!({"node": "../a1"})),
        (
            routes::HOOK,
            serde_json::json!({"version": "../v1", "deploy": 1, "strategy": "rolling"}),
        ),
        (
            routes::HOOK,
            serde_json::json!({"version": "v1", "old_version": "v0/..", "deploy": 1, "strategy": "rolling"}),
        ),
        (
            routes::START,
            serde_json::json!({"version": "v1", "env": {"A=B": "x"}}),
        ),
        (
            routes::STATE,
            serde_json::json!({"node": "a1/../..", "state": "active"}),
        ),
    ] {
        let err = console
            .post::<_, serde_json::Value>(&route_path(route), &body)
            .await
            .unwrap_err();
        assert_eq!(err.status, Some(StatusCode::BAD_REQUEST), "{route}: {err}");
    }

    // A JSON body larger than any real one is refused unread (uploads have their own limit).
    let mut huge = b"{\"version\": \"v1\"".to_vec();
    huge.resize(huge.len() + 2 * 1024 * 1024, b' ');
    huge.push(b'}');
    let response = console
        .send(
            Method::POST,
            &start,
            &[("content-type", "application/json".into())],
            full(huge),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn list(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Bytes this process has read through read(2) and friends so far.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn following_a_big_log_reads_only_what_is_appended() {
    use std::io::Write;
    let setup = Setup::start(1 << 20).await;
    let console = setup.console();
    let artifact = setup.dir.path().join("app.bin");
    std::fs::write(&artifact, b"release v1\n").unwrap();
    console.upload("shop", "v1", &artifact).await.unwrap();
    let instance: nonstop_ports::Instance = console
        .post(
            &route_path(routes::START),
            &serde_json::json!({ "version": "v1" }),
        )
        .await
        .unwrap();
    // 32 MiB of log lines.
    let line = format!("{}\n", "x".repeat(1023));
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&instance.log)
        .unwrap();
    for _ in 0..32 * 1024 {
        log.write_all(line.as_bytes()).unwrap();
    }
    log.write_all(b"last old line\n").unwrap();
    let response = console.logs("shop", "a1", 2, true).await.unwrap();
    let mut body = response.into_body();
    let mut seen = String::new();
    wait_for(&mut body, &mut seen, "last old line").await;
    let baseline = bytes_read();
    for i in 0..5 {
        writeln!(log, "marker {i}").unwrap();
        wait_for(&mut body, &mut seen, &format!("marker {i}")).await;
    }
    let read = bytes_read() - baseline;
    assert!(
        read < 4 * 1024 * 1024,
        "following 5 appended lines read {read} bytes (the log is 32 MiB)"
    );
    assert!(
        !seen.contains(&line[..1023].repeat(3)),
        "only the last 2 old lines were sent"
    );
}

/// Reads `body` into `seen` until `marker` is in it.
async fn wait_for(body: &mut hyper::body::Incoming, seen: &mut String, marker: &str) {
    use http_body_util::BodyExt;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(marker) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no `{marker}` within 20 s"))
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn the_state_directory_and_identity_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::start(1 << 20).await;
    let mode = |path: &str| {
        std::fs::metadata(setup.dir.path().join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("agent"), 0o700);
    assert_eq!(mode("agent/identity"), 0o700);
    assert_eq!(mode("agent/identity/agent.key"), 0o600);
}

/// A hook runs only as this agent's config writes it, and only at a per-node point.
#[tokio::test]
async fn the_hook_route_runs_only_the_configured_per_node_hook() {
    let setup = Setup::start(1 << 20).await;
    let console = setup.console();
    let hook = |point: &str| {
        nonstop_agent_client::path(
            routes::HOOK,
            &[("service", "shop"), ("node", "a1"), ("hook", point)],
        )
    };
    let body = serde_json::json!({"version": "v2", "old_version": "v1", "deploy": 7, "strategy": "rolling"});
    let output: nonstop_ports::HookOutput =
        console.post(&hook("after_install"), &body).await.unwrap();
    assert!(output.success, "{output:?}");
    assert_eq!(output.lines, ["installed a1 v2 after v1"]);
    // Configured, but service-wide: it runs where the deploy runs, never through an agent.
    let err = console
        .post::<_, serde_json::Value>(&hook("before_deploy"), &body)
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(StatusCode::BAD_REQUEST), "{err}");
    // Per-node, but not in this agent's config: nothing to run.
    let err = console
        .post::<_, serde_json::Value>(&hook("before_traffic"), &body)
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(StatusCode::NOT_FOUND), "{err}");
    assert!(err.message.contains("no `before_traffic` hook"), "{err}");
}
