//! Deploy engine end to end: real `nonstop proxy`, real `nonstop deploy` processes and the sample
//! app, under a continuous request stream through the proxy. Zero failed requests is the bar.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::*;

fn node_versions(status: &serde_json::Value) -> Vec<(String, Option<String>, String)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["version"].as_str().map(str::to_string),
                n["process"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_blue_green_deploys_under_load_fail_nothing() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    for v in 2..=21 {
        let version = v.to_string();
        let out = shop.deploy(&version, &[]);
        assert_exit(&out, 0);
        // After the switch every answer comes from the new release, and the old one is gone.
        let seen = shop.versions_now(20).await;
        assert_eq!(seen, [version.clone()].into(), "after deploy {v}");
        let status = shop.status();
        assert_eq!(status["current"], version.as_str());
        let running: Vec<_> = node_versions(&status)
            .into_iter()
            .filter(|(_, _, p)| p == "running")
            .collect();
        assert_eq!(running.len(), 1, "only the new slot runs: {status}");
        assert_eq!(running[0].1.as_deref(), Some(version.as_str()));
    }
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert!(report.ok > 100, "{report:?}");
    assert!(report.by_version.len() >= 10, "{:?}", report.by_version);
    let history = shop.history();
    assert_eq!(history.as_array().unwrap().len(), 21);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["outcome"] == "succeeded")
    );
    // keep = 3 old releases besides the running and previous one.
    let releases = std::fs::read_dir(shop.base.join("releases"))
        .unwrap()
        .count();
    assert!(
        releases <= 5,
        "pruned to keep + current + previous: {releases}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_fails_nothing() {
    let shop = Shop::start("rolling", &["n1", "n2", "n3"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    let seen = shop.versions_now(30).await;
    assert_eq!(seen, ["2".to_string()].into());
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert!(report.by_version.contains_key("1") && report.by_version.contains_key("2"));
    for (node, version, process) in node_versions(&shop.status()) {
        assert_eq!(version.as_deref(), Some("2"), "{node}");
        assert_eq!(process, "running", "{node}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let order: Vec<usize> = ["start n1", "start n2", "start n3"]
        .iter()
        .map(|s| stdout.find(s).unwrap_or_else(|| panic!("{s} in {stdout}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "one node at a time");
}

/// An operator's switch script: its verbs run `nonstop lb` against the proxy, as a script for
/// an L4 switch would run that switch's CLI.
fn switch_script(dir: &std::path::Path) -> PathBuf {
    let script = dir.join("switch.sh");
    write(
        &script,
        &format!(
            r#"#!/bin/sh
set -eu
here=$(dirname "$0")
lb() {{ "{nonstop}" lb --admin "unix:$(cat "$here/socket")" "$@"; }}
case "$1" in
  status) lb pools | awk '$1 != "pool" && $1 != "BACKEND" {{ print $1, $4, $6 }}' ;;
  register) lb pools | awk '{{ print $1 }}' | grep -qx "$2" || {{ lb add shop "$2" "$3" && lb disable "shop/$2"; }} >/dev/null ;;
  enable|drain|disable) lb "$1" "shop/$2" >/dev/null ;;
  *) echo "unknown verb $1" >&2; exit 2 ;;
esac
"#,
            nonstop = nonstop_bin().display()
        ),
    );
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_through_command_hooks_fails_nothing() {
    let hooks = tempfile::tempdir().unwrap();
    let script = switch_script(hooks.path());
    let s = script.display();
    let balancer = format!(
        r#"balancer = {{ kind = "command", enable = ["{s}", "enable", "{{node}}"], drain = ["{s}", "drain", "{{node}}"], disable = ["{s}", "disable", "{{node}}"], status = ["{s}", "status"], register = ["{s}", "register", "{{node}}", "{{addr}}"] }}"#
    );
    let shop = Shop::start("rolling", &["n1", "n2"], &balancer);
    write(
        &hooks.path().join("socket"),
        &shop
            .proxy
            .dir
            .path()
            .join("admin.sock")
            .display()
            .to_string(),
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
    let report = load.stop().await;
    eprintln!(
        "command hooks rolling 1 -> 2: sent {} failed {} by version {:?}",
        report.sent, report.failed, report.by_version
    );
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert!(report.by_version.contains_key("1") && report.by_version.contains_key("2"));

    // A hook that fails stops the deploy with the hook's own words; the old release serves on.
    write(&hooks.path().join("socket"), "/nonexistent/admin.sock");
    let out = shop.deploy("3", &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("switch.sh"), "{}", text(&out));
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
}

/// An operator's service script: starts the app detached with a pid file per node, as an init
/// script or a supervisor's CLI would.
fn service_script(dir: &std::path::Path) -> PathBuf {
    let script = dir.join("app.sh");
    write(
        &script,
        &format!(
            r#"#!/bin/sh
set -eu
pid="$(dirname "$0")/$2.pid"
case "$1" in
  start)
    [ "$4" = "broken" ] && {{ echo "config error: cannot start $4" >&2; exit 3; }}
    cd "$(dirname "$0")"
    setsid "{hello}" --port "$3" --version "$4" --node "$2" </dev/null >/dev/null 2>&1 &
    echo $! > "$pid" ;;
  stop) [ -f "$pid" ] && kill "$(cat "$pid")" && rm -f "$pid" || true ;;
  status) p=$(cat "$pid" 2>/dev/null) && [ -r "/proc/$p/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" ;;
esac
"#,
            hello = hello_bin().display()
        ),
    );
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_through_command_runtime_hooks_fails_nothing() {
    let hooks = tempfile::tempdir().unwrap();
    let script = service_script(hooks.path());
    let s = script.display();
    let runtime = format!(
        r#"runtime = {{ kind = "command", start = ["{s}", "start", "{{node}}", "{{port}}", "{{version}}"], stop = ["{s}", "stop", "{{node}}"], status = ["{s}", "status", "{{node}}"], timeout = "10s" }}"#
    );
    let shop = Shop::start("rolling", &["n1", "n2"], &runtime);
    let _hooked = KillUnder(hooks.path().to_path_buf());
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    assert_exit(&shop.deploy("2", &[]), 0);
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
    let report = load.stop().await;
    eprintln!(
        "command runtime rolling 1 -> 2: sent {} failed {} by version {:?}",
        report.sent, report.failed, report.by_version
    );
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);

    // A start hook that fails: the node gets its old release back, v2 serves on.
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("broken", &[]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("start hook"), "{}", text(&out));
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_is_promoted_under_load() {
    let shop = Shop::start(
        "canary",
        &["blue", "green"],
        "canary = { weight = 20, window = \"1s\" }",
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("canary: blue takes 20%")
            || String::from_utf8_lossy(&out.stdout).contains("canary: green takes 20%"),
        "{}",
        text(&out)
    );
    assert_eq!(shop.versions_now(20).await, ["2".to_string()].into());
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_that_errs_is_aborted_and_rolled_back() {
    // The health gate checks /version; clients hit /health, which the bad release fails.
    let shop = Shop::start(
        "canary",
        &["blue", "green"],
        "canary = { weight = 50, window = \"1s\" }\nhealth = { path = \"/version\", interval = \"50ms\", deadline = \"10s\" }",
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/health"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &["--env", "HELLO_FAIL_HEALTH=true"]);
    assert_exit(&out, 2);
    assert!(text(&out).contains("error rate"), "{}", text(&out));
    let report = load.stop().await;
    assert!(report.failed > 0, "the canary's errors were real");
    assert_eq!(shop.versions_now(20).await, ["1".to_string()].into());
    assert_eq!(shop.status()["current"], "1");
    assert_eq!(shop.running_pids().len(), 1, "the canary was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_that_never_passes_is_rolled_back_without_failures() {
    let shop = Shop::start(
        "blue-green",
        &["blue", "green"],
        "health = { path = \"/health\", interval = \"50ms\", deadline = \"1s\" }",
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &["--env", "HELLO_FAIL_HEALTH=true"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("failed its health gate"),
        "{}",
        text(&out)
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert_eq!(report.by_version.keys().collect::<Vec<_>>(), ["1"]);
    assert_eq!(shop.status()["current"], "1");
    assert_eq!(shop.running_pids().len(), 1, "the bad release was stopped");
    let history = shop.history();
    assert_eq!(history[0]["outcome"], "rolled-back");
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .contains("health gate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_right_after_health_is_rolled_back() {
    let shop = Shop::start("blue-green", &["blue", "green"], "verify = \"4s\"");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &["--env", "HELLO_CRASH_AFTER=1500ms"]);
    assert_exit(&out, 2);
    assert!(
        text(&out).contains("died after taking traffic"),
        "{}",
        text(&out)
    );
    wait_until("v1 serves again", DEADLINE, || async {
        shop.versions_now(5).await == ["1".to_string()].into()
    })
    .await;
    let report = load.stop().await;
    // The proxy retries requests the dying instance refused or dropped on the old slot, which is
    // still draining during verify: no client sees the crash.
    eprintln!(
        "crash window: {} of {} failed\n{}",
        report.failed,
        report.sent,
        text(&out)
    );
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.by_version.contains_key("2"),
        "v2 served before it died"
    );
    assert_eq!(shop.status()["current"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unreadable_artifact_is_refused_before_any_change() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let before = shop.status();
    let out = shop.run(&["deploy", "shop", "/nonexistent/shop.jar", "--version", "2"]);
    assert_exit(&out, 3);
    assert!(
        text(&out).contains("/nonexistent/shop.jar"),
        "{}",
        text(&out)
    );
    let unreadable = shop.proxy.dir.path().join("artifacts/dir-not-file");
    std::fs::create_dir_all(unreadable.join("sub")).unwrap();
    std::fs::write(unreadable.join("sub/secret"), "x").unwrap();
    let out = Command::new("chmod")
        .args(["000"])
        .arg(unreadable.join("sub/secret"))
        .status()
        .unwrap();
    assert!(out.success());
    // root reads anything: only assert the refusal when the file really is unreadable.
    if std::fs::read(unreadable.join("sub/secret")).is_err() {
        let out = shop.run(&[
            "deploy",
            "shop",
            unreadable.to_str().unwrap(),
            "--version",
            "2",
        ]);
        assert_exit(&out, 3);
    }
    let out = shop.run(&[
        "deploy",
        "shop",
        shop.artifact("2").to_str().unwrap(),
        "--version",
        "../2",
    ]);
    assert_exit(&out, 3);
    let after = shop.status();
    assert_eq!(before["nodes"], after["nodes"]);
    assert_eq!(shop.history().as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_concurrent_deploy_is_refused_naming_the_holder() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let artifact = shop.artifact("2");
    let first = shop
        .command(&[
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            "2",
            "--env",
            "HELLO_START_DELAY=2s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = Proc { child: first };
    wait_until("the first deploy holds the lock", DEADLINE, || async {
        shop.status()["unfinished"]
            .as_str()
            .is_some_and(|s| s.contains("in progress"))
    })
    .await;
    let out = shop.deploy("3", &[]);
    assert_exit(&out, 3);
    let message = text(&out);
    assert!(
        message.contains("locked by deploy #2 started by"),
        "{message}"
    );
    let mut first = first;
    let status = first.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
    assert_eq!(shop.status()["current"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_deploy_is_recovered_by_the_next_command() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let mut deploy = shop.spawn_deploy("2", &["--env", "HELLO_START_DELAY=3s"]);
    shop.wait_for_step(2, "health", DEADLINE).await;
    deploy.signal("KILL");
    deploy.wait_exit(DEADLINE);
    assert!(
        shop.status()["unfinished"]
            .as_str()
            .is_some_and(|s| s.contains("interrupted")),
    );
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
    let out = shop.deploy("3", &[]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("did not finish"), "{}", text(&out));
    let history = shop.history();
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(history[1]["outcome"], "rolled-back");
    assert!(
        history[1]["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    assert_eq!(shop.versions_now(10).await, ["3".to_string()].into());
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert!(!report.by_version.contains_key("2"));
    assert_eq!(shop.running_pids().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_changes_nothing_and_rollback_uses_the_warm_slot() {
    let shop = Shop::start("blue-green", &["blue", "green"], "keep_warm = \"10m\"");
    assert_exit(&shop.deploy("1", &[]), 0);
    let out = shop.deploy("2", &["--plan"]);
    assert_exit(&out, 0);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in [
        "start green 2",
        "health gate green",
        "switch atomically: green active, blue draining",
        "drain blue",
    ] {
        assert!(plan.contains(needle), "{needle} in {plan}");
    }
    assert_eq!(shop.history().as_array().unwrap().len(), 1);
    assert_eq!(shop.versions_now(5).await, ["1".to_string()].into());

    assert_exit(&shop.deploy("2", &[]), 0);
    assert_eq!(shop.running_pids().len(), 2, "v1 is kept warm");
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.run(&["rollback", "shop"]);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("still runs 1 (kept warm)"),
        "{}",
        text(&out)
    );
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    let status = shop.status();
    assert_eq!(status["current"], "1");
    assert_eq!(status["previous"], "2");
    let history = shop.history();
    assert_eq!(history[0]["kind"], "rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_events_status_logs_and_config_errors_for_humans_and_ci() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    let artifact = shop.artifact("1");
    let out = shop.run(&[
        "deploy",
        "shop",
        artifact.to_str().unwrap(),
        "--version",
        "1",
        "--json",
    ]);
    assert_exit(&out, 0);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["begin", "step", "switched", "done"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let last = events.last().unwrap();
    assert_eq!(last["result"], "succeeded");
    assert_eq!(last["report"]["version"], "1");
    assert!(last["report"]["switch_ms"].as_f64().unwrap() < 1000.0);

    let out = shop.run(&["status", "shop"]);
    assert_exit(&out, 0);
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(status.contains("shop: serving 1"), "{status}");
    assert!(
        status.lines().any(|l| l.contains("blue")
            && l.contains("running")
            && l.contains("active")
            && l.contains("up")),
        "{status}"
    );

    let out = shop.run(&["logs", "shop", "blue"]);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listening on 127.0.0.1:"),
        "{}",
        text(&out)
    );

    let config = shop.proxy.config_path();
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("{version}", "{versoin}")).unwrap();
    let out = Command::new(nonstop_bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = text(&out);
    assert!(message.contains("nonstop.toml:10:"), "{message}");
    assert!(
        message.contains("unknown placeholder `{versoin}`"),
        "{message}"
    );
    assert!(message.contains("help: placeholders are"), "{message}");
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 3);
    std::fs::write(&config, original).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_rolls_back_and_a_hangup_is_ignored() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let artifact = shop.artifact("2");
    let mut deploy = Proc {
        child: shop
            .command(&[
                "deploy",
                "shop",
                artifact.to_str().unwrap(),
                "--version",
                "2",
                "--env",
                "HELLO_START_DELAY=3s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    };
    wait_until("the deploy is in its health gate", DEADLINE, || async {
        let out = shop.run(&["history", "shop", "--deploy", "2", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("\"health\"")
    })
    .await;
    // Had SIGHUP its default action, the process would die by it and have no exit code below.
    deploy.signal("HUP");
    deploy.signal("INT");
    let status = deploy.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(2));
    let history = shop.history();
    assert_eq!(history[0]["outcome"], "rolled-back");
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted by a signal"),
        "{history}"
    );
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
    assert_eq!(
        shop.running_pids().len(),
        1,
        "the half-started v2 was stopped"
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    // The lock was released: the next deploy goes through.
    assert_exit(&shop.deploy("3", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rolling_deploy_puts_the_old_release_back_on_the_replaced_node() {
    let shop = Shop::start(
        "rolling",
        &["n1", "n2"],
        "health = { path = \"/health\", interval = \"50ms\", deadline = \"1s\" }",
    );
    assert_exit(&shop.deploy("1", &[]), 0);
    let before: Vec<i32> = shop.running_pids();
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &["--env", "HELLO_FAIL_HEALTH=true"]);
    assert_exit(&out, 2);
    let output = text(&out);
    assert!(
        output.contains("start n1 1 on port"),
        "v1 restarted on n1: {output}"
    );
    assert!(
        !output.contains("start n2 2"),
        "n2 was never touched: {output}"
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert_eq!(report.by_version.keys().collect::<Vec<_>>(), ["1"]);
    for (node, version, process) in node_versions(&shop.status()) {
        assert_eq!(version.as_deref(), Some("1"), "{node}");
        assert_eq!(process, "running", "{node}");
    }
    let after = shop.running_pids();
    assert_eq!(after.len(), 2);
    assert_ne!(before, after, "n1 runs a fresh v1 process");
    assert_eq!(shop.versions_now(20).await, ["1".to_string()].into());
}
