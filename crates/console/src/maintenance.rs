//! The service page's maintenance switch: `POST /api/services/{service}/maintenance` turns the
//! balancer's maintenance mode on or off through the engine, audited like drain/enable.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use nonstop_ports::Maintenance;
use serde::Deserialize;
use serde_json::json;

use crate::auth::AuditNote;
use crate::error::{ApiError, ApiResult};
use crate::state::App;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    on: bool,
    #[serde(default)]
    message: Option<String>,
    /// Addresses or CIDR networks that still reach the backends.
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    retry_after_s: Option<u32>,
}

impl Switch {
    fn maintenance(&self) -> Result<Option<Maintenance>, ApiError> {
        if !self.on {
            return Ok(None);
        }
        let allow = self
            .allow
            .iter()
            .map(|a| nonstop_ports::edge::parse_allow(a.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        Ok(Some(Maintenance {
            message: self
                .message
                .clone()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| Maintenance::DEFAULT_MESSAGE.into()),
            allow,
            retry_after_s: self
                .retry_after_s
                .unwrap_or(Maintenance::DEFAULT_RETRY_AFTER_S),
        }))
    }
}

pub async fn switch(
    State(app): State<App>,
    Path(service): Path<String>,
    axum::Json(body): axum::Json<Switch>,
) -> ApiResult<Response> {
    let maintenance = body.maintenance()?;
    drop(app.drivers.parts(&service)?);
    let detail = match &maintenance {
        Some(m) if m.allow.is_empty() => "maintenance on".to_string(),
        Some(m) => format!(
            "maintenance on, allowing {}",
            m.allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "maintenance off".to_string(),
    };
    // The engine is not `Send`: it runs on a thread of its own, as drain/enable do.
    let (app_for_engine, name) = (app.clone(), service.clone());
    let result = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| nonstop_engine::DeployError::Failed(e.to_string()))?;
        let engine = app_for_engine.drivers.engine(&name, Box::new(|_| {}))?;
        rt.block_on(engine.set_maintenance(maintenance.as_ref()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("engine task: {e}")))?;
    let mut response = match result {
        Ok(said) => axum::Json(json!({ "ok": true, "result": said })).into_response(),
        Err(e) => ApiError::new(http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    response.extensions_mut().insert(AuditNote::detail(detail));
    Ok(response)
}
