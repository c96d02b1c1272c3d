//! The route table: every page and API route with its method, path and access rule, in ONE list
//! that builds the router and that the security tests enumerate, so no route can skip the guard.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::header::{self, HeaderValue};
use nonstop_accounts::Action;

use crate::error::ApiError;
use crate::state::App;
use crate::{
    account, admin, agents, artifacts, auth, deploys, logs, maintenance, pages, pauses, services,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Delete => MethodFilter::DELETE,
        }
    }

    /// Whether requests with this method change something (and so need CSRF and an audit record).
    pub fn changes_state(self) -> bool {
        self != Method::Get
    }
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials: assets, the login and setup forms, and routes gated by their own secret
    /// (login, the one-time bootstrap secret, an agent's join token).
    Public,
    /// Any logged-in person, also one still finishing their setup (me, logout, own password
    /// and TOTP); not API tokens.
    Session,
    /// A person who finished setup, or an API token.
    Signed,
    /// Whoever may do the action on the route's `{service}`.
    Service(Action),
    /// A console-wide action (users, tokens, agents, audit): admins, never API tokens.
    Admin(Action),
}

/// What a refusal looks like: pages redirect to the login, the API answers JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Page,
    Api,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub kind: Kind,
    /// The action's name in the audit log.
    pub name: &'static str,
    /// Takes an artifact upload (the body limit is the upload limit, not the default 2 MiB).
    pub upload: bool,
}

use Access::{Admin, Public, Session, Signed};
use Kind::{Api, Page};
use Method::{Delete, Get, Post};

type Entry = (Route, MethodRouter<App>);

fn entry<H, T>(
    method: Method,
    path: &'static str,
    access: Access,
    kind: Kind,
    name: &'static str,
    handler: H,
) -> Entry
where
    H: Handler<T, App>,
    T: 'static,
{
    (
        Route {
            method,
            path,
            access,
            kind,
            name,
            upload: false,
        },
        on(method.filter(), handler),
    )
}

fn service(action: Action) -> Access {
    Access::Service(action)
}

