//! Who is calling and may they: the session cookie or a bearer token, CSRF on state changes,
//! the route's access rule, the client address (X-Forwarded-For only from trusted proxies), and
//! one audit record for every state-changing request that got past authentication.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};
use nonstop_accounts::{Action, Session, TokenIdentity, User};

use crate::error::{ApiError, ErrorMessage};
use crate::routes::{Access, Kind, Route};
use crate::state::{App, AuditRecordOwned};
use crate::streams;

/// The session cookie: `__Host-` pins it to this origin, path `/`, and HTTPS.
pub const SESSION_COOKIE: &str = "__Host-nonstop-session";
/// The header a session's state-changing requests carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The TCP peer of a connection, set by the server for every request it reads.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Who is asking, as the guard established it; handlers read it as an extension.
#[derive(Debug, Clone)]
pub struct Caller {
    /// A user name, `token:OWNER/NAME`, or `anonymous`.
    pub actor: String,
    /// The client address (through trusted proxies), for lockout and the audit log.
    pub peer: String,
    pub who: Who,
}

#[derive(Debug, Clone)]
pub enum Who {
    Anonymous,
    User {
        session: Arc<Session>,
        /// The cookie's token (for logout).
        token: String,
    },
    Token(TokenIdentity),
}

impl Caller {
    pub fn user(&self) -> Option<&User> {
        match &self.who {
            Who::User { session, .. } => Some(&session.user),
            _ => None,
        }
    }
}

/// What a handler adds to the audit record of its request (the guard writes the record).
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// For public routes: who the request claimed to be (a login's user name, an agent).
    pub actor: Option<String>,
    pub service: Option<String>,
    pub node: Option<String>,
    pub detail: String,
}

impl AuditNote {
    pub fn detail(detail: impl Into<String>) -> AuditNote {
        AuditNote {
            detail: detail.into(),
            ..Default::default()
        }
    }
}

/// The client's address: the TCP peer, or the nearest untrusted hop of `X-Forwarded-For` when
/// the peer is a trusted proxy. Returns the address and the proxy it came through.
pub fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> (String, Option<IpAddr>) {
    let Some(peer) = peer else {
        return ("unknown".into(), None);
    };
    let mut ip = peer.ip();
    if !trusted.contains(&ip) {
        return (ip.to_string(), None);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Ok(hop) = hop.parse::<IpAddr>() else {
            break;
        };
        ip = hop;
        if !trusted.contains(&hop) {
            break;
        }
    }
    let via = (ip != peer.ip()).then_some(peer.ip());
    (ip.to_string(), via)
}

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

