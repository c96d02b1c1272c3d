//! Paused deploys end to end on the real proxy and sample app: a canary pause promoted and a
//! pause aborted from another `nonstop` process, and a `--pause-before-switch` deploy whose
//! process is SIGKILLed while it waits, then resumed by `nonstop promote` — 0 failed requests
//! for a client that never resends.

mod support;

use std::time::Duration;

use support::*;

const STEPS: &str = "canary = { steps = [{ weight = 20, for = \"1s\" }, { pause = true }, { weight = 50, for = \"1s\" }] }";

async fn wait_paused(shop: &Shop) -> serde_json::Value {
    let mut paused = serde_json::Value::Null;
    wait_until(
        "the deploy waits at its pause",
        Duration::from_secs(60),
        || {
            let status = shop.status();
            paused = status["paused"].clone();
            async move { status["paused"].is_object() }
        },
    )
    .await;
    paused
}

fn report_none_failed(what: &str, report: &LoadCounts) {
    eprintln!("{what}: {} requests, {} failed", report.sent, report.failed);
    assert_eq!(
        report.failed,
        0,
        "{what}: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_pause_is_promoted_from_another_process() {
    let shop = Shop::start("canary", &["blue", "green"], STEPS);
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let mut deploy = shop.spawn_deploy("2", &[]);
    let paused = wait_paused(&shop).await;
    assert!(
        paused["why"].as_str().unwrap().contains("canary pause"),
        "{paused}"
    );
    // While it waits, the canary keeps its 20 %: both releases answer.
    assert_eq!(
        shop.versions_now(40).await,
        ["1".to_string(), "2".to_string()].into()
    );
    let out = shop.run(&["promote", "shop"]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("goes on"), "{}", text(&out));
    assert!(deploy.wait_exit(Duration::from_secs(60)).success());
    let report = load.stop().await;
    report_none_failed("canary pause promoted", &report);
    assert_eq!(shop.versions_now(10).await, ["2".to_string()].into());
    let steps = shop.run(&["history", "shop", "--deploy", "2"]);
    assert!(
        text(&steps).contains("promoted by"),
        "the journal says who promoted: {}",
        text(&steps)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_pause_is_aborted_from_another_process() {
    let shop = Shop::start("canary", &["blue", "green"], STEPS);
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let mut deploy = shop.spawn_deploy("2", &[]);
    wait_paused(&shop).await;
    assert_exit(&shop.run(&["abort", "shop"]), 0);
    let status = deploy.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "an aborted deploy is rolled back");
    let report = load.stop().await;
    report_none_failed("canary pause aborted", &report);
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
    assert_eq!(shop.history()[0]["outcome"], "rolled-back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_killed_while_paused_before_the_switch_is_resumed_by_promote() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let plan = shop.deploy("2", &["--pause-before-switch", "--plan"]);
    assert!(
        text(&plan).contains("pause (before the switch"),
        "{}",
        text(&plan)
    );
    let mut deploy = shop.spawn_deploy("2", &["--pause-before-switch"]);
    wait_paused(&shop).await;
    // Up and healthy for testers, no user request on it yet.
    assert_eq!(shop.versions_now(20).await, ["1".to_string()].into());
    deploy.signal("KILL");
    deploy.wait_exit(DEADLINE);

    let status = shop.status();
    assert_eq!(status["paused"]["holder_alive"], false, "{status}");
    let refused = shop.deploy("3", &[]);
    assert_exit(&refused, 3);
    assert!(text(&refused).contains("is paused"), "{}", text(&refused));

    let out = shop.run(&["promote", "shop"]);
    assert_exit(&out, 0);
    let report = load.stop().await;
    report_none_failed("killed while paused, resumed by promote", &report);
    assert_eq!(shop.versions_now(10).await, ["2".to_string()].into());
    assert_eq!(shop.history()[0]["outcome"], "succeeded");
    assert!(shop.status()["paused"].is_null());
}
