//! A paused deploy from the console: promote and abort (role deployer, audited) and the
//! canary's steps with their numbers as JSON, which the page draws as a chart.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use nonstop_drivers::ServiceEngine;
use nonstop_engine::{Decided, Decision, DeployError};
use serde_json::json;

use crate::auth::{AuditNote, Caller};
use crate::deploys::{Work, accepted, spawn};
use crate::error::{ApiError, ApiResult};
use crate::state::App;

/// Runs `f` on an engine of `service` on a thread of its own (the engine is not `Send`).
async fn with_engine<T, F>(app: &App, service: &str, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut ServiceEngine, &tokio::runtime::Runtime) -> Result<T, DeployError>
        + Send
        + 'static,
{
    let (app, service) = (app.clone(), service.to_string());
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DeployError::Failed(e.to_string()))?;
        let mut engine = app.drivers.engine(&service, Box::new(|_| {}))?;
        f(&mut engine, &rt)
    })
    .await
    .map_err(|e| ApiError::internal(format!("engine task: {e}")))?
    .map_err(|e| match e {
        DeployError::Refused(m) => ApiError::conflict(m),
        other => ApiError::new(http::StatusCode::BAD_GATEWAY, other.to_string()),
    })
}

pub async fn promote(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
) -> ApiResult<Response> {
    decide(app, caller, service, Decision::Promote).await
}

pub async fn abort(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
) -> ApiResult<Response> {
    decide(app, caller, service, Decision::Abort).await
}

/// The deploy's own process acts on the decision; when that process is gone (the CLI that
/// started it was killed, the console restarted), a console job resumes or undoes it.
async fn decide(
    app: App,
    caller: Caller,
    service: String,
    decision: Decision,
) -> ApiResult<Response> {
    app.drivers.parts(&service)?;
    let paused = with_engine(&app, &service, |engine, _| engine.paused())
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!("no deploy of `{service}` waits for a decision"))
        })?;
    let by = format!("{} via console", caller.actor);
    if !paused.holder_alive {
        let kind = match decision {
            Decision::Promote => "resume",
            Decision::Abort => "abort",
        };
        let job = app
            .jobs
            .start(&service, kind, &caller, Some(paused.version.clone()))?;
        spawn(&app, job.clone(), Work::Decide(decision, by), None)?;
        return Ok(accepted(
            &job,
            format!(
                "job {}: {} deploy #{} (its process was gone)",
                job.id,
                decision.as_str(),
                paused.deploy
            ),
        ));
    }
    let decided = with_engine(&app, &service, move |engine, rt| {
        rt.block_on(engine.decide(decision, &by))
    })
    .await?;
    let (deploy, pid) = match decided {
        Decided::Relayed { deploy, pid } => (deploy, pid),
        // Its process died between the two looks: the decision was carried out here.
        Decided::Resumed(report) => (report.deploy, 0),
        Decided::Undone { deploy } => (deploy, 0),
    };
    let mut response = axum::Json(json!({
        "deploy": deploy,
        "decision": decision,
        "relayed_to_pid": pid,
    }))
    .into_response();
    response.extensions_mut().insert(AuditNote::detail(format!(
        "deploy #{deploy} of {}: {} at step {} ({})",
        paused.version,
        decision.as_str(),
        paused.step,
        paused.why
    )));
    Ok(response)
}

/// The newest canary's steps (weights, states, the canary's and the stable release's numbers
/// per window) and the pause that waits, if any.
pub async fn canary(State(app): State<App>, Path(service): Path<String>) -> ApiResult<Response> {
    app.drivers.parts(&service)?;
    let view = with_engine(&app, &service, |engine, _| {
        Ok((engine.canary_view()?, engine.paused()?))
    })
    .await?;
    Ok(axum::Json(json!({ "canary": view.0, "paused": view.1 })).into_response())
}
