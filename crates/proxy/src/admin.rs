//! The admin API (see docs/admin-api.md): JSON over HTTP on a unix socket, or TCP with a bearer token.
//! Thin: it parses, authorises and calls the operations in `control`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::Shared;
use crate::control::{BackendPatch, ControlError};
use crate::state::BackendSpec;

pub fn router(shared: Arc<Shared>, token: Option<String>) -> Router {
    let api = Router::new()
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{pool}", get(show_pool))
        .route(
            "/v1/pools/{pool}/backends",
            post(add_backend)
                .put(replace_backends)
                .patch(patch_backends),
        )
        .route(
            "/v1/pools/{pool}/backends/{backend}",
            patch(patch_backend).delete(remove_backend),
        )
        .route(
            "/v1/pools/{pool}/preview",
            put(set_preview).delete(clear_preview),
        )
        .route(
            "/v1/pools/{pool}/maintenance",
            put(set_maintenance).delete(clear_maintenance),
        )
        .route("/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .with_state(shared);
    match token {
        Some(token) => api.layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        None => api,
    }
    .fallback(|| async {
        error(
            StatusCode::NOT_FOUND,
            "no such admin endpoint",
            Some("see docs/admin-api.md"),
        )
    })
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) && !presented.is_empty() {
        next.run(request).await
    } else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "the admin API needs `Authorization: Bearer <token>` with the token from admin_token_file",
            None,
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        response
    }
}

fn error(status: StatusCode, message: &str, hint: Option<&str>) -> Response {
    (status, Json(json!({ "error": message, "hint": hint }))).into_response()
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, hint) = match &self {
            ControlError::UnknownPool(_) => {
                (StatusCode::NOT_FOUND, Some("GET /v1/pools lists the pools"))
            }
            ControlError::UnknownBackend { .. } => (
                StatusCode::NOT_FOUND,
                Some("GET /v1/pools/{pool} lists its backends"),
            ),
            ControlError::Duplicate { .. } => {
                (StatusCode::CONFLICT, Some("PATCH it, or DELETE it first"))
            }
            ControlError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, None),
            ControlError::Config(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("fix the file and reload again; the previous configuration keeps serving"),
            ),
        };
        error(status, &self.to_string(), hint)
    }
}

/// A JSON body whose parse errors come back as JSON with a 400, like every other error.
struct Body<T>(T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(error(
                StatusCode::BAD_REQUEST,
                &rejection.body_text(),
                Some("see docs/admin-api.md"),
            )),
        }
    }
}

async fn list_pools(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({ "pools": shared.pools() })).into_response()
}

async fn show_pool(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.pool(&pool)?.view()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replacement {
    backends: Vec<BackendSpec>,
}

async fn replace_backends(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
    Body(body): Body<Replacement>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.replace_backends(&pool, &body.backends).await?).into_response())
}

async fn add_backend(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
    Body(spec): Body<BackendSpec>,
) -> Result<Response, ControlError> {
    let view = shared.add_backend(&pool, &spec).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn remove_backend(
    State(shared): State<Arc<Shared>>,
    Path((pool, backend)): Path<(String, String)>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.remove_backend(&pool, &backend).await?).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Patches {
    changes: Vec<crate::control::NamedPatch>,
}

async fn patch_backends(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
    Body(body): Body<Patches>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.patch_backends(&pool, &body.changes).await?).into_response())
}

async fn patch_backend(
    State(shared): State<Arc<Shared>>,
    Path((pool, backend)): Path<(String, String)>,
    Body(change): Body<BackendPatch>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.patch_backend(&pool, &backend, &change).await?).into_response())
}

async fn set_preview(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
    Body(preview): Body<nonstop_ports::Preview>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.set_preview(&pool, Some(preview)).await?).into_response())
}

async fn clear_preview(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.set_preview(&pool, None).await?).into_response())
}

async fn set_maintenance(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
    Body(maintenance): Body<nonstop_ports::Maintenance>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.set_maintenance(&pool, Some(maintenance)).await?).into_response())
}

async fn clear_maintenance(
    State(shared): State<Arc<Shared>>,
    Path(pool): Path<String>,
) -> Result<Response, ControlError> {
    Ok(Json(shared.set_maintenance(&pool, None).await?).into_response())
}

async fn reload(State(shared): State<Arc<Shared>>) -> Result<Response, ControlError> {
    let report = shared.reload().await?;
    Ok(Json(json!({
        "reloaded": true,
        "config": report.config,
        "pools": report.pools,
        "needs_restart": report.needs_restart,
        "summary": report.summary,
    }))
    .into_response())
}

async fn metrics(State(shared): State<Arc<Shared>>, _headers: HeaderMap) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}
