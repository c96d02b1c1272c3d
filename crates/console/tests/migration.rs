//! A rollback past a database migration that cannot be undone, from the console's API: refused
//! with the reason, then forced with `force_past_migration` — and the audit log says it was forced.

mod support;

use serde_json::{Value, json};
use support::{Instances, Setup, TestConsole, bearer, binaries, start_proxy, write_config};

async fn finished(console: &TestConsole, ci: &[(&str, String)], job: u64) -> String {
    let end = console.job_end(ci, job).await;
    end["message"].as_str().unwrap().to_string()
}

async fn job(console: &TestConsole, ci: &[(&str, String)], path: &str, body: Value) -> u64 {
    let r = console.client.post_json(path, &body, ci).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["job"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_past_a_migration_is_refused_then_forced_and_audited() {
    // The default service, with a migration that cannot be undone (it only has to succeed).
    let paths = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(write_config(paths.path(), &binaries().1)).unwrap();
    let text = text
        .replace(&paths.path().display().to_string(), "{dir}")
        .replace(
            "verify = \"300ms\"",
            "verify = \"300ms\"\nmigrate = { run = [\"true\"], reversible = false }",
        );
    let console = TestConsole::start(Setup {
        config: Some(text),
        ..Setup::default()
    })
    .await;
    let _proxy = start_proxy(&console.config()).await;
    let _instances = Instances(console.config());
    let admin = console.admin().await;
    let ci = bearer(&console.token(&admin, "admin", "ci").await);
    std::fs::write(console.drop_dir().join("shop.jar"), b"release").unwrap();
    for version in ["v1", "v2"] {
        let body = json!({"artifact": "shop.jar", "version": version});
        let id = job(&console, &ci, "/api/services/shop/deploy", body).await;
        let end = finished(&console, &ci, id).await;
        assert!(end.starts_with("succeeded"), "{version}: {end}");
    }

    let id = job(&console, &ci, "/api/services/shop/rollback", json!({})).await;
    let end = finished(&console, &ci, id).await;
    assert!(end.starts_with("refused"), "{end}");
    assert!(end.contains("cannot be undone"), "{end}");

    let forced = json!({"force_past_migration": true});
    let id = job(&console, &ci, "/api/services/shop/rollback", forced).await;
    let end = finished(&console, &ci, id).await;
    assert!(end.starts_with("succeeded"), "{end}");
    let status = console.client.get("/api/services/shop", &ci).await.json();
    assert_eq!(status["current"], "v1", "{status}");

    let audit = console
        .client
        .get("/api/audit", &admin.headers())
        .await
        .text();
    assert!(
        audit.contains("forced past a migration that cannot be undone"),
        "{audit}"
    );
}
