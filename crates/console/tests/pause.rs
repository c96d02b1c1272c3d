//! A paused canary through the console's API with a CI token: the canary's steps and numbers
//! as JSON while it waits, abort and promote (audited), and a viewer refused — the real proxy
//! and sample app as processes, testkit's keep-alive client giving the canary its traffic.

mod support;

use std::time::Duration;

use nonstop_testkit::client::{LoadOptions, StickyLoad};
use serde_json::{Value, json};
use support::{Instances, Setup, TestConsole, bearer, proxy_url, start_proxy};

async fn deploy(
    console: &TestConsole,
    ci: &[(&str, String)],
    version: &str,
    strategy: &str,
) -> u64 {
    let r = console
        .client
        .post_json(
            "/api/services/shop/deploy",
            &json!({"artifact": "hello.jar", "version": version, "strategy": strategy}),
            ci,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["job"].as_u64().unwrap()
}

async fn paused(console: &TestConsole, ci: &[(&str, String)]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = console.client.get("/api/services/shop/canary", ci).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let view = r.json();
        if view["paused"].is_object() {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the canary never paused: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_canary_is_aborted_and_promoted_with_a_ci_token() {
    let console = TestConsole::start(Setup::default()).await;
    let _proxy = start_proxy(&console.config()).await;
    let _instances = Instances(console.config());
    let admin = console.admin().await;
    let ci = bearer(&console.token(&admin, "admin", "ci").await);
    std::fs::write(console.drop_dir().join("hello.jar"), b"release").unwrap();

    let job = deploy(&console, &ci, "v1", "blue-green").await;
    assert!(
        console.job_end(&ci, job).await["message"]
            .as_str()
            .unwrap()
            .starts_with("succeeded")
    );
    let load = StickyLoad::start(&proxy_url(&console.config()), 4, LoadOptions::keep_alive());

    // v2 pauses after its first window; the API shows the steps and that window's numbers.
    let job = deploy(&console, &ci, "v2", "canary").await;
    let view = paused(&console, &ci).await;
    let steps = view["canary"]["steps"].as_array().unwrap();
    let states: Vec<&str> = steps.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["passed", "waiting", "pending"], "{view:#}");
    assert_eq!(steps[0]["share"], 30);
    assert!(
        steps[0]["canary"]["requests"].as_u64().unwrap() > 0,
        "{view:#}"
    );
    assert!(
        steps[0]["stable"]["requests"].as_u64().unwrap() > 0,
        "{view:#}"
    );
    let r = console
        .client
        .post_json("/api/services/shop/abort", &json!({}), &ci)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let end = console.job_end(&ci, job).await;
    assert!(
        end["message"].as_str().unwrap().starts_with("rolled-back"),
        "{end}"
    );

    // v3 is promoted at its pause and goes through its last step.
    let job = deploy(&console, &ci, "v3", "canary").await;
    paused(&console, &ci).await;
    let r = console
        .client
        .post_json("/api/services/shop/promote", &json!({}), &ci)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again = console
        .client
        .post_json("/api/services/shop/promote", &json!({}), &ci)
        .await;
    assert_eq!(
        again.status,
        409,
        "nothing waits any more: {}",
        again.text()
    );
    let end = console.job_end(&ci, job).await;
    assert!(
        end["message"].as_str().unwrap().starts_with("succeeded"),
        "{end}"
    );
    let report = load.stop().await;
    eprintln!(
        "canary aborted, then promoted, through the API: {} requests, {} failed",
        report.sent(),
        report.failures().len()
    );
    assert!(
        report.failures().is_empty(),
        "{:?}",
        &report.failures()[..1]
    );

    let r = console.client.get("/api/audit", &admin.headers()).await;
    let audit = r.text();
    for action in ["\"promote\"", "\"abort\""] {
        assert!(audit.contains(action), "{action} audited: {audit}");
    }
}
