//! Multi-step canaries on the built-in proxy, end to end: each step is a plan step judged on
//! its own window; a good release goes through every step, a bad one is aborted at the first
//! analysis with its client-visible failures bounded by that step's weight.

mod support;

use support::*;

const STEPS: &str = "canary = { steps = [{ weight = 10, for = \"1s\" }, { weight = 30, for = \"1s\" }, { weight = 60, for = \"1s\" }] }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_goes_through_every_step() {
    let shop = Shop::start("canary", &["blue", "green"], STEPS);
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    let output = text(&out);
    for share in ["takes 10%", "takes 30%", "takes 60%"] {
        assert!(output.contains(share), "{share}: {output}");
    }
    assert_eq!(output.matches("passed: canary:").count(), 3, "{output}");
    let report = load.stop().await;
    eprintln!(
        "3-step canary, good release: {} requests, {} failed",
        report.sent, report.failed
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
async fn a_bad_release_is_aborted_at_the_first_analysis() {
    let shop = Shop::start("canary", &["blue", "green"], STEPS);
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let before = load.sent();
    // Release 2 starts, passes its health gate, then fails half of its `GET /`.
    let out = shop.deploy("2", &["--env", "HELLO_ERROR_RATE=0.5"]);
    assert_exit(&out, 2);
    let output = text(&out);
    assert!(
        output.contains("takes 10%") && !output.contains("takes 30%"),
        "{output}"
    );
    assert!(output.contains("error rate"), "{output}");
    let report = load.stop().await;
    let during = report.sent - before;
    // The bound: the canary's 10 % of the requests sent while the deploy ran (its window is most
    // of it) × its 50 % error share, +10 % and 5 for the weighted round-robin's granularity.
    let bound = (during as f64 * 0.1 * 0.5 * 1.1).ceil() as u64 + 5;
    eprintln!(
        "3-step canary, bad release (50 % errors): {} failed of {during} requests during the deploy (bound {bound}); verdict: {}",
        report.failed,
        output
            .lines()
            .find(|l| l.contains("error rate"))
            .unwrap_or("")
            .trim()
    );
    assert!(report.failed > 0, "the canary's errors were real");
    assert!(report.failed <= bound, "{} > {bound}", report.failed);
    assert_eq!(shop.versions_now(20).await, ["1".to_string()].into());
}
