//! Services as the console shows them: nodes, versions, balancer state, in-flight requests and
//! health, read live from the store, the balancer and the probe; drain/enable; deploy history.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use nonstop_accounts::Action;
use nonstop_ports::{Balancer, LbState, NodeName, Probe, Runtime};
use nonstop_store::{Deployment, InstanceRecord, JournalEntry, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{AuditNote, Caller, may};
use crate::deploys::JobSummary;
use crate::drivers::ServiceParts;
use crate::error::{ApiError, ApiResult};
use crate::state::App;

/// How long the page waits for a balancer or a probe before showing it as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub strategy: String,
    pub current: Option<String>,
    pub previous: Option<String>,
    pub balancer_error: Option<String>,
    pub nodes: Vec<NodeStatus>,
    /// A deploy recorded as unfinished in the store (running elsewhere, or interrupted).
    pub unfinished: Option<String>,
    /// The console's deploy or rollback of this service that is running now.
    pub running: Option<JobSummary>,
    pub recent: Vec<JobSummary>,
    pub can: Permissions,
    /// The balancer's maintenance mode, when on.
    pub maintenance: Option<nonstop_ports::Maintenance>,
}

/// What the caller may do here: the page shows only those buttons (the API checks again).
#[derive(Debug, Serialize, Default)]
pub struct Permissions {
    pub deploy: bool,
    pub rollback: bool,
    pub drain: bool,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub address: String,
    pub port: u16,
    pub version: Option<String>,
    pub pid: Option<i32>,
    /// `running`, `exited` or `none`.
    pub process: &'static str,
    /// The balancer's state for it: `active`, `draining`, `disabled`, or none if not a member.
    pub balancer: Option<String>,
    pub weight: Option<u32>,
    pub in_flight: Option<i64>,
    /// `up`, `down: why`, or `-` when nothing runs.
    pub health: String,
    pub has_log: bool,
}

/// What the store knows of a service.
struct Stored {
    current: Option<String>,
    previous: Option<String>,
    instances: BTreeMap<String, InstanceRecord>,
    unfinished: Option<Deployment>,
}

/// Opens the service's store on a blocking thread and runs `f` on it.
pub async fn with_store<T, F>(parts_base: std::path::PathBuf, service: &str, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, nonstop_store::StoreError> + Send + 'static,
{
    let service = service.to_string();
    tokio::task::spawn_blocking(move || {
        let store = Store::open(&nonstop_engine::store_path(&parts_base), &service)
            .map_err(|e| ApiError::internal(format!("store of `{service}`: {e}")))?;
        f(&store).map_err(|e| ApiError::internal(format!("store of `{service}`: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task: {e}")))?
}

async fn stored(parts: &ServiceParts) -> ApiResult<Stored> {
    with_store(parts.base.clone(), &parts.name, |store| {
        let (current, previous) = store.releases()?;
        Ok(Stored {
            current: current.map(|v| v.to_string()),
            previous: previous.map(|v| v.to_string()),
            instances: store
                .instances()?
                .into_iter()
                .map(|r| (r.instance.node.to_string(), r))
                .collect(),
            unfinished: store.unfinished()?,
        })
    })
    .await
}

/// The live status of `service` as `caller` may see it.
pub async fn status(app: &App, caller: &Caller, service: &str) -> ApiResult<ServiceStatus> {
    let parts = app.drivers.parts(service)?;
    let stored = stored(&parts).await?;
    let (members, balancer_error) =
        match tokio::time::timeout(READ_TIMEOUT, parts.balancer.members()).await {
            Ok(Ok(members)) => (
                members
                    .into_iter()
                    .map(|m| (m.node.to_string(), m))
                    .collect::<BTreeMap<_, _>>(),
                None,
            ),
            Ok(Err(e)) => (BTreeMap::new(), Some(e.to_string())),
            Err(_) => (BTreeMap::new(), Some("the balancer did not answer".into())),
        };
    let mut nodes = Vec::new();
    for node in &parts.config.nodes {
        let name = node.name.get_ref().clone();
        let record = stored.instances.get(&name);
        let alive = match record {
            Some(r) => parts.runtime.is_running(&r.instance).await,
            None => false,
        };
        let health = if alive {
            match tokio::time::timeout(
                READ_TIMEOUT,
                parts.probe.check(node.ip(), *node.port.get_ref()),
            )
            .await
            {
                Ok(Ok(())) => "up".to_string(),
                Ok(Err(e)) => format!("down: {e}"),
                Err(_) => "down: no answer".to_string(),
            }
        } else {
            "-".to_string()
        };
        let member = members.get(&name);
        nodes.push(NodeStatus {
            node: name,
            address: node.ip().to_string(),
            port: *node.port.get_ref(),
            version: record.map(|r| r.instance.version.to_string()),
            pid: record.map(|r| r.instance.pid),
            process: match (record, alive) {
                (None, _) => "none",
                (Some(_), true) => "running",
                (Some(_), false) => "exited",
            },
            balancer: member.map(|m| m.state.to_string()),
            weight: member.map(|m| m.weight),
            in_flight: member.map(|m| m.in_flight),
            health,
            has_log: record.is_some(),
        });
    }
    let unfinished = stored.unfinished.map(|d| {
        if nonstop_store::pid_alive(d.pid) {
            format!(
                "deploy #{} of {} by {} is in progress",
                d.id, d.version, d.holder
            )
        } else {
            format!(
                "deploy #{} of {} by {} was interrupted; the next deploy or rollback recovers it",
                d.id, d.version, d.holder
            )
        }
    });
    let can = Permissions {
        deploy: may(app, caller, service, Action::Deploy).await?,
        rollback: may(app, caller, service, Action::Rollback).await?,
        drain: may(app, caller, service, Action::Drain).await?,
    };
    Ok(ServiceStatus {
        service: service.to_string(),
        strategy: parts.config.strategy.get_ref().as_str().to_string(),
        current: stored.current,
        previous: stored.previous,
        balancer_error,
        nodes,
        unfinished,
        running: app.jobs.running(service).map(|j| j.summary()),
        recent: app.jobs.recent(service, 5),
        can,
        maintenance: tokio::time::timeout(READ_TIMEOUT, parts.balancer.maintenance())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
    })
}

/// Every service the caller may see, with its live status.
pub async fn list(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let config = app.drivers.load()?;
    let mut services = Vec::new();
    for name in config.services.keys() {
        if may(&app, &caller, name, Action::View).await? {
            services.push(status(&app, &caller, name).await?);
        }
    }
    Ok(axum::Json(json!({ "services": services })).into_response())
}

pub async fn one(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(status(&app, &caller, &service).await?).into_response())
}

async fn set_node(app: &App, service: &str, node: &str, state: LbState) -> ApiResult<Response> {
    let parts = app.drivers.parts(service)?;
    if parts.config.node(node).is_none() {
        return Err(ApiError::not_found(format!(
            "service `{service}` has no node `{node}`"
        )));
    }
    if let Some(job) = app.jobs.running(service) {
        return Err(ApiError::conflict(format!(
            "a {} of `{service}` is running (job {}); wait for it to finish",
            job.kind, job.id
        )));
    }
    drop(parts);
    // Through the engine: under the deploy lock and the invariants a deploy keeps (the engine
    // is not `Send`, so it runs on a thread of its own).
    let app_for_engine = app.clone();
    let (service_name, node_name) = (service.to_string(), NodeName(node.to_string()));
    let change = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| nonstop_engine::DeployError::Failed(e.to_string()))?;
        let mut engine = app_for_engine
            .drivers
            .engine(&service_name, Box::new(|_| {}))?;
        rt.block_on(async {
            tokio::time::timeout(READ_TIMEOUT, engine.set_node_state(&node_name, state))
                .await
                .unwrap_or_else(|_| {
                    Err(nonstop_engine::DeployError::Failed(
                        "the balancer did not answer".into(),
                    ))
                })
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("engine task: {e}")))?;
    let mut response = match change {
        Ok(_) => axum::Json(json!({"ok": true, "node": node, "state": state.to_string()}))
            .into_response(),
        Err(e @ nonstop_engine::DeployError::Refused(_)) => {
            ApiError::conflict(e.to_string()).into_response()
        }
        Err(e) => ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            format!("the balancer refused: {e}"),
        )
        .into_response(),
    };
    response.extensions_mut().insert(AuditNote {
        node: Some(node.to_string()),
        detail: format!("set {state}"),
        ..Default::default()
    });
    Ok(response)
}

