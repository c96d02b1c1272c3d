//! Enrolling agents: an admin issues a one-time join token for a named host; the agent spends it
//! at `POST /api/agents/join` with a CSR and gets a client certificate of the console's CA.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use http::header::HOST;
use nonstop_accounts::{AuditFilter, now_ms};
use nonstop_pki::TokenError;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuditNote, Caller};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::App;

/// The largest CSR taken (a real one is about 500 bytes).
const MAX_CSR: usize = 16 * 1024;

fn ca_sha256(app: &App) -> ApiResult<String> {
    nonstop_pki::ca_fingerprint(&app.authority.cert_pem)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The CA fingerprint agents pin, the hosts of the config, and the joins so far.
pub async fn overview(State(app): State<App>) -> ApiResult<Response> {
    let config = app.drivers.load()?;
    let hosts: Vec<_> = config
        .hosts
        .iter()
        .map(|(name, host)| json!({"name": name, "agent": host.agent.get_ref()}))
        .collect();
    let joins = app
        .accounts(|a| {
            Ok(a.audit_log(&AuditFilter {
                limit: 5000,
                ..Default::default()
            })?
            .into_iter()
            .filter(|r| r.action == "agent-join" || r.action == "join-token-issue")
            .take(50)
            .collect::<Vec<_>>())
        })
        .await?;
    Ok(axum::Json(json!({
        "ca_sha256": ca_sha256(&app)?,
        "hosts": hosts,
        "events": joins,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The agent's name (its certificate's name; `[hosts]` key in the config).
    name: String,
    /// Hours until the token expires (default 24, at most 168).
    #[serde(default)]
    hours: Option<u32>,
}

/// A one-time join token for agent `name`, with the command that uses it.
pub async fn issue_token(
    State(app): State<App>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<IssueRequest>,
) -> ApiResult<Response> {
    nonstop_pki::check_agent_name(&request.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hours = i64::from(request.hours.unwrap_or(24).clamp(1, 168));
    let expires_ms = now_ms() + hours * 3_600_000;
    let token = {
        let tokens = app
            .join_tokens
            .lock()
            .map_err(|_| ApiError::internal("the join token store is unusable after a crash"))?;
        tokens
            .issue(&request.name, expires_ms)
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let fingerprint = ca_sha256(&app)?;
    let listen = app.options.listen;
    let authority = if listen.ip().is_unspecified() {
        headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("CONSOLE-HOST:PORT")
            .to_string()
    } else {
        listen.to_string()
    };
    let command = format!(
        "nonstop agent join https://{authority} --token {token} --ca-sha256 {fingerprint} --name {} --state /var/lib/nonstop-agent",
        request.name
    );
    let mut response = axum::Json(json!({
        "name": request.name,
        "token": token,
        "expires_ms": expires_ms,
        "ca_sha256": fingerprint,
        "command": command,
    }))
    .into_response();
    response.extensions_mut().insert(AuditNote::detail(format!(
        "for agent {} ({hours} h)",
        request.name
    )));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    name: String,
    token: String,
    csr_pem: String,
}

/// An agent enrols: the token is spent (once), its name must be the token's, and the CSR's
/// public key gets a certificate for that name only.
pub async fn join(
    State(app): State<App>,
    Extension(_caller): Extension<Caller>,
    ApiJson(request): ApiJson<JoinRequest>,
) -> Response {
    let note = AuditNote {
        actor: Some(format!(
            "agent:{}",
            request.name.chars().take(63).collect::<String>()
        )),
        ..Default::default()
    };
    let mut response = match enrol(&app, request) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(note);
    response
}

fn enrol(app: &App, request: JoinRequest) -> ApiResult<Response> {
    if request.csr_pem.len() > MAX_CSR {
        return Err(ApiError::bad_request("the CSR is too large"));
    }
    let agent = {
        let tokens = app
            .join_tokens
            .lock()
            .map_err(|_| ApiError::internal("the join token store is unusable after a crash"))?;
        tokens
            .redeem(request.token.trim(), now_ms())
            .map_err(|e| match e {
                TokenError::Invalid => ApiError::forbidden(e.to_string()),
                TokenError::Store(_) => ApiError::internal(e.to_string()),
            })?
    };
    if agent != request.name {
        return Err(ApiError::forbidden(format!(
            "the join token was issued for agent `{agent}`, not `{}`; it is spent now, ask for a new one",
            request.name
        )));
    }
    let cert_pem = app
        .authority
        .sign_agent(&request.csr_pem, &agent)
        .map_err(|e| ApiError::bad_request(format!("cannot sign the CSR: {e}")))?;
    Ok(axum::Json(json!({
        "cert_pem": cert_pem,
        "ca_pem": app.authority.cert_pem,
    }))
    .into_response())
}
