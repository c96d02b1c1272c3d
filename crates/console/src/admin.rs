//! Admin pages' API: the audit log (JSON, CSV and JSON export), users and roles, per-service
//! grants and CI tokens. Admins cannot demote or delete themselves (no locking out the console).

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use nonstop_accounts::{AuditFilter, Role, now_ms};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuditNote, Caller};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::App;

#[derive(Deserialize)]
pub struct AuditQuery {
    service: Option<String>,
    actor: Option<String>,
    since_ms: Option<i64>,
    limit: Option<usize>,
}

impl AuditQuery {
    fn filter(self, default_limit: usize) -> AuditFilter {
        AuditFilter {
            service: self.service.filter(|s| !s.is_empty()),
            actor: self.actor.filter(|s| !s.is_empty()),
            since_ms: self.since_ms,
            limit: self.limit.unwrap_or(default_limit).min(100_000),
        }
    }
}

pub async fn audit(State(app): State<App>, Query(query): Query<AuditQuery>) -> ApiResult<Response> {
    let filter = query.filter(500);
    let records = app.accounts(move |a| a.audit_log(&filter)).await?;
    Ok(axum::Json(json!({ "records": records })).into_response())
}

fn download(body: Vec<u8>, content_type: &'static str, file: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_DISPOSITION, HeaderValue::from_static(file));
    response
}

/// The audit log as CSV (formula-looking cells neutralised), all records unless limited.
pub async fn audit_csv(state: State<App>, query: Query<AuditQuery>) -> ApiResult<Response> {
    export(state, query, Export::Csv).await
}

/// The audit log as one JSON array, all records unless limited.
pub async fn audit_json(state: State<App>, query: Query<AuditQuery>) -> ApiResult<Response> {
    export(state, query, Export::Json).await
}

#[derive(Clone, Copy)]
enum Export {
    Csv,
    Json,
}

async fn export(
    State(app): State<App>,
    Query(query): Query<AuditQuery>,
    format: Export,
) -> ApiResult<Response> {
    let filter = query.filter(0);
    let body = app
        .accounts(move |a| {
            let mut out = Vec::new();
            match format {
                Export::Csv => a.export_audit_csv(&filter, &mut out)?,
                Export::Json => a.export_audit_json(&filter, &mut out)?,
            };
            Ok(out)
        })
        .await?;
    Ok(match format {
        Export::Csv => download(
            body,
            "text/csv; charset=utf-8",
            "attachment; filename=\"nonstop-audit.csv\"",
        ),
        Export::Json => download(
            body,
            "application/json",
            "attachment; filename=\"nonstop-audit.json\"",
        ),
    })
}

/// Users with their grants and tokens (never a token's secret).
pub async fn users(State(app): State<App>) -> ApiResult<Response> {
    let users = app
        .accounts(|a| {
            let mut out = Vec::new();
            for user in a.users()? {
                let grants: Vec<_> = a
                    .grants(&user.name)?
                    .into_iter()
                    .map(|(service, role)| json!({"service": service, "role": role}))
                    .collect();
                let tokens = a.tokens(&user.name)?;
                out.push(json!({
                    "name": user.name,
                    "role": user.role,
                    "setup_pending": user.setup_pending(),
                    "grants": grants,
                    "tokens": tokens,
                }));
            }
            Ok(out)
        })
        .await?;
    let config = app.drivers.load()?;
    let services: Vec<&String> = config.services.keys().collect();
    Ok(axum::Json(json!({ "users": users, "services": services })).into_response())
}

