//! Signing in and one's own account: login (password + TOTP, with the accounts' lockout), the
//! first run's one-time secret, logout, changing one's password and enrolling TOTP.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{RETRY_AFTER, SET_COOKIE};
use http::{HeaderValue, StatusCode};
use nonstop_accounts::{BOOTSTRAP_ADMIN, LoginOutcome, LoginStart, User, now_ms};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuditNote, Caller, Who, clear_cookie, session_cookie};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::App;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    user: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// Required unless the account must set a new password (first run, one-time secret).
    #[serde(default)]
    current: Option<String>,
    /// Required with `current` once the account has TOTP.
    #[serde(default)]
    totp: Option<String>,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    code: String,
}

/// A claimed user name as it may appear in the audit log: short, printable.
fn claimed(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn with_note(mut response: Response, note: AuditNote) -> Response {
    response.extensions_mut().insert(note);
    response
}

/// Password + TOTP code; sets the session cookie and answers with the CSRF token.
pub async fn login(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Response {
    let note = AuditNote {
        actor: Some(claimed(&request.user)),
        ..Default::default()
    };
    let LoginRequest {
        user,
        password,
        totp,
    } = request;
    let outcome = check_login(&app, user, password, totp, caller.peer.clone()).await;
    let response = match outcome {
        Ok(LoginOutcome::Ok(user)) => start_session(&app, user, &caller.peer).await,
        Ok(LoginOutcome::WrongCredentials) => Err(ApiError::unauthorized(
            "wrong user name, password or TOTP code",
        )),
        Ok(LoginOutcome::TotpRequired) => Ok((
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({
                "error": "enter the 6-digit code from your authenticator app",
                "totp_required": true,
            })),
        )
            .into_response()),
        Ok(LoginOutcome::Locked { until_ms }) => Ok(locked(until_ms)),
        Err(e) => Err(e),
    };
    with_note(response.unwrap_or_else(IntoResponse::into_response), note)
}

/// Password (and TOTP code) of `name` from `peer`, through the lockout. The store is locked to
/// read the account and to write the outcome, not while Argon2 runs on a blocking thread.
pub async fn check_login(
    app: &App,
    name: String,
    password: String,
    totp: Option<String>,
    peer: String,
) -> ApiResult<LoginOutcome> {
    let now = now_ms();
    let start = app
        .accounts(move |a| a.begin_login(&name, &peer, now))
        .await?;
    let pending = match start {
        LoginStart::Locked { until_ms } => return Ok(LoginOutcome::Locked { until_ms }),
        LoginStart::Pending(pending) => pending,
    };
    let (pending, matched) = tokio::task::spawn_blocking(move || {
        let matched = pending.password_matches(&password);
        (pending, matched)
    })
    .await
    .map_err(|e| ApiError::internal(format!("password check: {e}")))?;
    app.accounts(move |a| {
        let code = totp.as_deref().map(str::trim).filter(|c| !c.is_empty());
        a.finish_login(pending, matched, code, now_ms())
    })
    .await
}

fn locked(until_ms: i64) -> Response {
    let seconds = ((until_ms - now_ms()).max(0) + 999) / 1000;
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed logins from this address; try again in {seconds} s"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// A new session for `user`: the cookie, and the CSRF token for the page's script.
async fn start_session(app: &App, user: User, peer: &str) -> ApiResult<Response> {
    let (name, peer) = (user.name.clone(), peer.to_string());
    let (session, lifetime_ms) = app
        .accounts(move |a| {
            let session = a.create_session(&name, &peer, now_ms())?;
            Ok((session, a.policy().session_lifetime_ms))
        })
        .await?;
    let mut response = axum::Json(json!({
        "user": user.name,
        "role": user.role,
        "setup_pending": user.setup_pending(),
        "must_change_password": user.must_change_password,
        "must_enrol_totp": user.must_enrol_totp,
        "csrf": session.csrf,
    }))
    .into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        session_cookie(session.token(), lifetime_ms / 1000),
    );
    Ok(response)
}

/// First run: the one-time secret printed at start-up logs in as the admin, who then has to
/// set a password and enrol TOTP (the session is good for nothing else until then).
pub async fn setup(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<SetupRequest>,
) -> Response {
    let note = AuditNote {
        actor: Some(BOOTSTRAP_ADMIN.to_string()),
        ..AuditNote::detail("one-time secret")
    };
    // Once the secret is spent the route is gone: nothing is checked or counted against admin.
    if !app.accounts(|a| a.setup_open()).await.unwrap_or(false) {
        return with_note(
            ApiError::new(
                StatusCode::GONE,
                "the console is already set up: log in at /login",
            )
            .into_response(),
            note,
        );
    }
    let secret = request.secret.trim().to_string();
    let outcome = check_login(
        &app,
        BOOTSTRAP_ADMIN.to_string(),
        secret,
        None,
        caller.peer.clone(),
    )
    .await;
    let response = match outcome {
        Ok(LoginOutcome::Ok(user)) if user.setup_pending() => {
            start_session(&app, user, &caller.peer).await
        }
        Ok(LoginOutcome::Locked { until_ms }) => Ok(locked(until_ms)),
        Ok(LoginOutcome::Ok(_)) | Ok(LoginOutcome::TotpRequired) => Err(ApiError::bad_request(
            "the console is already set up: log in at /login",
        )),
        Ok(LoginOutcome::WrongCredentials) => Err(ApiError::unauthorized(
            "that is not the one-time secret (it is printed when the console starts without users; restart the console for a new one)",
        )),
        Err(e) => Err(e),
    };
    with_note(response.unwrap_or_else(IntoResponse::into_response), note)
}

fn session_user(caller: &Caller) -> ApiResult<User> {
    caller
        .user()
        .cloned()
        .ok_or_else(|| ApiError::forbidden("this is for a person logged in to the console"))
}

/// Who is logged in, their role and grants, and the CSRF token for the page's script.
pub async fn me(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let Who::User { session, .. } = &caller.who else {
        return Err(ApiError::forbidden("no session"));
    };
    let user = session.user.clone();
    let name = user.name.clone();
    let grants = app.accounts(move |a| a.grants(&name)).await?;
    let grants: Vec<_> = grants
        .into_iter()
        .map(|(service, role)| json!({"service": service, "role": role}))
        .collect();
    Ok(axum::Json(json!({
        "user": user.name,
        "role": user.role,
        "setup_pending": user.setup_pending(),
        "must_change_password": user.must_change_password,
        "must_enrol_totp": user.must_enrol_totp,
        "grants": grants,
        "csrf": session.csrf,
        "expires_ms": session.expires_ms,
    }))
    .into_response())
}

pub async fn logout(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let Who::User { token, .. } = &caller.who else {
        return Err(ApiError::forbidden("no session"));
    };
    let token = token.clone();
    app.accounts(move |a| a.revoke_session(&token)).await?;
    let mut response = axum::Json(json!({"ok": true})).into_response();
    response.headers_mut().insert(SET_COOKIE, clear_cookie());
    Ok(response)
}

/// Sets a new password: with the current one and a TOTP code (through the login lockout), or
/// without when the account must change it; every other session of the account ends.
pub async fn password(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<PasswordRequest>,
) -> ApiResult<Response> {
    let user = session_user(&caller)?;
    let Who::User { token, .. } = &caller.who else {
        return Err(ApiError::forbidden("no session"));
    };
    if !user.must_change_password {
        let current = request.current.clone().unwrap_or_default();
        let outcome = check_login(
            &app,
            user.name.clone(),
            current,
            request.totp.clone(),
            caller.peer.clone(),
        )
        .await?;
        match outcome {
            LoginOutcome::Ok(_) => {}
            LoginOutcome::Locked { until_ms } => return Ok(locked(until_ms)),
            LoginOutcome::TotpRequired => {
                return Err(ApiError::bad_request(
                    "enter the 6-digit code from your authenticator app with the current password",
                ));
            }
            LoginOutcome::WrongCredentials => {
                return Err(ApiError::forbidden(
                    "the current password or the TOTP code is wrong",
                ));
            }
        }
    }
    let (name, keep) = (user.name.clone(), token.clone());
    let ended = app
        .accounts(move |a| {
            a.set_password(&name, &request.password)?;
            a.revoke_other_sessions(&name, &keep)
        })
        .await?;
    let mut response = axum::Json(json!({"ok": true, "sessions_ended": ended})).into_response();
    response
        .extensions_mut()
        .insert(AuditNote::detail(format!("{ended} other sessions ended")));
    Ok(response)
}

/// Starts TOTP enrolment for an account that has none yet: the secret and its QR code.
pub async fn totp_begin(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let user = session_user(&caller)?;
    if !user.must_enrol_totp {
        return Err(ApiError::bad_request(
            "TOTP is already set up for this account; an admin can reset the account if the device is lost",
        ));
    }
    if user.must_change_password {
        return Err(ApiError::bad_request("set a password first"));
    }
    let name = user.name.clone();
    let enrolment = app.accounts(move |a| a.begin_totp_enrolment(&name)).await?;
    Ok(axum::Json(json!({
        "secret": enrolment.secret_base32,
        "otpauth_url": enrolment.otpauth_url,
        "qr_svg_base64": enrolment.qr_svg_base64,
    }))
    .into_response())
}

/// Confirms TOTP enrolment with a code from the app; the account is then complete, and its
/// session is replaced by a new one (new cookie, new CSRF token) so that a session id seen
/// during the setup is worth nothing after it.
pub async fn totp_confirm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<CodeRequest>,
) -> ApiResult<Response> {
    let user = session_user(&caller)?;
    let Who::User { token, .. } = &caller.who else {
        return Err(ApiError::forbidden("no session"));
    };
    let (name, old) = (user.name.clone(), token.clone());
    app.accounts(move |a| {
        a.confirm_totp(&name, request.code.trim(), now_ms())?;
        a.revoke_session(&old)
    })
    .await?;
    let user = app
        .accounts({
            let name = user.name.clone();
            move |a| {
                a.user(&name)?
                    .ok_or_else(|| nonstop_accounts::AccountsError::NoSuchUser(name))
            }
        })
        .await?;
    start_session(&app, user, &caller.peer).await
}
