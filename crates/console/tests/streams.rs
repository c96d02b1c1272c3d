//! Live streams end with their authority: a real SSE stream (a node's live log, a running
//! job's events) held open across a revoked grant, a logout, a deleted user and a revoked token
//! must end within the re-check bound, while an untouched viewer's stream stays open.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Login, Setup, TestConsole, bearer, ends_within};

/// The console re-checks every 2 s; changes made through it are noticed at once. The bound
/// leaves room for a loaded machine.
const BOUND: Duration = Duration::from_secs(5);

const LOG: &str = "/api/services/shop/nodes/blue/log";

async fn open(
    console: &TestConsole,
    path: &str,
    headers: &[(&str, String)],
) -> hyper::body::Incoming {
    let response = console.client.open_stream(path, headers).await;
    assert_eq!(response.status(), 200, "{path}");
    response.into_body()
}

/// A stream that must stay open: nothing ended it within the bound.
async fn still_open(body: &mut hyper::body::Incoming, what: &str) {
    assert!(
        ends_within(body, BOUND).await.is_err(),
        "{what}: the stream ended though its authority holds"
    );
}

async fn ended(body: &mut hyper::body::Incoming, what: &str) {
    match ends_within(body, BOUND).await {
        Ok(after) => eprintln!("{what}: the stream ended {after:?} after"),
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn post(console: &TestConsole, path: &str, login: &Login) {
    let r = console
        .client
        .post_json(path, &json!({}), &login.headers())
        .await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_streams_end_at_revoke_logout_delete_and_token_revoke() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let vera = console.user(&admin, "vera", "viewer").await;
    let walt = console.user(&admin, "walt", "viewer").await;
    let dora = console.user(&admin, "dora", "viewer").await;
    let bystander = console.user(&admin, "bea", "viewer").await;
    let token = console.token(&admin, "walt", "ci").await;

    let mut watched = open(&console, LOG, &bystander.cookie_only()).await;

    // A revoked grant.
    let mut stream = open(&console, LOG, &vera.cookie_only()).await;
    let r = console
        .client
        .request(
            "DELETE",
            "/api/users/vera/grants/shop",
            &admin.headers(),
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    ended(&mut stream, "vera's grant revoked").await;
    let r = console.client.get(LOG, &vera.cookie_only()).await;
    assert_eq!(r.status, 403, "and a new stream is refused: {}", r.text());

    // A logout.
    let mut stream = open(&console, LOG, &walt.cookie_only()).await;
    post(&console, "/api/logout", &walt).await;
    ended(&mut stream, "walt logged out").await;

    // A revoked API token.
    let mut stream = open(&console, LOG, &bearer(&token)).await;
    let r = console
        .client
        .request(
            "DELETE",
            "/api/users/walt/tokens/ci",
            &admin.headers(),
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    ended(&mut stream, "walt's token revoked").await;

    // A deleted user.
    let mut stream = open(&console, LOG, &dora.cookie_only()).await;
    let r = console
        .client
        .request("DELETE", "/api/users/dora", &admin.headers(), None, vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    ended(&mut stream, "dora deleted").await;

    // All of that left the bystander's stream alone.
    still_open(&mut watched, "bea, whose authority holds").await;
}

/// A service whose instance never becomes healthy, so its deploy job runs for a while.
const SLOW_SERVICE: &str = r#"
[services.shop]
strategy = "rolling"
balancer = { kind = "command", enable = ["true"], drain = ["true"], disable = ["true"], status = ["echo", "blue up 0"] }
runtime = { kind = "process", start = ["sleep", "120"] }
releases = { dir = "{dir}/releases" }
health = { path = "/health", interval = "200ms", deadline = "60s" }

[[services.shop.nodes]]
name = "blue"
port = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_event_stream_ends_when_the_grant_is_revoked() {
    let console = TestConsole::start(Setup {
        config: Some(SLOW_SERVICE.to_string()),
        ..Setup::default()
    })
    .await;
    let _instances = support::Instances(console.config());
    let admin = console.admin().await;
    let vera = console.user(&admin, "vera", "viewer").await;
    std::fs::write(console.drop_dir().join("app.bin"), b"never healthy").unwrap();
    let r = console
        .client
        .post_json(
            "/api/services/shop/deploy",
            &json!({"artifact": "app.bin", "version": "v1"}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["job"].as_u64().unwrap();
    let events = format!("/api/services/shop/jobs/{job}/events");
    let mut stream = open(&console, &events, &vera.cookie_only()).await;
    let mut admins = open(&console, &events, &admin.cookie_only()).await;
    let r = console
        .client
        .request(
            "DELETE",
            "/api/users/vera/grants/shop",
            &admin.headers(),
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    ended(&mut stream, "vera's grant revoked during the job").await;
    still_open(&mut admins, "the admin's view of the running job").await;
}
