//! Test harness for the console: an in-process console on an ephemeral port with its state in a
//! temp dir, a small HTTPS client that trusts only the console's CA, and account helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nonstop_console::{Console, ConsoleOptions};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

pub const DEADLINE: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "correct horse battery staple";

/// Polls `condition` until it holds or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while !condition().await {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// target/debug (or release), from this test binary's own path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The `nonstop` and `nonstop-hello` binaries, built once per test binary: `cargo test -p
/// nonstop-console` does not rebuild them, and a stale one would test yesterday's console.
pub fn binaries() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = target_dir();
            let (nonstop, hello) = (dir.join("nonstop"), dir.join("nonstop-hello"));
            {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.args(["build", "-p", "nonstop", "-p", "nonstop-hello"]);
                if dir.ends_with("release") {
                    build.arg("--release");
                }
                assert!(build.status().unwrap().success(), "cargo build failed");
            }
            (nonstop, hello)
        })
        .clone()
}

/// The one free-port rule: testkit's (below the ephemeral range, never handed out twice).
pub use nonstop_testkit::free_port;

/// A config with one blue-green service `shop` of the sample app behind `nonstop proxy`.
/// The address the proxy of [`write_config`]'s file listens on.
pub fn proxy_url(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a listen line");
    format!("http://{listen}/")
}