fn role(text: &str) -> ApiResult<Role> {
    Role::parse(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{text}` is not a role: use admin, deployer or viewer"
        ))
    })
}

fn noted(value: serde_json::Value, note: AuditNote) -> Response {
    let mut response = axum::Json(value).into_response();
    response.extensions_mut().insert(note);
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    password: String,
    role: String,
}

/// A new account with an initial password; they enrol TOTP at their first login.
pub async fn create_user(
    State(app): State<App>,
    ApiJson(request): ApiJson<NewUser>,
) -> ApiResult<Response> {
    let role = role(&request.role)?;
    let name = request.name.clone();
    app.accounts(move |a| a.create_user(&request.name, &request.password, role))
        .await?;
    Ok(noted(
        json!({"ok": true, "name": name}),
        AuditNote::detail(format!("user {name} as {role}")),
    ))
}

fn not_self(caller: &Caller, user: &str, what: &str) -> ApiResult<()> {
    if caller.actor == user {
        return Err(ApiError::bad_request(format!(
            "you cannot {what} your own account; ask another admin"
        )));
    }
    Ok(())
}

pub async fn delete_user(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<Response> {
    not_self(&caller, &user, "delete")?;
    let name = user.clone();
    if !app.accounts(move |a| a.delete_user(&name)).await? {
        return Err(ApiError::not_found(format!("no user `{user}`")));
    }
    Ok(noted(
        json!({"ok": true}),
        AuditNote::detail(format!("user {user}")),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    role: String,
}

pub async fn set_role(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    ApiJson(request): ApiJson<RoleRequest>,
) -> ApiResult<Response> {
    not_self(&caller, &user, "change the role of")?;
    let role = role(&request.role)?;
    let name = user.clone();
    app.accounts(move |a| a.set_role(&name, role)).await?;
    Ok(noted(
        json!({"ok": true}),
        AuditNote::detail(format!("user {user} is now {role}")),
    ))
}

/// Refuses a service the config does not have: a typo must not become a grant for nothing.
fn known_service(app: &App, service: &str) -> ApiResult<()> {
    let config = app.drivers.load()?;
    if config.services.contains_key(service) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "there is no service `{service}` in the config"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    service: String,
    role: String,
}

pub async fn grant(
    State(app): State<App>,
    Path(user): Path<String>,
    ApiJson(request): ApiJson<GrantRequest>,
) -> ApiResult<Response> {
    let role = role(&request.role)?;
    known_service(&app, &request.service)?;
    let (name, service) = (user.clone(), request.service.clone());
    app.accounts(move |a| a.grant(&name, &service, role))
        .await?;
    Ok(noted(
        json!({"ok": true}),
        AuditNote {
            service: Some(request.service),
            detail: format!("{user} is {role} here"),
            ..Default::default()
        },
    ))
}

pub async fn revoke_grant(
    State(app): State<App>,
    Path((user, service)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (name, svc) = (user.clone(), service.clone());
    if !app.accounts(move |a| a.revoke(&name, &svc)).await? {
        return Err(ApiError::not_found(format!(
            "`{user}` has no grant on `{service}`"
        )));
    }
    Ok(noted(
        json!({"ok": true}),
        AuditNote::detail(format!("{user}'s grant")),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    name: String,
    services: Vec<String>,
    /// Days until it expires (default 90, at most 366).
    #[serde(default)]
    days: Option<u32>,
}

/// A CI token for `user`, scoped to services; its secret is shown in this answer only.
pub async fn create_token(
    State(app): State<App>,
    Path(user): Path<String>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> ApiResult<Response> {
    for service in &request.services {
        known_service(&app, service)?;
    }
    let days = i64::from(request.days.unwrap_or(90).clamp(1, 366));
    let owner = user.clone();
    let token = app
        .accounts(move |a| {
            let now = now_ms();
            a.create_token(
                &owner,
                &request.name,
                &request.services,
                now + days * 86_400_000,
                now,
            )
        })
        .await?;
    Ok(noted(
        json!({
            "token": token.plaintext(),
            "owner": token.owner,
            "name": token.name,
            "services": token.services,
            "expires_ms": token.expires_ms,
        }),
        AuditNote::detail(format!(
            "token {}/{} for {}",
            token.owner,
            token.name,
            token.services.join(",")
        )),
    ))
}

pub async fn revoke_token(
    State(app): State<App>,
    Path((user, token)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (owner, name) = (user.clone(), token.clone());
    if !app.accounts(move |a| a.revoke_token(&owner, &name)).await? {
        return Err(ApiError::not_found(format!(
            "`{user}` has no token `{token}`"
        )));
    }
    Ok(noted(
        json!({"ok": true}),
        AuditNote::detail(format!("token {user}/{token}")),
    ))
}
