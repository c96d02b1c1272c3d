//! The console's side of `nonstop agent`: a mutual-TLS client per host (`Fleet`, `AgentClient`)
//! and the `Runtime`/`Balancer` ports of a remote host (`RemoteRuntime`, `RemoteBalancer`).

mod console;
pub mod protocol;
mod remote;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nonstop_config::HostConfig;
use nonstop_ports::PortError;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use console::{ConsoleClient, multipart_with_file};
pub use remote::{RemoteBalancer, RemoteRuntime};

/// A request body: small JSON, or an artifact streamed from disk.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How long a call may take before the agent counts as unreachable; uploads get longer.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The console's identity towards every agent of its fleet.
#[derive(Clone)]
pub struct Fleet {
    tls: Arc<rustls::ClientConfig>,
}

impl Fleet {
    /// Opens the fleet credentials in a console's state dir (the CA and the console identity,
    /// created on first use).
    pub fn open(state_dir: &Path) -> Result<Fleet, String> {
        let pki = state_dir.join("pki");
        let authority = nonstop_pki::Authority::open(&pki, "nonstop console")
            .map_err(|e| format!("fleet credentials in {}: {e}", pki.display()))?;
        let identity = authority
            .console_identity(&pki)
            .map_err(|e| format!("fleet credentials in {}: {e}", pki.display()))?;
        let tls = nonstop_pki::client_config(&identity, &authority.cert_pem)
            .map_err(|e| e.to_string())?;
        Ok(Fleet { tls: Arc::new(tls) })
    }

    pub fn from_config(tls: rustls::ClientConfig) -> Fleet {
        Fleet { tls: Arc::new(tls) }
    }

    /// A client for host `name`'s agent.
    pub fn agent(&self, name: &str, host: &HostConfig) -> AgentClient {
        AgentClient::new(name, host.agent_addr(), self.tls.clone())
    }
}

/// Calls one agent; keeps a few idle connections so frequent status calls stay cheap.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<Vec<SendRequest<Body>>>,
}

/// A failed call: the agent's own words, or why it could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("agent {agent} ({addr}): {message}")]
pub struct AgentError {
    pub agent: String,
    pub addr: SocketAddr,
    pub status: Option<StatusCode>,
    pub message: String,
}

impl From<AgentError> for PortError {
    fn from(e: AgentError) -> PortError {
        PortError::new(e.to_string())
    }
}

impl AgentClient {
    pub fn new(name: &str, addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> AgentClient {
        AgentClient {
            inner: Arc::new(Inner {
                name: name.to_string(),
                addr,
                tls: tokio_rustls::TlsConnector::from(tls),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn error(&self, status: Option<StatusCode>, message: impl Into<String>) -> AgentError {
        AgentError {
            agent: self.inner.name.clone(),
            addr: self.inner.addr,
            status,
            message: message.into(),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, AgentError> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(self.inner.addr),
        )
        .await
        .map_err(|_| self.error(None, "no connection within 5s"))?
        .map_err(|e| self.error(None, format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        // The agent's certificate carries its host name, so that is what is verified.
        let server_name = ServerName::try_from(self.inner.name.clone())
            .map_err(|e| self.error(None, format!("host name: {e}")))?;
        let tls = self
            .inner
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| self.error(None, format!("TLS: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.error(None, format!("HTTP: {e}")))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn sender(&self) -> Result<SendRequest<Body>, AgentError> {
        loop {
            let idle = self.inner.idle.lock().expect("not poisoned").pop();
            match idle {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    /// Sends one request; the answer's body is left to the caller.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
        timeout: Duration,
    ) -> Result<Response<Incoming>, AgentError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.inner.name.as_str());
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(body)
            .map_err(|e| self.error(None, format!("request: {e}")))?;
        let mut sender = self.sender().await?;
        let response = tokio::time::timeout(timeout, sender.send_request(request))
            .await
            .map_err(|_| self.error(None, format!("no answer within {timeout:?}")))?
            .map_err(|e| self.error(None, format!("connection lost: {e}")))?;
        self.inner.idle.lock().expect("not poisoned").push(sender);
        Ok(response)
    }

    /// Sends a request and reads a JSON answer; a non-2xx answer becomes its error text.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let response = self.send(method, path, headers, body, timeout).await?;
        let status = response.status();
        let bytes = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| self.error(Some(status), "answer cut short (timeout)"))?
            .map_err(|e| self.error(Some(status), format!("answer cut short: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<protocol::ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(self.error(Some(status), format!("{status}: {message}")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| self.error(Some(status), format!("unreadable answer: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AgentError> {
        self.call(Method::GET, path, &[], empty(), CALL_TIMEOUT)
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, AgentError> {
        self.post_within(path, body, CALL_TIMEOUT).await
    }

    /// [`AgentClient::post`] for a call that may take longer (a hook runs to its own timeout).
    pub async fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let json = serde_json::to_vec(body).expect("plain data");
        self.call(
            Method::POST,
            path,
            &[("content-type", "application/json".into())],
            full(json),
            timeout,
        )
        .await
    }

    /// What runs on the host, as the agent knows it.
    pub async fn instances(&self) -> Result<Vec<protocol::HostInstance>, AgentError> {
        self.get(protocol::routes::INSTANCES).await
    }

    /// Streams `artifact` to the agent as release `version` of `service`.
    pub async fn upload(
        &self,
        service: &str,
        version: &str,
        artifact: &Path,
    ) -> Result<protocol::Uploaded, AgentError> {
        let name = artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let checksum = file_sha256(artifact)
            .await
            .map_err(|e| self.error(None, format!("artifact {}: {e}", artifact.display())))?;
        let file = tokio::fs::File::open(artifact)
            .await
            .map_err(|e| self.error(None, format!("artifact {}: {e}", artifact.display())))?;
        let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let stream = tokio_util::io::ReaderStream::new(file);
        let body = http_body_util::StreamBody::new(futures_util::StreamExt::map(stream, |chunk| {
            chunk.map(hyper::body::Frame::data)
        }));
        let path = path(
            protocol::routes::RELEASE,
            &[("service", service), ("version", version)],
        );
        self.call(
            Method::PUT,
            &path,
            &[
                (protocol::SHA256_HEADER, checksum),
                (protocol::ARTIFACT_NAME_HEADER, name),
                ("content-length", length.to_string()),
            ],
            BodyExt::boxed(body),
            Duration::from_secs(600),
        )
        .await
    }

    /// The log of `node`: the last `lines` lines, then (with `follow`) whatever is appended.
    pub async fn logs(
        &self,
        service: &str,
        node: &str,
        lines: usize,
        follow: bool,
    ) -> Result<Response<Incoming>, AgentError> {
        let path = format!(
            "{}?lines={lines}&follow={follow}",
            path(
                protocol::routes::LOGS,
                &[("service", service), ("node", node)]
            )
        );
        let response = self
            .send(Method::GET, &path, &[], empty(), CALL_TIMEOUT)
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(self.error(
                Some(status),
                format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            ));
        }
        Ok(response)
    }
}

/// Fills `{name}` parameters of a route; values are percent-encoded as path segments.
pub fn path(route: &str, params: &[(&str, &str)]) -> String {
    let mut out = route.to_string();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), &encode_segment(value));
    }
    out
}

fn encode_segment(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

async fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    if file.metadata().await?.is_dir() {
        return Err(std::io::Error::other(
            "is a directory; a remote host takes one file (pack it as a tarball)",
        ));
    }
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
