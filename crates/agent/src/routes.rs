//! The agent's API: typed operations on the services this host is configured for. Each handler
//! checks that the service and node are placed here before anything touches disk or a process.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use nonstop_agent_client::protocol::{self, HostInstance, routes};
use nonstop_ports::{
    Balancer, Instance, InstanceSpec, LbState, Member, NodeName, Replacement, Runtime,
};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::host::{Host, LocalService};

pub struct AgentState {
    pub host: Host,
    /// Largest artifact accepted, in bytes.
    pub max_artifact: u64,
}

pub(crate) type Shared = Arc<AgentState>;

/// An error answer: status and one sentence, as JSON.
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(protocol::ErrorBody { error: self.1 })).into_response()
    }
}

pub(crate) type Result<T> = std::result::Result<T, ApiError>;

fn port_error(e: nonstop_ports::PortError) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, e.message)
}

/// The largest JSON body of any route but the upload (a real one is well under 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest service, node or artifact name, as the console's rule has it.
const MAX_NAME: usize = 128;
/// The longest version, as the engine's release directories have it.
const MAX_VERSION: usize = 64;

pub fn router(state: Shared) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route(routes::INSTANCES, get(instances))
        // Uploads stream with their own limit (--max-artifact).
        .route(
            routes::RELEASE,
            put(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(routes::START, post(start))
        .route(routes::STOP, post(stop))
        .route(routes::STATUS, post(status))
        .route(routes::LOGS, get(crate::logs::logs))
        .route(routes::HOOK, post(crate::hooks::run_hook))
        .route(routes::MEMBERS, get(members))
        .route(routes::REGISTER, post(register))
        .route(routes::STATE, post(set_state))
        .route(routes::WEIGHT, post(set_weight))
        .route(routes::SWITCH, post(switch))
        .route_layer(axum::middleware::from_fn(plain_path_names))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such operation") })
        .with_state(state)
}

/// Refuses a name or version that is not a plain one (letters, digits, `.` `_` `-` `+`, not
/// starting with `.`): the same rule as the console's, before anything looks it up.
pub fn check_plain(what: &str, value: &str) -> Result<()> {
    let max = if what == "version" {
        MAX_VERSION
    } else {
        MAX_NAME
    };
    if nonstop_ports::is_plain_name(value, max) {
        return Ok(());
    }
    let shown: String = value.chars().take(80).collect();
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "{what} `{}` is not a plain name; use letters, digits, . _ - + (at most {max}, not starting with .)",
            shown.escape_debug()
        ),
    ))
}

/// Every path parameter of every route (`{service}`, `{node}`, `{version}`) through
/// [`check_plain`].
async fn plain_path_names(
    params: axum::extract::RawPathParams,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    for (what, value) in &params {
        if let Err(e) = check_plain(what, value) {
            return e.into_response();
        }
    }
    next.run(request).await
}

fn service<'a>(state: &'a AgentState, name: &str) -> Result<&'a LocalService> {
    state.host.services.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("service `{name}` has nothing on host `{}`", state.host.name),
        )
    })
}

/// The service's runtime on this host, and the node if it is placed here.
pub(crate) fn node<'a>(
    state: &'a AgentState,
    service_name: &str,
    node: &str,
) -> Result<(&'a LocalService, &'a nonstop_drivers::AnyRuntime, NodeName)> {
    let svc = service(state, service_name)?;
    let runtime = svc.runtime.as_ref();
    match (runtime, svc.node_here(&state.host.name, node)) {
        (Some(runtime), Some(_)) => Ok((svc, runtime, LocalService::node_name(node))),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "node `{node}` of `{service_name}` is not placed on host `{}`",
                state.host.name
            ),
        )),
    }
}

fn balancer<'a>(state: &'a AgentState, name: &str) -> Result<&'a nonstop_drivers::AnyBalancer> {
    service(state, name)?.balancer.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the balancer of `{name}` does not run on host `{}`",
                state.host.name
            ),
        )
    })
}

async fn instances(State(state): State<Shared>) -> Result<Json<Vec<HostInstance>>> {
    let mut out = Vec::new();
    for svc in state.host.services.values() {
        let Some(runtime) = &svc.runtime else {
            continue;
        };
        let records = svc
            .store
            .lock()
            .await
            .instances()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        for record in records {
            out.push(HostInstance {
                service: svc.name.clone(),
                running: runtime.is_running(&record.instance).await,
                instance: record.instance,
            });
        }
    }
    Ok(Json(out))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("missing header {name}")))
}

