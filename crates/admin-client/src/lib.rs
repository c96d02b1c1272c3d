//! Client for the admin API of `nonstop proxy` (docs/admin-api.md), used by `nonstop lb`
//! and by the deploy engine's built-in balancer driver. One kept connection per client (and its
//! clones): a deploy's switch makes several calls back to back, each a round trip fewer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a proxy's admin API listens, as written in config (`unix:/path` or `tcp:host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(path.into()));
        }
        let addr = s
            .strip_prefix("tcp:")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        if addr
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_string()))
        } else {
            Err(format!(
                "admin endpoint `{s}` is neither unix:/path nor tcp:host:port"
            ))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl AdminError {
    /// The proxy does not know the call (an older version): 404 or 405 without a JSON error.
    pub fn is_not_supported(&self) -> bool {
        matches!(self, AdminError::Refused { status: 404 | 405, hint: None, message } if message.starts_with("HTTP "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the proxy's admin API at {endpoint}: {cause} (is `nonstop proxy` running with this admin address?)"
    )]
    Unreachable {
        endpoint: Endpoint,
        cause: std::io::Error,
    },
    #[error("admin API at {endpoint}: {message}")]
    Protocol { endpoint: Endpoint, message: String },
    /// The proxy refused the call; `message` and `hint` come from its JSON error.
    #[error("{message}{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Refused {
        status: u16,
        message: String,
        hint: Option<String>,
    },
}

/// The state an operator or the engine sets on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    Active,
    Draining,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    pub route: String,
    pub state: BackendState,
    /// `up` or `down`, as the proxy's active checks (or a [`AdminClient::mark_up`]) set it.
    pub health: String,
    /// The checker's current streak; `None` when the pool has no active checks (or an older proxy).
    #[serde(default)]
    pub checks: Option<Checks>,
    pub ejected: bool,
    /// Takes new requests now (active, up, not ejected); `None` from an older proxy.
    #[serde(default)]
    pub eligible: Option<bool>,
    pub in_flight: i64,
    pub requests: u64,
    pub failures: u64,
    #[serde(default)]
    pub responses: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub latency_ms_sum: f64,
}

/// Consecutive passes and failures of the proxy's active health checks so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checks {
    pub passes: u32,
    pub failures: u32,
}

/// What `POST /v1/reload` changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config: PathBuf,
    /// One line per change (pool added, removed, settings changed, backends kept); empty from an
    /// older proxy.
    #[serde(default)]
    pub summary: Vec<String>,
    /// Per pool: `{"pool", "change", "settings", "backends", "file_backends_ignored"}`.
    #[serde(default)]
    pub pools: Vec<Value>,
    /// `[proxy]` settings that changed but need a restart.
    #[serde(default)]
    pub needs_restart: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub balance: String,
    pub sticky: Option<Value>,
    pub backends: Vec<Backend>,
    /// The targeted preview in force; absent from an older proxy.
    #[serde(default)]
    pub preview: Option<nonstop_ports::Preview>,
    /// Maintenance mode, when on; absent from an older proxy.
    #[serde(default)]
    pub maintenance: Option<nonstop_ports::Maintenance>,
}

impl Pool {
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// What to put in a pool, for add and replace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub name: String,
    pub addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<BackendState>,
}

/// One backend's new state and weight, for [`AdminClient::set_backends`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendChange {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<BackendState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A connection that can take the next call, and the runtime whose task drives it.
type Kept = (tokio::runtime::Id, SendRequest<Full<Bytes>>);

#[derive(Debug, Clone)]
pub struct AdminClient {
    endpoint: Endpoint,
    token: Option<String>,
    /// The connection of the last call, while the proxy keeps it open, with the runtime that
    /// drives it (a call from another runtime opens its own).
    kept: Arc<Mutex<Option<Kept>>>,
}