/// THE table, one row per route (kept one line per row on purpose).
#[rustfmt::skip]
fn table() -> Vec<Entry> {
    use Action::{Deploy, Drain, ManageUsers, Rollback, View, ViewAudit};
    let mut upload = entry(
        Post,
        "/api/services/{service}/deploy",
        service(Deploy),
        Api,
        "deploy",
        deploys::deploy,
    );
    upload.0.upload = true;
    vec![
        // Pages: one HTML shell; the script renders the page the path names.
        entry(Get, "/", Signed, Page, "page", pages::shell),
        entry(Get, "/login", Public, Page, "page", pages::shell),
        entry(Get, "/setup", Public, Page, "page", pages::shell),
        entry(Get, "/services/{service}", service(View), Page, "page", pages::shell),
        entry(Get, "/services/{service}/deploys/{deploy}", service(View), Page, "page", pages::shell),
        entry(Get, "/services/{service}/nodes/{node}/log", service(View), Page, "page", pages::shell),
        entry(Get, "/audit", Admin(ViewAudit), Page, "page", pages::shell),
        entry(Get, "/users", Admin(ManageUsers), Page, "page", pages::shell),
        entry(Get, "/agents", Admin(ManageUsers), Page, "page", pages::shell),
        entry(Get, "/assets/app.js", Public, Api, "asset", pages::script),
        entry(Get, "/assets/canary.js", Public, Api, "asset", pages::canary_script),
        entry(Get, "/assets/app.css", Public, Api, "asset", pages::style),
        // Sign-in and one's own account.
        entry(Post, "/api/login", Public, Api, "login", account::login),
        entry(Post, "/api/setup", Public, Api, "setup", account::setup),
        entry(Get, "/api/me", Session, Api, "me", account::me),
        entry(Post, "/api/logout", Session, Api, "logout", account::logout),
        entry(Post, "/api/account/password", Session, Api, "password-change", account::password),
        entry(Post, "/api/account/totp/begin", Session, Api, "totp-begin", account::totp_begin),
        entry(Post, "/api/account/totp/confirm", Session, Api, "totp-confirm", account::totp_confirm),
        // Services.
        entry(Get, "/api/services", Signed, Api, "services", services::list),
        entry(Get, "/api/artifacts", Signed, Api, "artifacts", artifacts::offered),
        entry(Get, "/api/services/{service}", service(View), Api, "service", services::one),
        upload,
        entry(Post, "/api/services/{service}/rollback", service(Rollback), Api, "rollback", deploys::rollback),
        entry(Post, "/api/services/{service}/promote", service(Deploy), Api, "promote", pauses::promote),
        entry(Post, "/api/services/{service}/abort", service(Deploy), Api, "abort", pauses::abort),
        entry(Get, "/api/services/{service}/canary", service(View), Api, "canary", pauses::canary),
        entry(Post, "/api/services/{service}/nodes/{node}/drain", service(Drain), Api, "drain", services::drain),
        entry(Post, "/api/services/{service}/nodes/{node}/enable", service(Drain), Api, "enable", services::enable),
        entry(Post, "/api/services/{service}/maintenance", service(Drain), Api, "maintenance", maintenance::switch),
        entry(Get, "/api/services/{service}/nodes/{node}/log", service(View), Api, "log", logs::follow),
        entry(Get, "/api/services/{service}/deploys", service(View), Api, "history", services::history),
        entry(Get, "/api/services/{service}/deploys/{deploy}", service(View), Api, "journal", services::journal),
        entry(Get, "/api/services/{service}/jobs/{job}", service(View), Api, "job", deploys::job),
        entry(Get, "/api/services/{service}/jobs/{job}/events", service(View), Api, "job-events", deploys::events),
        // Audit.
        entry(Get, "/api/audit", Admin(ViewAudit), Api, "audit", admin::audit),
        entry(Get, "/api/audit/export.csv", Admin(ViewAudit), Api, "audit-export", admin::audit_csv),
        entry(Get, "/api/audit/export.json", Admin(ViewAudit), Api, "audit-export", admin::audit_json),
        // Users, roles, tokens.
        entry(Get, "/api/users", Admin(ManageUsers), Api, "users", admin::users),
        entry(Post, "/api/users", Admin(ManageUsers), Api, "user-create", admin::create_user),
        entry(Delete, "/api/users/{user}", Admin(ManageUsers), Api, "user-delete", admin::delete_user),
        entry(Post, "/api/users/{user}/role", Admin(ManageUsers), Api, "user-role", admin::set_role),
        entry(Post, "/api/users/{user}/grants", Admin(ManageUsers), Api, "grant", admin::grant),
        entry(Delete, "/api/users/{user}/grants/{service}", Admin(ManageUsers), Api, "grant-revoke", admin::revoke_grant),
        entry(Post, "/api/users/{user}/tokens", Admin(ManageUsers), Api, "token-create", admin::create_token),
        entry(Delete, "/api/users/{user}/tokens/{token}", Admin(ManageUsers), Api, "token-revoke", admin::revoke_token),
        // Agents.
        entry(Get, "/api/agents", Admin(ManageUsers), Api, "agents", agents::overview),
        entry(Post, "/api/agents/tokens", Admin(ManageUsers), Api, "join-token-issue", agents::issue_token),
        entry(Post, "/api/agents/join", Public, Api, "agent-join", agents::join),
    ]
}

/// Every route of the console, for documentation and the security tests.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The router: each route behind the guard with its own rule, security headers on everything.
pub fn router(app: App) -> Router {
    let mut router = Router::new();
    for (route, handler) in table() {
        let mut handler = handler.route_layer(middleware::from_fn_with_state(
            (app.clone(), route),
            auth::guard,
        ));
        if route.upload {
            handler = handler.layer(DefaultBodyLimit::max(app.options.upload_limit));
        }
        router = router.route(route.path, handler);
    }
    router
        .fallback(not_found)
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such page or API route")
}

/// No framing, no sniffing, no referrer, scripts and styles only from the console itself, and
/// nothing cached that a shared machine could show the next person.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut http::HeaderMap, name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000",
    );
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}

/// A response that is fine as it is (for handlers that return nothing more).
pub fn ok_json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}