/// Receives an artifact: streamed to a scratch file with its size bounded and its SHA-256
/// checked, then installed as a release; nothing is kept when anything is off.
async fn upload(
    State(state): State<Shared>,
    Path((service_name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<protocol::Uploaded>> {
    let svc = service(&state, &service_name)?;
    if svc.runtime.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no node of `{service_name}` runs on host `{}`",
                state.host.name
            ),
        ));
    }
    nonstop_releases::check_version(&version)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let expected = header(&headers, protocol::SHA256_HEADER)?.to_ascii_lowercase();
    let name = header(&headers, protocol::ARTIFACT_NAME_HEADER)?.to_string();
    protocol::check_artifact_name(&name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if let Some(length) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > state.max_artifact
    {
        return Err(too_large(state.max_artifact));
    }
    let scratch = svc
        .base
        .join("incoming")
        .join(format!("{version}-{}", std::process::id()));
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    tokio::fs::create_dir_all(&scratch)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let file_path = scratch.join(&name);
    let received = receive(body, &file_path, state.max_artifact, &expected).await;
    let installed = match received {
        Ok(()) => {
            let base = svc.base.clone();
            let version = nonstop_ports::Version(version.clone());
            let path = file_path.clone();
            tokio::task::spawn_blocking(move || {
                nonstop_releases::install(&base, &path, Some(version), Default::default())
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
            .and_then(|r| r.map_err(|e| ApiError::new(StatusCode::CONFLICT, e)))
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    let release = installed?;
    tracing::info!(service = %service_name, version = %release.version, "release received");
    Ok(Json(protocol::Uploaded {
        version: release.version,
        checksum: release.checksum,
    }))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the artifact is larger than this agent's limit of {limit} bytes (--max-artifact)"),
    )
}

async fn receive(body: Body, path: &std::path::Path, limit: u64, expected: &str) -> Result<()> {
    let io = |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("upload cut short: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != expected {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("checksum mismatch: received {actual}, the sender announced {expected}"),
        ));
    }
    Ok(())
}

async fn start(
    State(state): State<Shared>,
    Path((service_name, node_name)): Path<(String, String)>,
    Json(request): Json<protocol::StartRequest>,
) -> Result<Json<Instance>> {
    check_plain("version", request.version.as_str())?;
    check_env(&request.env)?;
    let (svc, runtime, node) = node(&state, &service_name, &node_name)?;
    let config = svc
        .node_here(&state.host.name, &node_name)
        .expect("checked by node()");
    let release = nonstop_releases::load(&svc.base, &request.version).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("release {} was not uploaded to this host", request.version),
        )
    })?;
    let store = svc.store.lock().await;
    // Tomcat parallel deployment starts the new release next to the running one, on purpose.
    if runtime.replacement() != Replacement::Beside
        && let Ok(Some(record)) = store.instance(&node)
        && runtime.is_running(&record.instance).await
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "node {node} already runs {} (pid {}); stop it first",
                record.instance.version, record.instance.pid
            ),
        ));
    }
    let port = *config.port.get_ref();
    let grace = svc.config.runtime.shared.stop_grace.0;
    // A runtime whose server keeps the node's port (Tomcat manager mode) holds it on purpose.
    if runtime.replacement() == Replacement::StopFirst
        && !nonstop_runtime_process::wait_port_free(config.ip(), port, grace).await
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "port {port} of {node} on {} is taken by a process nonstop did not start; stop it or change the port",
                state.host.name
            ),
        ));
    }
    // This host's secrets, read now and only here, under the release's own `--env`.
    let mut env = nonstop_config::read_env_files(&svc.config.runtime.shared.env_files)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{node} not started: {e}")))?;
    env.extend(request.env);
    let spec = InstanceSpec {
        node: node.clone(),
        port,
        version: release.version.clone(),
        release_dir: release.dir.clone(),
        artifact: release.artifact(),
        env,
        log: release.log(node.as_str()),
    };
    let instance = runtime.start(&spec).await.map_err(port_error)?;
    store
        .put_instance(&instance)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(service = %service_name, node = %node, version = %instance.version, pid = instance.pid, "started");
    Ok(Json(instance))
}

/// A release's `--env`: names without `=` or NUL, values without NUL (a process cannot take
/// them); the value is never quoted back.
fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<()> {
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            let shown: String = name.chars().take(80).collect();
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "environment variable `{}` cannot be set: a name needs no `=` or NUL, a value no NUL",
                    shown.escape_debug()
                ),
            ));
        }
    }
    Ok(())
}

/// The instance the caller names, if our record for the node is it: the same process, and the
/// same version — or, for a runtime that runs several releases in one server (`Beside`), the
/// other release of that same server (the record names the newest).
fn named(record: &Instance, wanted: &protocol::InstanceRef, beside: bool) -> Option<Instance> {
    let same_process = record.pid == wanted.pid && record.start_ticks == wanted.start_ticks;
    (same_process && (record.version == wanted.version || beside)).then(|| Instance {
        version: wanted.version.clone(),
        ..record.clone()
    })
}

