//! Canary analysis with a real Prometheus scraping the built-in proxy's `/metrics` every second:
//! a failing query aborts, a passing one promotes, an unreachable Prometheus is inconclusive.

mod support;

use nonstop_testkit::prometheus::Prometheus;
use support::*;

/// The canary's share of 5xx answers over the last 3 s, from the proxy's own counters.
const ERROR_RATE: &str = r#"sum(rate(nonstop_responses_total{pool="{service}",backend=~"{canary}",class="5xx"}[3s])) / sum(rate(nonstop_responses_total{pool="{service}",backend=~"{canary}"}[3s]))"#;

/// One 20 % step for 6 s judged by Prometheus alone: `max_error_rate = 1.0` makes the proxy's
/// own counters pass any release, so an abort can only come from the query.
fn canary(prometheus_url: &str) -> String {
    format!(
        "canary = {{ weight = 20, window = \"6s\", max_error_rate = 1.0, prometheus = {{ url = \"{prometheus_url}\", timeout = \"3s\" }}, analysis = [{{ name = \"error-rate\", query = '{ERROR_RATE}', success = \"result < 0.05\", interval = \"1s\", count = 3 }}] }}"
    )
}

/// A shop whose proxy serves `/metrics` on its own port, and a Prometheus scraping it.
async fn shop_with_prometheus(pool: &str, extra: &str) -> (Shop, Prometheus) {
    let metrics = nonstop_testkit::free_port();
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{metrics}")]).await;
    let shop = Shop::start_full(
        "canary",
        &["blue", "green"],
        &format!("metrics = \"127.0.0.1:{metrics}\""),
        pool,
        &format!("{}\n{extra}", canary(&prometheus.url())),
    );
    (shop, prometheus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_query_aborts_the_canary() {
    // The health gate checks /version; clients hit /health, which the bad release fails.
    // Passive ejection is off, so the canary serves (and fails) its whole share of the window.
    let (shop, prometheus) = shop_with_prometheus(
        "eject = { consecutive_failures = 0 }",
        "health = { path = \"/version\", interval = \"50ms\", deadline = \"10s\" }",
    )
    .await;
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/health"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    prometheus
        .wait_for_series(
            "nonstop_responses_total{pool=\"shop\",class=\"2xx\"} > 0",
            DEADLINE,
        )
        .await;
    let before = load.sent();
    let out = shop.deploy("2", &["--env", "HELLO_FAIL_HEALTH=true"]);
    assert_exit(&out, 2);
    let output = text(&out);
    assert!(output.contains("prometheus error-rate:"), "{output}");
    assert!(
        output.contains("measurements failed `result < 0.05`"),
        "{output}"
    );
    let report = load.stop().await;
    let during = report.sent - before;
    // The canary's 20 % of the requests sent while the deploy ran, with room for the weighted
    // round-robin's granularity.
    let bound = during / 5 + during / 10 + 5;
    eprintln!(
        "Prometheus-judged canary, bad release: {} failed of {during} requests during the deploy (bound {bound}); verdict: {}",
        report.failed,
        verdict_line(&output)
    );
    assert!(report.failed > 0, "the canary's errors were real");
    assert!(report.failed <= bound, "{} > {bound}", report.failed);
    assert_eq!(shop.versions_now(20).await, ["1".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_query_promotes() {
    let (shop, prometheus) = shop_with_prometheus("", "").await;
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    prometheus
        .wait_for_series("nonstop_responses_total{pool=\"shop\"} > 0", DEADLINE)
        .await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    let output = text(&out);
    assert!(output.contains("prometheus error-rate: "), "{output}");
    assert!(
        output.contains("0 failed `result < 0.05` (failure_limit 0)"),
        "{output}"
    );
    let report = load.stop().await;
    eprintln!(
        "Prometheus-judged canary, good release: {} requests, {} failed; verdict: {}",
        report.sent,
        report.failed,
        verdict_line(&output)
    );
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert_eq!(shop.versions_now(10).await, ["2".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_is_inconclusive_never_a_pass() {
    // Nothing listens on a port that was free a moment ago.
    let nowhere = format!("http://127.0.0.1:{}", nonstop_testkit::free_port());
    let shop = Shop::start("canary", &["blue", "green"], &canary(&nowhere));
    assert_exit(&shop.deploy("1", &[]), 0);
    let artifact = shop.artifact("2");
    let plan = shop.run(&[
        "deploy",
        "shop",
        artifact.to_str().unwrap(),
        "--version",
        "2",
        "--plan",
    ]);
    assert_exit(&plan, 0);
    assert!(
        text(&plan).contains("also asks prometheus error-rate"),
        "{}",
        text(&plan)
    );
    let load = Load::start(shop.proxy.url("/"), 2, 10_000_000);
    load.wait_for_requests(50).await;
    // Inconclusive is nobody's verdict: the deploy pauses for a person; here they abort.
    let mut deploy = shop.spawn_deploy("2", &[]);
    let mut why = String::new();
    wait_until(
        "the deploy pauses on the inconclusive window",
        std::time::Duration::from_secs(60),
        || {
            let paused = shop.status()["paused"].clone();
            why = paused["why"].as_str().unwrap_or("").to_string();
            async move { paused.is_object() }
        },
    )
    .await;
    eprintln!("unreachable Prometheus: paused, why: {why}");
    assert!(
        why.contains("prometheus error-rate: inconclusive, no measurement"),
        "{why}"
    );
    assert_exit(&shop.run(&["abort", "shop"]), 0);
    let status = deploy.wait_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "aborted: rolled back");
    let report = load.stop().await;
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
}

/// The first output line naming the Prometheus analysis.
fn verdict_line(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.contains("prometheus error-rate"))
        .unwrap_or("(none)")
}