pub fn write_config(dir: &Path, hello: &Path) -> PathBuf {
    let (listen, blue, green) = (free_port(), free_port(), free_port());
    let socket = dir.join("admin.sock");
    let text = format!(
        r#"[proxy]
listen = "127.0.0.1:{listen}"
admin = "unix:{socket}"

[pools.shop]

[services.shop]
strategy = "blue-green"
balancer = {{ kind = "builtin", pool = "shop" }}
runtime = {{ kind = "process", start = ["{hello}", "--port", "{{port}}", "--version", "{{version}}", "--node", "{{node}}"] }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/health", expect_body = "UP", interval = "100ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "2s" }}
keep_warm = "0s"
verify = "300ms"
canary = {{ steps = [{{ weight = 30, for = "2s" }}, {{ pause = true }}, {{ weight = 60, for = "2s" }}] }}

[[services.shop.nodes]]
name = "blue"
port = {blue}

[[services.shop.nodes]]
name = "green"
port = {green}
"#,
        socket = socket.display(),
        hello = hello.display(),
        releases = dir.join("releases").display(),
    );
    let path = dir.join("nonstop.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A console serving from a temp dir until dropped.
pub struct TestConsole {
    pub addr: SocketAddr,
    pub secret: Option<String>,
    pub state: PathBuf,
    pub dir: tempfile::TempDir,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestConsole {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct Setup {
    pub upload_limit: usize,
    pub artifacts: bool,
    pub listen: SocketAddr,
    /// The config file's text (`{dir}` is the console's temp dir); default [`write_config`]'s.
    pub config: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (tests play several client addresses so).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub limits: Option<nonstop_console::Limits>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            upload_limit: 64 * 1024 * 1024,
            artifacts: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            config: None,
            trusted_proxies: vec![],
            limits: None,
        }
    }
}

impl TestConsole {
    pub async fn start(setup: Setup) -> TestConsole {
        let dir = tempfile::tempdir().unwrap();
        let (_, hello) = binaries();
        let config = match &setup.config {
            Some(text) => {
                let path = dir.path().join("nonstop.toml");
                let text = text.replace("{dir}", &dir.path().display().to_string());
                std::fs::write(&path, text).unwrap();
                path
            }
            None => write_config(dir.path(), &hello),
        };
        let artifacts = dir.path().join("drop");
        std::fs::create_dir_all(&artifacts).unwrap();
        let state = dir.path().join("state");
        let console = Console::bind(ConsoleOptions {
            config,
            listen: setup.listen,
            state: state.clone(),
            artifacts: setup.artifacts.then_some(artifacts),
            trusted_proxies: setup.trusted_proxies.clone(),
            upload_limit: setup.upload_limit,
        })
        .await
        .unwrap();
        let console = match setup.limits {
            Some(limits) => console.with_limits(limits),
            None => console,
        };
        let addr = console.local_addr();
        let secret = console.bootstrap_secret().map(str::to_string);
        let client = Client::new(addr, console.ca_pem());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(console.serve(async {
            let _ = stopped.await;
        }));
        TestConsole {
            addr,
            secret,
            state,
            dir,
            client,
            stop: Some(stop),
        }
    }

    /// Follows the shop's job `job` to its `finished` event; returns that event.
    pub async fn job_end(&self, headers: &[(&str, String)], job: u64) -> Value {
        let events = self
            .client
            .sse(
                &format!("/api/services/shop/jobs/{job}/events"),
                headers,
                |_, data| data.contains("\"kind\":\"finished\""),
            )
            .await;
        serde_json::from_str(&events.last().expect("events").1).unwrap()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("nonstop.toml")
    }

    pub fn drop_dir(&self) -> PathBuf {
        self.dir.path().join("drop")
    }

    /// Finishes the first-run setup; returns the admin's session.
    pub async fn admin(&self) -> Login {
        let secret = self.secret.clone().expect("a first run");
        let r = self
            .client
            .post_json("/api/setup", &json!({ "secret": secret }), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let login = Login::from_response(&r);
        let r = self
            .client
            .post_json(
                "/api/account/password",
                &json!({ "password": PASSWORD }),
                &login.headers(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        enrol_totp(&self.client, &login).await
    }

    /// Creates `name` with `role` (and a grant on shop) as `admin`, then logs in and enrols.
    pub async fn user(&self, admin: &Login, name: &str, role: &str) -> Login {
        let r = self
            .client
            .post_json(
                "/api/users",
                &json!({ "name": name, "password": PASSWORD, "role": role }),
                &admin.headers(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        if role != "admin" {
            let r = self
                .client
                .post_json(
                    &format!("/api/users/{name}/grants"),
                    &json!({ "service": "shop", "role": role }),
                    &admin.headers(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let r = self
            .client
            .post_json(
                "/api/login",
                &json!({ "user": name, "password": PASSWORD }),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["setup_pending"], true);
        let login = Login::from_response(&r);
        enrol_totp(&self.client, &login).await
    }

    /// A CI token of `owner` for shop.
    pub async fn token(&self, admin: &Login, owner: &str, name: &str) -> String {
        let r = self
            .client
            .post_json(
                &format!("/api/users/{owner}/tokens"),
                &json!({ "name": name, "services": ["shop"] }),
                &admin.headers(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_string()
    }
}

/// Enrols TOTP for the session's account; returns the new session that replaces the setup's.
pub async fn enrol_totp(client: &Client, login: &Login) -> Login {
    let r = client
        .post_json("/api/account/totp/begin", &json!({}), &login.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    let r = client
        .post_json(
            "/api/account/totp/confirm",
            &json!({ "code": totp_code(&secret, 0) }),
            &login.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut rotated = Login::from_response(&r);
    assert_ne!(
        rotated.cookie, login.cookie,
        "the session id is rotated at the end of setup"
    );
    rotated.totp = secret;
    rotated
}

/// The TOTP code for now + `steps_ahead` × 30 s (a login right after enrolment needs the next one).
pub fn totp_code(secret: &str, steps_ahead: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new().with_secret(secret).build().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    totp.generate(now + steps_ahead * 30).to_string()
}

/// A logged-in session: its cookie and CSRF token.
#[derive(Clone, Debug)]
pub struct Login {
    pub cookie: String,
    pub csrf: String,
    pub totp: String,
}

impl Login {
    pub fn from_response(r: &Resp) -> Login {
        let set_cookie = r.header("set-cookie").expect("a session cookie");
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        Login {
            cookie,
            csrf: r.json()["csrf"].as_str().unwrap().to_string(),
            totp: String::new(),
        }
    }

    /// Cookie and CSRF header.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cookie", self.cookie.clone()),
            ("x-csrf-token", self.csrf.clone()),
        ]
    }

    /// Cookie only.
    pub fn cookie_only(&self) -> Vec<(&'static str, String)> {
        vec![("cookie", self.cookie.clone())]
    }
}

/// Headers that make a request come from `ip` (through a trusted proxy, see `Setup`).
pub fn from_ip(ip: &str, mut headers: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    headers.push(("x-forwarded-for", ip.to_string()));
    headers
}

/// Waits until `body` ends; `Err` with what it sent if it is still open after `within`.
pub async fn ends_within(
    body: &mut hyper::body::Incoming,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let until = started + within;
    let mut got = String::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Err(_) => return Err(format!("still open after {within:?}; sent: {got:?}")),
            Ok(None) | Ok(Some(Err(_))) => return Ok(started.elapsed()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    got.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    }
}

pub fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// HTTPS to the console, trusting only its CA; one connection per request.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Client {
            addr,
            tls: Arc::new(tls),
        }
    }

    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> http::Response<hyper::body::Incoming> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("localhost:{}", self.addr.port()));
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        let response = self
            .send(builder.body(Full::new(Bytes::from(body))).unwrap())
            .await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
            .await
            .expect("the body within the deadline")
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, String)]) -> Resp {
        self.request("GET", path, headers, None, Vec::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value, headers: &[(&str, String)]) -> Resp {
        self.request(
            "POST",
            path,
            headers,
            Some("application/json"),
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// A multipart deploy form with `artifact` (named `file_name`) and text fields.
    pub async fn post_multipart(
        &self,
        path: &str,
        file_name: &str,
        file: &[u8],
        fields: &[(&str, &str)],
        headers: &[(&str, String)],
    ) -> Resp {
        let boundary = "nonstop-test-boundary-7d1f";
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.request(
            "POST",
            path,
            headers,
            Some(&format!("multipart/form-data; boundary={boundary}")),
            body,
        )
        .await
    }

    /// Opens a stream (SSE) at `path`; the answer's body is read by the caller.
    pub async fn open_stream(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> http::Response<hyper::body::Incoming> {
        let mut builder = http::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "localhost")
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        self.send(builder.body(Full::new(Bytes::new())).unwrap())
            .await
    }

    /// Reads server-sent events from `path` until `done` says so or the deadline passes;
    /// returns (event name, data) pairs.
    pub async fn sse(
        &self,
        path: &str,
        headers: &[(&str, String)],
        mut done: impl FnMut(&str, &str) -> bool,
    ) -> Vec<(String, String)> {
        let mut builder = http::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "localhost")
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let response = self
            .send(builder.body(Full::new(Bytes::new())).unwrap())
            .await;
        assert_eq!(response.status(), 200, "SSE {path}");
        let mut body = response.into_body();
        let mut buffer = String::new();
        let mut events = Vec::new();
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, body.frame())
                .await
                .unwrap_or_else(|_| panic!("SSE {path}: deadline passed; got {events:?}"));
            let Some(Ok(frame)) = frame else {
                return events;
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::from("message"), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = data.join("\n");
                let stop = done(&name, &data);
                events.push((name, data));
                if stop {
                    return events;
                }
            }
        }
    }
}

/// `nonstop proxy` for the test's config, killed when dropped.
pub struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the app instances the deploys started (they outlive the console by design).
pub struct Instances(pub PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        let config = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let Ok(engine) = nonstop_drivers::open_engine(&config, "shop", Box::new(|_| {})) else {
                return;
            };
            rt.block_on(async {
                use nonstop_ports::Runtime;
                for record in engine.store.instances().unwrap_or_default() {
                    let _ = engine
                        .runtime
                        .stop(&record.instance, Duration::from_secs(5))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn start_proxy(config: &Path) -> Proxy {
    let (nonstop, _) = binaries();
    let log = std::fs::File::create(config.with_file_name("proxy.log")).unwrap();
    let child = Command::new(nonstop)
        .args(["proxy", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let socket = config.with_file_name("admin.sock");
    wait_until("the proxy's admin socket", DEADLINE, || {
        let socket = socket.clone();
        async move { tokio::net::UnixStream::connect(&socket).await.is_ok() }
    })
    .await;
    Proxy(child)
}