fn bearer_token(headers: &HeaderMap) -> Option<Result<String, ()>> {
    let value = headers.get(AUTHORIZATION)?;
    let text = value.to_str().map_err(|_| ());
    Some(text.and_then(|t| {
        t.strip_prefix("Bearer ")
            .map(|s| s.trim().to_string())
            .ok_or(())
    }))
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(token: &str, max_age_s: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_s}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that ends the session in the browser.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-nonstop-session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

fn state_changing(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// A refusal in the form the route's kind calls for: pages send people to log in.
fn refuse(kind: Kind, error: ApiError, setup_pending: bool) -> Response {
    match (kind, error.status) {
        (Kind::Page, StatusCode::UNAUTHORIZED) => Redirect::to("/login").into_response(),
        (Kind::Page, StatusCode::FORBIDDEN) if setup_pending => {
            Redirect::to("/setup").into_response()
        }
        _ => error.into_response(),
    }
}

/// The middleware on every route: authenticates, checks CSRF and the route's access rule,
/// hands the handler a `Caller`, and audits what changed state.
pub async fn guard(
    State((app, route)): State<(App, Route)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
    let (client, via) = client_addr(peer, &parts.headers, &app.options.trusted_proxies);
    let audit_peer = match via {
        Some(proxy) => format!("{client} (via {proxy})"),
        None => client.clone(),
    };
    let service = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|params| {
            params
                .iter()
                .find(|(name, _)| *name == "service")
                .map(|(_, v)| v.to_string())
        });
    let changes = state_changing(&parts.method);
    let caller = match authenticate(&app, &route, &parts.headers, &client).await {
        Ok(caller) => caller,
        Err(e) => {
            if changes {
                audit_refused_credential(&app, &route, &client, &audit_peer, service.clone(), &e)
                    .await;
            }
            return refuse(route.kind, e, false);
        }
    };
    let record = |outcome: &str, note: Option<&AuditNote>, detail: String| AuditRecordOwned {
        actor: note
            .and_then(|n| n.actor.clone())
            .unwrap_or_else(|| caller.actor.clone()),
        peer: audit_peer.clone(),
        action: route.name.to_string(),
        service: note
            .and_then(|n| n.service.clone())
            .or_else(|| service.clone()),
        node: note.and_then(|n| n.node.clone()),
        outcome: outcome.to_string(),
        detail,
    };
    if let Err(e) = authorize(
        &app,
        &route,
        &caller,
        &parts.headers,
        changes,
        service.as_deref(),
    )
    .await
    {
        let pending = caller.user().is_some_and(User::setup_pending);
        if changes {
            app.audit(record("denied", None, e.message.clone())).await;
        }
        return refuse(route.kind, e, pending);
    }
    parts.extensions.insert(caller.clone());
    let headers = (!changes).then(|| parts.headers.clone());
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(headers) = headers
        && is_stream(&response)
    {
        let authority = streams::Authority {
            app: app.clone(),
            route,
            headers,
            client: client.clone(),
            service: service.clone(),
        };
        let (head, body) = response.into_parts();
        response = Response::from_parts(head, streams::guarded(body, authority));
    }
    if changes && response.status().is_success() {
        app.changed();
    }
    if changes {
        let note = response.extensions().get::<AuditNote>().cloned();
        let status = response.status();
        let outcome = match status.as_u16() {
            200..=299 => "ok",
            401 | 403 | 429 => "denied",
            400..=499 => "refused",
            _ => "failed",
        };
        let mut detail = note.as_ref().map(|n| n.detail.clone()).unwrap_or_default();
        if let Some(ErrorMessage(message)) = response.extensions().get::<ErrorMessage>() {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(message);
        }
        if !status.is_success() {
            detail = format!("{} {detail}", status.as_u16());
        }
        app.audit(record(outcome, note.as_ref(), detail.trim().to_string()))
            .await;
    }
    response
}

fn is_stream(response: &Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A state-changing request whose credential was refused (expired, revoked, junk): recorded,
/// within the refusal budget, so a flood cannot fill the disk.
async fn audit_refused_credential(
    app: &App,
    route: &Route,
    client: &str,
    audit_peer: &str,
    service: Option<String>,
    error: &ApiError,
) {
    let admitted = match app.refusals.lock() {
        Ok(mut refusals) => refusals.admit(client, std::time::Instant::now()),
        Err(_) => None,
    };
    let Some(left_out) = admitted else {
        return;
    };
    let mut detail = format!("{} {}", error.status.as_u16(), error.message);
    if left_out > 0 {
        detail.push_str(&format!(
            " ({left_out} refusals before this one were not recorded: rate limit)"
        ));
    }
    app.audit(AuditRecordOwned {
        actor: "anonymous".into(),
        peer: audit_peer.to_string(),
        action: route.name.to_string(),
        service,
        node: None,
        outcome: "denied".into(),
        detail,
    })
    .await;
}

/// Establishes the caller from the request's credentials; `Public` routes need none.
pub(crate) async fn authenticate(
    app: &App,
    route: &Route,
    headers: &HeaderMap,
    client: &str,
) -> Result<Caller, ApiError> {
    let anonymous = Caller {
        actor: "anonymous".into(),
        peer: client.to_string(),
        who: Who::Anonymous,
    };
    if route.access == Access::Public {
        // A public route may still know its user (the setup page finishing an account).
        if let Some(token) = session_token(headers)
            && let Ok(Some(session)) = lookup_session(app, token.clone()).await
        {
            return Ok(user_caller(session, token, client));
        }
        return Ok(anonymous);
    }
    if let Some(bearer) = bearer_token(headers) {
        let secret = bearer.map_err(|()| {
            ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`")
        })?;
        let identity = app
            .accounts(move |a| a.token_identity(&secret, nonstop_accounts::now_ms()))
            .await?
            .ok_or_else(|| {
                ApiError::unauthorized("the API token is not valid (unknown, revoked or expired)")
            })?;
        return Ok(Caller {
            actor: format!("token:{}/{}", identity.owner, identity.name),
            peer: client.to_string(),
            who: Who::Token(identity),
        });
    }
    let Some(token) = session_token(headers) else {
        return Err(ApiError::unauthorized(
            "log in first (session cookie) or send `Authorization: Bearer TOKEN`",
        ));
    };
    let session = lookup_session(app, token.clone())
        .await?
        .ok_or_else(|| ApiError::unauthorized("the session is over or unknown; log in again"))?;
    Ok(user_caller(session, token, client))
}

async fn lookup_session(app: &App, token: String) -> Result<Option<Session>, ApiError> {
    // Junk is not worth a database round trip.
    if token.is_empty() || token.len() > 128 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    app.accounts(move |a| a.session_user(&token, nonstop_accounts::now_ms()))
        .await
}

fn user_caller(session: Session, token: String, client: &str) -> Caller {
    Caller {
        actor: session.user.name.clone(),
        peer: client.to_string(),
        who: Who::User {
            session: Arc::new(session),
            token,
        },
    }
}

/// CSRF for sessions, then the route's rule.
pub(crate) async fn authorize(
    app: &App,
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    changes: bool,
    service: Option<&str>,
) -> Result<(), ApiError> {
    if let Who::User { session, .. } = &caller.who
        && changes
        && route.access != Access::Public
    {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if presented.is_empty() || !session.check_csrf(presented) {
            return Err(ApiError::forbidden(
                "missing or wrong CSRF token: send the session's token in the X-CSRF-Token header",
            ));
        }
    }
    match route.access {
        Access::Public => Ok(()),
        Access::Session => match &caller.who {
            Who::User { .. } => Ok(()),
            _ => Err(ApiError::forbidden(
                "this is for a person logged in to the console, not an API token",
            )),
        },
        Access::Signed => match &caller.who {
            Who::User { session, .. } if session.user.setup_pending() => Err(setup_first()),
            _ => Ok(()),
        },
        Access::Service(action) => {
            let service = service.ok_or_else(|| ApiError::internal("route without {service}"))?;
            if may(app, caller, service, action).await? {
                Ok(())
            } else if caller.user().is_some_and(User::setup_pending) {
                Err(setup_first())
            } else {
                Err(ApiError::forbidden(format!(
                    "{} may not {} on `{service}`",
                    caller.actor,
                    action_words(action)
                )))
            }
        }
        Access::Admin(action) => {
            if matches!(caller.who, Who::Token(_)) {
                return Err(ApiError::forbidden(
                    "API tokens cannot manage users or read the audit log",
                ));
            }
            if may(app, caller, "*", action).await? {
                Ok(())
            } else if caller.user().is_some_and(User::setup_pending) {
                Err(setup_first())
            } else {
                Err(ApiError::forbidden(format!(
                    "{} may not {}: that is for admins",
                    caller.actor,
                    action_words(action)
                )))
            }
        }
    }
}

fn setup_first() -> ApiError {
    ApiError::forbidden("finish setting up your account (password and TOTP) first, at /setup")
}

fn action_words(action: Action) -> &'static str {
    match action {
        Action::View => "view",
        Action::Deploy => "deploy",
        Action::Rollback => "roll back",
        Action::Drain => "drain or enable nodes",
        Action::ManageUsers => "manage users, tokens and agents",
        Action::ViewAudit => "read the audit log",
    }
}

/// Whether `caller` may do `action` on `service` (`*` for console-wide actions).
pub async fn may(
    app: &App,
    caller: &Caller,
    service: &str,
    action: Action,
) -> Result<bool, ApiError> {
    let service = service.to_string();
    match &caller.who {
        Who::Anonymous => Ok(false),
        Who::User { session, .. } => {
            let name = session.user.name.clone();
            app.accounts(move |a| a.can(&name, &service, action)).await
        }
        Who::Token(identity) => {
            let identity = identity.clone();
            app.accounts(move |a| a.token_can(&identity, &service, action))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let peer = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 4000));
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]);
        assert_eq!(client_addr(peer("10.0.0.1"), &xff, &[]).0, "10.0.0.1");
        assert_eq!(
            client_addr(peer("10.0.0.1"), &xff, &[proxy]),
            ("203.0.113.9".into(), Some(proxy))
        );
        assert_eq!(client_addr(peer("10.0.0.2"), &xff, &[proxy]).0, "10.0.0.2");
        let junk = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &junk, &[proxy]),
            ("10.0.0.1".into(), None)
        );
        assert_eq!(client_addr(None, &xff, &[proxy]).0, "unknown");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; __Host-nonstop-session=abc ; b=2")]);
        assert_eq!(session_token(&h).as_deref(), Some("abc"));
        assert_eq!(session_token(&headers(&[("cookie", "a=1")])), None);
        let cookie = session_cookie("abc", 60);
        let text = cookie.to_str().unwrap();
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(text.contains(part), "{text}");
        }
    }
}