impl AdminClient {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        AdminClient {
            endpoint,
            token,
            kept: Arc::default(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub async fn pools(&self) -> Result<Vec<Pool>, AdminError> {
        #[derive(Deserialize)]
        struct Pools {
            pools: Vec<Pool>,
        }
        let pools: Pools = self.call(Method::GET, "/v1/pools", None).await?;
        Ok(pools.pools)
    }

    pub async fn pool(&self, pool: &str) -> Result<Pool, AdminError> {
        self.call(Method::GET, &format!("/v1/pools/{pool}"), None)
            .await
    }

    pub async fn set_state(
        &self,
        pool: &str,
        backend: &str,
        state: BackendState,
    ) -> Result<Backend, AdminError> {
        let body = serde_json::json!({ "state": state });
        self.call(
            Method::PATCH,
            &format!("/v1/pools/{pool}/backends/{backend}"),
            Some(body),
        )
        .await
    }

    pub async fn set_weight(
        &self,
        pool: &str,
        backend: &str,
        weight: u32,
    ) -> Result<Backend, AdminError> {
        let body = serde_json::json!({ "weight": weight });
        self.call(
            Method::PATCH,
            &format!("/v1/pools/{pool}/backends/{backend}"),
            Some(body),
        )
        .await
    }

    /// Marks a backend up in the proxy's health view after a health gate of the caller's own
    /// passed, so it is eligible now rather than after the proxy's `rise` checks.
    pub async fn mark_up(&self, pool: &str, backend: &str) -> Result<Backend, AdminError> {
        let body = serde_json::json!({ "health": "up" });
        self.call(
            Method::PATCH,
            &format!("/v1/pools/{pool}/backends/{backend}"),
            Some(body),
        )
        .await
    }

    pub async fn add(&self, pool: &str, spec: &BackendSpec) -> Result<Pool, AdminError> {
        let body = serde_json::to_value(spec).expect("a spec is plain data");
        self.call(
            Method::POST,
            &format!("/v1/pools/{pool}/backends"),
            Some(body),
        )
        .await
    }

    pub async fn remove(&self, pool: &str, backend: &str) -> Result<Pool, AdminError> {
        self.call(
            Method::DELETE,
            &format!("/v1/pools/{pool}/backends/{backend}"),
            None,
        )
        .await
    }

    /// Sets the state and weight of the named backends in one call, leaving the others as they
    /// are. A proxy older than this call answers 405 ([`AdminError::is_not_supported`]).
    pub async fn set_backends(
        &self,
        pool: &str,
        changes: &[BackendChange],
    ) -> Result<Pool, AdminError> {
        let body = serde_json::json!({ "changes": changes });
        self.call(
            Method::PATCH,
            &format!("/v1/pools/{pool}/backends"),
            Some(body),
        )
        .await
    }

    /// Replaces the pool's backend set in one atomic step.
    pub async fn replace(&self, pool: &str, backends: &[BackendSpec]) -> Result<Pool, AdminError> {
        let body = serde_json::json!({ "backends": backends });
        self.call(
            Method::PUT,
            &format!("/v1/pools/{pool}/backends"),
            Some(body),
        )
        .await
    }

    /// Sets the pool's targeted preview (`None` clears it).
    pub async fn set_preview(
        &self,
        pool: &str,
        preview: Option<&nonstop_ports::Preview>,
    ) -> Result<Pool, AdminError> {
        let path = format!("/v1/pools/{pool}/preview");
        match preview {
            Some(p) => {
                let body = serde_json::to_value(p).expect("plain data");
                self.call(Method::PUT, &path, Some(body)).await
            }
            None => self.call(Method::DELETE, &path, None).await,
        }
    }

    /// Turns the pool's maintenance mode on (`Some`) or off.
    pub async fn set_maintenance(
        &self,
        pool: &str,
        maintenance: Option<&nonstop_ports::Maintenance>,
    ) -> Result<Pool, AdminError> {
        let path = format!("/v1/pools/{pool}/maintenance");
        match maintenance {
            Some(m) => {
                let body = serde_json::to_value(m).expect("plain data");
                self.call(Method::PUT, &path, Some(body)).await
            }
            None => self.call(Method::DELETE, &path, None).await,
        }
    }

    pub async fn reload(&self) -> Result<ReloadReport, AdminError> {
        self.call(Method::POST, "/v1/reload", None).await
    }

    pub async fn metrics(&self) -> Result<String, AdminError> {
        let (_, body) = self.send(Method::GET, "/metrics", None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, AdminError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(AdminError::Refused {
                status: status.as_u16(),
                message: error["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status}")),
                hint: error["hint"].as_str().map(str::to_owned),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "nonstop-admin")
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(payload))
            .map_err(|e| self.protocol(e.to_string()))?;
        let (response, sender) = self.exchange(request).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        // Read to its end, the connection can take the next call.
        let runtime = tokio::runtime::Handle::current().id();
        *self.kept.lock().expect("not poisoned") = Some((runtime, sender));
        Ok((status, bytes))
    }

    /// Sends on the kept connection, or on a new one when there is none, it has closed, or it
    /// closed before taking the request; a request it took is never sent twice.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<
        (
            hyper::Response<hyper::body::Incoming>,
            SendRequest<Full<Bytes>>,
        ),
        AdminError,
    > {
        let kept = self.kept.lock().expect("not poisoned").take();
        let mut request = request;
        if let Some((runtime, mut sender)) = kept
            && runtime == tokio::runtime::Handle::current().id()
            && !sender.is_closed()
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(self.protocol(e.into_error().to_string())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        Ok((response, sender))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, AdminError> {
        let unreachable = |cause| AdminError::Unreachable {
            endpoint: self.endpoint.clone(),
            cause,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                self.handshake(TokioIo::new(stream)).await
            }
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?;
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<SendRequest<Full<Bytes>>, AdminError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn protocol(&self, message: String) -> AdminError {
        AdminError::Protocol {
            endpoint: self.endpoint.clone(),
            message,
        }
    }
}