async fn stop(
    State(state): State<Shared>,
    Path((service_name, node_name)): Path<(String, String)>,
    Json(request): Json<protocol::StopRequest>,
) -> Result<Json<serde_json::Value>> {
    check_plain("version", request.instance.version.as_str())?;
    let (svc, runtime, node) = node(&state, &service_name, &node_name)?;
    let store = svc.store.lock().await;
    let record = store
        .instance(&node)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let Some(record) = record else {
        return Ok(Json(serde_json::json!({ "stopped": false })));
    };
    let beside = runtime.replacement() == Replacement::Beside;
    let Some(instance) = named(&record.instance, &request.instance, beside) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "node {node} runs {} (pid {}), not the instance asked for; nothing stopped",
                record.instance.version, record.instance.pid
            ),
        ));
    };
    let grace = Duration::from_millis(request.grace_ms).min(protocol::MAX_STOP_GRACE);
    runtime.stop(&instance, grace).await.map_err(port_error)?;
    // Stopping the older release beside the newest leaves the record (the newest's) in place.
    if instance.version == record.instance.version {
        store
            .remove_instance(&node)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    tracing::info!(service = %service_name, node = %node, "stopped");
    Ok(Json(serde_json::json!({ "stopped": true })))
}

async fn status(
    State(state): State<Shared>,
    Path((service_name, node_name)): Path<(String, String)>,
    Json(wanted): Json<protocol::InstanceRef>,
) -> Result<Json<protocol::Status>> {
    check_plain("version", wanted.version.as_str())?;
    let (svc, runtime, node) = node(&state, &service_name, &node_name)?;
    let beside = runtime.replacement() == Replacement::Beside;
    let record = svc
        .store
        .lock()
        .await
        .instance(&node)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let running = match record {
        Some(r) => match named(&r.instance, &wanted, beside) {
            Some(instance) => runtime.is_running(&instance).await,
            None => false,
        },
        None => false,
    };
    Ok(Json(protocol::Status { running }))
}

async fn members(
    State(state): State<Shared>,
    Path(service_name): Path<String>,
) -> Result<Json<Vec<Member>>> {
    let balancer = balancer(&state, &service_name)?;
    Ok(Json(balancer.members().await.map_err(port_error)?))
}

fn balanced_node(state: &AgentState, service_name: &str, node: &NodeName) -> Result<String> {
    check_plain("node", node.as_str())?;
    let svc = service(state, service_name)?;
    svc.config
        .node(node.as_str())
        .map(|n| n.addr())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("`{service_name}` has no node `{node}`"),
            )
        })
}

async fn register(
    State(state): State<Shared>,
    Path(service_name): Path<String>,
    Json(request): Json<protocol::RegisterRequest>,
) -> Result<Json<serde_json::Value>> {
    check_plain("node", request.node.as_str())?;
    let balancer = balancer(&state, &service_name)?;
    let addr = balanced_node(&state, &service_name, &request.node)?;
    balancer
        .register(&request.node, &addr)
        .await
        .map_err(port_error)?;
    Ok(Json(serde_json::json!({})))
}

async fn set_state(
    State(state): State<Shared>,
    Path(service_name): Path<String>,
    Json(request): Json<protocol::StateRequest>,
) -> Result<Json<serde_json::Value>> {
    check_plain("node", request.node.as_str())?;
    let balancer = balancer(&state, &service_name)?;
    balanced_node(&state, &service_name, &request.node)?;
    balancer
        .set_state(&request.node, request.state)
        .await
        .map_err(port_error)?;
    tracing::info!(service = %service_name, node = %request.node, state = %request.state, "balancer state");
    Ok(Json(serde_json::json!({})))
}

async fn set_weight(
    State(state): State<Shared>,
    Path(service_name): Path<String>,
    Json(request): Json<protocol::WeightRequest>,
) -> Result<Json<serde_json::Value>> {
    check_plain("node", request.node.as_str())?;
    let balancer = balancer(&state, &service_name)?;
    balanced_node(&state, &service_name, &request.node)?;
    balancer
        .set_weight(&request.node, request.weight)
        .await
        .map_err(port_error)?;
    Ok(Json(serde_json::json!({})))
}

async fn switch(
    State(state): State<Shared>,
    Path(service_name): Path<String>,
    Json(request): Json<protocol::SwitchRequest>,
) -> Result<Json<serde_json::Value>> {
    for change in &request.changes {
        check_plain("node", change.node.as_str())?;
    }
    let balancer = balancer(&state, &service_name)?;
    let mut changes: Vec<(NodeName, LbState, Option<u32>)> = Vec::new();
    for change in request.changes {
        balanced_node(&state, &service_name, &change.node)?;
        changes.push((change.node, change.state, change.weight));
    }
    balancer.switch(&changes).await.map_err(port_error)?;
    Ok(Json(serde_json::json!({})))
}