/// Takes a node out of the balancer gently: only its existing sessions and requests.
pub async fn drain(
    State(app): State<App>,
    Path((service, node)): Path<(String, String)>,
) -> ApiResult<Response> {
    set_node(&app, &service, &node, LbState::Draining).await
}

/// Puts a node back into the balancer.
pub async fn enable(
    State(app): State<App>,
    Path((service, node)): Path<(String, String)>,
) -> ApiResult<Response> {
    set_node(&app, &service, &node, LbState::Active).await
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

/// Past deploys, newest first.
pub async fn history(
    State(app): State<App>,
    Path(service): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Response> {
    let parts = app.drivers.parts(&service)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let deployments = with_store(parts.base, &service, move |s| s.deployments(limit)).await?;
    Ok(axum::Json(json!({ "deployments": deployments })).into_response())
}

/// One step of a deploy with how long it took (until the next step, or the end).
#[derive(Debug, Serialize)]
pub struct TimedStep {
    #[serde(flatten)]
    pub entry: JournalEntry,
    pub took_ms: Option<i64>,
}

/// One deploy with its journal and per-step timing.
pub async fn journal(
    State(app): State<App>,
    Path((service, deploy)): Path<(String, i64)>,
) -> ApiResult<Response> {
    let parts = app.drivers.parts(&service)?;
    let (deployment, entries) = with_store(parts.base, &service, move |s| {
        Ok((s.deployment(deploy)?, s.journal_of(deploy)?))
    })
    .await?;
    let deployment = deployment
        .ok_or_else(|| ApiError::not_found(format!("`{service}` has no deploy #{deploy}")))?;
    let ends: Vec<Option<i64>> = entries
        .iter()
        .skip(1)
        .map(|e| Some(e.at_ms))
        .chain(std::iter::once(deployment.finished_ms))
        .collect();
    let steps: Vec<TimedStep> = entries
        .into_iter()
        .zip(ends)
        .map(|(entry, end)| TimedStep {
            took_ms: end.map(|end| (end - entry.at_ms).max(0)),
            entry,
        })
        .collect();
    Ok(axum::Json(json!({ "deployment": deployment, "steps": steps })).into_response())
}
