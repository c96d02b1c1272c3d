//! The service page's maintenance switch through the console's API: a deployer turns it on
//! (the real proxy answers 503 + Retry-After), the status shows it, a viewer may not, and
//! every switch is in the audit log.

mod support;

use nonstop_testkit::client::raw_get;
use serde_json::json;
use support::{Setup, TestConsole, start_proxy};

/// The proxy's `listen` port, read from the config the console serves.
fn proxy_port(config: &std::path::Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_switches_maintenance_and_it_is_audited() {
    let console = TestConsole::start(Setup::default()).await;
    let _proxy = start_proxy(&console.config()).await;
    let port = proxy_port(&console.config());
    let admin = console.admin().await;
    let deployer = console.user(&admin, "dora", "deployer").await;
    let viewer = console.user(&admin, "vic", "viewer").await;

    let r = console
        .client
        .post_json(
            "/api/services/shop/maintenance",
            &json!({ "on": true }),
            &viewer.headers(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());

    let r = console
        .client
        .post_json(
            "/api/services/shop/maintenance",
            &json!({ "on": true, "message": "Back at 10:00", "allow": ["10.9.0.0/16"], "retry_after_s": 15 }),
            &deployer.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = raw_get("127.0.0.1", port, "").await;
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.to_ascii_lowercase().contains("retry-after: 15"),
        "{page}"
    );
    assert!(page.contains("Back at 10:00"), "{page}");
    let s = console
        .client
        .get("/api/services/shop", &viewer.headers())
        .await
        .json();
    assert_eq!(s["maintenance"]["allow"], json!(["10.9.0.0/16"]), "{s:#}");

    let r = console
        .client
        .post_json(
            "/api/services/shop/maintenance",
            &json!({ "on": true, "allow": ["not-a-network"] }),
            &deployer.headers(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    let r = console
        .client
        .post_json(
            "/api/services/shop/maintenance",
            &json!({ "on": false }),
            &deployer.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = console
        .client
        .get("/api/services/shop", &viewer.headers())
        .await
        .json();
    assert!(s["maintenance"].is_null(), "{s:#}");
    assert!(!raw_get("127.0.0.1", port, "").await.contains("maintenance"));

    let records = console
        .client
        .get("/api/audit?service=shop", &admin.headers())
        .await
        .json()["records"]
        .as_array()
        .unwrap()
        .clone();
    let has = |actor: &str, outcome: &str, detail: &str| {
        records.iter().any(|r| {
            r["action"] == "maintenance"
                && r["actor"] == actor
                && r["outcome"] == outcome
                && r["detail"].as_str().unwrap_or("").contains(detail)
        })
    };
    assert!(
        has("dora", "ok", "maintenance on, allowing 10.9.0.0/16"),
        "{records:#?}"
    );
    assert!(has("dora", "ok", "maintenance off"), "{records:#?}");
    assert!(
        has("dora", "refused", "400"),
        "the refused switch is audited: {records:#?}"
    );
}
