//! Targeted preview and maintenance mode end to end with the real `nonstop` binary and the
//! built-in proxy: a tester's header reaches the new slot before the switch (customers and
//! `never` stay on the old one), and `nonstop maintenance on|off` under load.

mod support;

use std::time::Duration;

use nonstop_testkit::client::raw_get;
use support::*;

/// A before_traffic hook that holds a deploy of a second release until the test creates `go`.
fn held_before_switch(go: &std::path::Path) -> String {
    format!(
        "preview = {{}}\nhooks = {{ before_traffic = {{ run = [\"sh\", \"-c\", \"[ -z \\\"$NONSTOP_OLD_VERSION\\\" ] || while [ ! -e {} ]; do sleep 0.05; done\"], timeout = \"60s\" }} }}",
        go.display()
    )
}

async fn version_with(shop: &Shop, headers: &[(&str, &str)]) -> String {
    let reply = send(&client(), "GET", &shop.proxy.url("/"), headers, "")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.version().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reaches_the_new_slot_before_the_switch_and_never_stays_stable() {
    let go = tempfile::tempdir().unwrap();
    let go = go.path().join("go");
    let shop = Shop::start("blue-green", &["blue", "green"], &held_before_switch(&go));
    assert_exit(&shop.deploy("1", &[]), 0);
    let plan = text(&shop.run(&[
        "deploy",
        "shop",
        shop.artifact("2").to_str().unwrap(),
        "--version",
        "2",
        "--plan",
    ]));
    assert!(
        plan.contains("targeted preview: requests that ask for it reach green"),
        "{plan}"
    );
    assert!(plan.contains("clear the targeted preview"), "{plan}");

    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(100).await;
    let mut deploy = shop.spawn_deploy("2", &[]);
    let always = [("X-Nonstop-Canary", "always")];
    let took = wait_until(
        "the preview reaches release 2",
        Duration::from_secs(30),
        || async { version_with(&shop, &always).await == "2" },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(version_with(&shop, &always).await, "2");
        assert_eq!(
            version_with(&shop, &[("cookie", "nonstop-canary=always")]).await,
            "2"
        );
        assert_eq!(
            version_with(&shop, &[("X-Nonstop-Canary", "never")]).await,
            "1"
        );
        assert_eq!(
            version_with(&shop, &[]).await,
            "1",
            "customers stay on 1 before the switch"
        );
    }
    let before_switch = load.stop().await;
    assert_eq!(
        before_switch.failed,
        0,
        "{:?}",
        &before_switch.failures[..before_switch.failures.len().min(3)]
    );
    assert_eq!(
        before_switch.by_version.keys().collect::<Vec<_>>(),
        ["1"],
        "no customer request reached 2 before the switch"
    );
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    std::fs::write(&go, "").unwrap();
    let status = deploy.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "the deploy failed");
    load.wait_for_requests(200).await;
    let after = load.stop().await;
    eprintln!(
        "preview: reached release 2 {took:?} after the deploy began; before the switch {} customer requests all on 1, {} failed; across the switch {} sent, {} failed",
        before_switch.sent, before_switch.failed, after.sent, after.failed
    );
    assert_eq!(
        after.failed,
        0,
        "{:?}",
        &after.failures[..after.failures.len().min(3)]
    );
    assert_eq!(shop.versions_now(10).await, ["2".to_string()].into());
    let pool = shop.proxy.admin.pool("shop").await.unwrap();
    assert_eq!(
        pool.preview, None,
        "the deploy cleared its preview after the switch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_on_and_off_from_the_cli_under_load() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(200).await;
    let on = shop.run(&[
        "maintenance",
        "on",
        "shop",
        "--message",
        "Database upgrade until 10:00",
        "--allow",
        "127.0.0.2",
        "--retry-after",
        "20",
    ]);
    assert_exit(&on, 0);
    assert!(
        text(&on).contains("for all but 127.0.0.2/32"),
        "{}",
        text(&on)
    );
    load.wait_for_requests(500).await;
    let outsider = raw_get("127.0.0.1", shop.proxy.port, "").await;
    assert!(outsider.starts_with("HTTP/1.1 503"), "{outsider}");
    assert!(
        outsider.to_ascii_lowercase().contains("retry-after: 20"),
        "{outsider}"
    );
    assert!(
        outsider.contains("Database upgrade until 10:00"),
        "{outsider}"
    );
    for _ in 0..10 {
        let insider = raw_get("127.0.0.2", shop.proxy.port, "").await;
        assert!(insider.starts_with("HTTP/1.1 200"), "{insider}");
    }
    let status = text(&shop.run(&["status", "shop"]));
    assert!(
        status.contains("MAINTENANCE ON: 503 (Retry-After: 20s) for all but 127.0.0.2/32"),
        "{status}"
    );
    assert_eq!(shop.status()["maintenance"]["retry_after_s"], 20);
    let during = load.stop().await;
    let refused = during
        .failures
        .iter()
        .filter(|f| f.starts_with("503"))
        .count() as u64;

    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    assert_exit(&shop.run(&["maintenance", "off", "shop"]), 0);
    let off_at = load.sent();
    load.wait_for_requests(500).await;
    let after = load.stop().await;
    let after_off = after.failures.len();
    eprintln!(
        "cli maintenance: {} sent during, {refused} got 503, {} other failures; off: {} sent ({} of them after the off returned), {after_off} failed before the off took effect",
        during.sent,
        during.failed - refused,
        after.sent,
        after.sent - off_at
    );
    assert_eq!(
        during.failed,
        refused,
        "{:?}",
        &during.failures[..during.failures.len().min(3)]
    );
    assert!(refused >= 300, "{refused}");
    assert!(
        after.failures.iter().all(|f| f.starts_with("503")),
        "while maintenance went off, only its 503s may fail: {:?}",
        &after.failures[..after.failures.len().min(3)]
    );
    assert!(shop.status()["maintenance"].is_null());
    let clean = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    clean.wait_for_requests(300).await;
    let clean = clean.stop().await;
    assert_eq!(
        clean.failed,
        0,
        "after off: {:?}",
        &clean.failures[..clean.failures.len().min(3)]
    );
}
