//! Deploy webhooks end to end: the real `nonstop` binary, proxy and sample app, a receiver in
//! the test. Every event of deploys and a rollback is verified by its HMAC; a receiver that is
//! down or slow delays the command's end by at most the stated bound; secrets appear nowhere.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nonstop_notify::sign;
use nonstop_testkit::receiver::Receiver;
use support::*;

const TOKEN: &str = "tok-7f3a9c1e5b";
const KEY: &str = "whsec-2d8e4b6a0c91";

/// What `Shop` would add after `extra`, written before the `[[services.shop.notify]]` tables.
const SERVICE: &str = "health = { path = \"/health\", expect_body = \"UP\", interval = \"50ms\", deadline = \"10s\", successes = 2 }\nverify = \"300ms\"\nkeep_warm = \"0s\"\n";

fn secret_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every file under `dir` but the secret files themselves, as bytes.
fn every_file(dir: &Path, skip: &[&Path], out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if skip.contains(&path.as_path()) {
            continue;
        }
        if path.is_dir() {
            every_file(&path, skip, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_deploys_and_a_rollback_is_signed_and_secrets_stay_secret() {
    let receiver = Receiver::start(200, Duration::ZERO).await;
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secret_file(
        secrets.path(),
        "hook.url",
        &format!("{}\n", receiver.url(&format!("/hooks/{TOKEN}"))),
    );
    let key_file = secret_file(secrets.path(), "hook.key", &format!("{KEY}\n"));
    // Fails the health gate of version `bad` only: a deploy that rolls back.
    let extra = format!(
        "{SERVICE}hooks = {{ before_traffic = {{ run = [\"sh\", \"-c\", \"test \\\"$NONSTOP_VERSION\\\" != bad\"], timeout = \"5s\" }} }}\n\
         [[services.shop.notify]]\nurl_file = \"{}\"\nsecret_file = \"{}\"\n",
        url_file.display(),
        key_file.display()
    );
    let shop = Shop::start("blue-green", &["blue", "green"], &extra);
    let mut outputs = Vec::new();
    for (args, code) in [(vec!["1"], 0), (vec!["2"], 0), (vec!["bad"], 2)] {
        let out = shop.deploy(args[0], &["--json"]);
        assert_exit(&out, code);
        outputs.push(text(&out));
    }
    let out = shop.run(&["rollback", "shop", "--json"]);
    assert_exit(&out, 0);
    outputs.push(text(&out));
    let expected = [
        ("deploy", "1", "started"),
        ("deploy", "1", "succeeded"),
        ("deploy", "2", "started"),
        ("deploy", "2", "succeeded"),
        ("deploy", "bad", "started"),
        ("deploy", "bad", "rolled-back"),
        ("rollback", "1", "started"),
        ("rollback", "1", "succeeded"),
    ];
    wait_until("every delivery arrived", DEADLINE, || async {
        receiver.received().len() >= expected.len()
    })
    .await;
    let received = receiver.received();
    assert_eq!(
        received.len(),
        expected.len(),
        "no duplicates: {received:?}"
    );
    for (got, (kind, version, event)) in received.iter().zip(expected) {
        assert_eq!(got.path, format!("/hooks/{TOKEN}"));
        let header = got.header(sign::HEADER).expect("signed");
        sign::verify(KEY.as_bytes(), header, &got.body, now(), 300)
            .unwrap_or_else(|e| panic!("{event} of {version}: {e}"));
        assert_eq!(
            sign::verify(b"another key", header, &got.body, now(), 300),
            Err(sign::VerifyError::Mismatch)
        );
        assert_eq!(got.header("x-nonstop-event"), Some(event));
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["event"], event, "{body}");
        assert_eq!(body["kind"], kind, "{body}");
        assert_eq!(body["version"], version, "{body}");
        assert_eq!(body["service"], "shop");
        assert_eq!(body["strategy"], "blue-green");
        assert!(
            body["who"].as_str().is_some_and(|w| !w.is_empty()),
            "{body}"
        );
        if event == "started" {
            assert_eq!(body["outcome"], "running");
        } else {
            assert!(body["duration_ms"].as_u64().is_some(), "{body}");
        }
        if event == "rolled-back" {
            assert!(
                body["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("before_traffic")),
                "{body}"
            );
            assert_eq!(body["from_version"], "2");
            println!("a rolled-back body: {}", String::from_utf8_lossy(&got.body));
        }
    }
    println!(
        "verified the HMAC of {} deliveries (3 deploys, 1 rolled back, 1 rollback)",
        received.len()
    );

    // The URL's token and the key: not in the store, journal, logs, history or any output.
    let history = shop.run(&["history", "shop", "--json", "--limit", "100"]);
    outputs.push(text(&history));
    let status = shop.run(&["status", "shop", "--json"]);
    outputs.push(text(&status));
    outputs.push(shop.proxy.log_text());
    let mut files = Vec::new();
    every_file(shop.proxy.dir.path(), &[], &mut files);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("nonstop.db")),
        "the store is searched"
    );
    for secret in [TOKEN, KEY] {
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, secret),
                "{secret} found in {}",
                path.display()
            );
        }
        for out in &outputs {
            assert!(!out.contains(secret), "{secret} found in output: {out}");
        }
    }
    println!(
        "secrets absent from {} files (store, journal, logs, releases) and {} outputs",
        files.len(),
        outputs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_slow_receiver_delays_the_end_by_at_most_the_bound() {
    let slow = Receiver::start(200, Duration::from_secs(30)).await;
    let down = free_port();
    // A third webhook whose file is missing is skipped with a warning, never a refusal.
    let extra = format!(
        "{SERVICE}[[services.shop.notify]]\nurl = \"{}\"\n\n[[services.shop.notify]]\nurl = \"http://127.0.0.1:{down}/hook\"\nformat = \"slack\"\n\n[[services.shop.notify]]\nurl_file = \"missing.url\"\n",
        slow.url("/slow"),
    );
    let shop = Shop::start("blue-green", &["blue", "green"], &extra);
    let started = Instant::now();
    let out = shop.deploy("1", &["--json"]);
    let exited_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let total = started.elapsed();
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .and_then(|e| e["at_ms"].as_i64())
            .unwrap_or_else(|| panic!("a {kind} event: {stdout}"))
    };
    let (begin_ms, done_ms) = (at("begin"), at("done"));
    let after_done = Duration::from_millis((exited_ms - done_ms).max(0) as u64);
    println!(
        "deploy with a slow (30 s) and a down receiver: {:.2}s in all, {:.2}s from begin to done, {:.2}s between its end and the command's exit (bound {}s)",
        total.as_secs_f64(),
        (done_ms - begin_ms) as f64 / 1000.0,
        after_done.as_secs_f64(),
        nonstop_notify::FINISH_BOUND.as_secs()
    );
    let missing = shop.proxy.dir.path().join("missing.url");
    assert!(
        events.iter().any(|e| {
            e["kind"] == "warn"
                && e["message"].as_str().is_some_and(|m| {
                    m.contains(&*missing.to_string_lossy()) && m.contains("not sent")
                })
        }),
        "the missing url_file is named in a warning: {stdout}"
    );
    assert!(
        after_done <= nonstop_notify::FINISH_BOUND + Duration::from_millis(1500),
        "waited {after_done:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("notify: gave up after 5s").count(),
        1,
        "one line says the rest was given up: {stderr}"
    );
    assert!(!slow.received().is_empty(), "the slow receiver was reached");
    // Reading the service never needs its webhooks' files.
    assert_exit(&shop.run(&["status", "shop"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_is_verified_against_the_webhooks_ca_file() {
    let tls = nonstop_testkit::receiver::TestTls::new();
    let receiver = Receiver::start_tls(200, Duration::ZERO, &tls).await;
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secret_file(
        secrets.path(),
        "hook.url",
        &receiver.url(&format!("/hooks/{TOKEN}")),
    );
    let key_file = secret_file(secrets.path(), "hook.key", KEY);
    let ca_file = secret_file(secrets.path(), "ca.pem", &tls.ca_pem);
    let extra = format!(
        "{SERVICE}[[services.shop.notify]]\nurl_file = \"{}\"\nsecret_file = \"{}\"\nca_file = \"{}\"\nformat = \"slack\"\n",
        url_file.display(),
        key_file.display(),
        ca_file.display()
    );
    let shop = Shop::start("blue-green", &["blue", "green"], &extra);
    let out = shop.deploy("1", &[]);
    assert_exit(&out, 0);
    assert!(!text(&out).contains("notify:"), "{}", text(&out));
    let received = receiver.received();
    assert_eq!(received.len(), 2, "{received:?}");
    for (got, event) in received.iter().zip(["started", "succeeded"]) {
        let header = got.header(sign::HEADER).expect("signed");
        sign::verify(KEY.as_bytes(), header, &got.body, now(), 300).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        let line = body["text"].as_str().unwrap_or_default();
        assert!(line.contains(&format!("(blue-green) {event}")), "{body}");
    }
    println!(
        "https: {} Slack-format deliveries verified over TLS: {}",
        received.len(),
        String::from_utf8_lossy(&received[1].body)
    );
}

/// A deploy held by `--pause-before-switch` tells its webhooks `paused` (signed, with where it
/// waits), and `succeeded` once `nonstop promote` lets it go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deploy_is_told_then_its_promotion() {
    let receiver = Receiver::start(200, Duration::ZERO).await;
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secret_file(secrets.path(), "hook.key", &format!("{KEY}\n"));
    let extra = format!(
        "{SERVICE}[[services.shop.notify]]\nurl = \"{}\"\nsecret_file = \"{}\"\nevents = [\"paused\", \"succeeded\"]\n",
        receiver.url("/paused"),
        key_file.display()
    );
    let shop = Shop::start("blue-green", &["blue", "green"], &extra);
    assert_exit(&shop.deploy("1", &[]), 0);
    wait_until("v1's succeeded", DEADLINE, || async {
        !receiver.received().is_empty()
    })
    .await;
    let mut held = shop.spawn_deploy("2", &["--pause-before-switch"]);
    wait_until("the paused delivery", DEADLINE, || async {
        receiver.received().len() >= 2
    })
    .await;
    let paused = &receiver.received()[1];
    sign::verify(
        KEY.as_bytes(),
        paused.header(sign::HEADER).expect("signed"),
        &paused.body,
        now(),
        300,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&paused.body).unwrap();
    assert_eq!(body["event"], "paused", "{body}");
    assert_eq!(body["version"], "2", "{body}");
    assert_eq!(body["outcome"], "running", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("promote")),
        "the body says how it goes on: {body}"
    );
    println!("a paused body: {}", String::from_utf8_lossy(&paused.body));
    assert_exit(&shop.run(&["promote", "shop"]), 0);
    let status = held.child.wait().unwrap();
    assert!(status.success(), "the promoted deploy ended {status:?}");
    wait_until("the promoted deploy's succeeded", DEADLINE, || async {
        receiver.received().len() >= 3
    })
    .await;
    let events: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("x-nonstop-event").unwrap_or_default().to_string())
        .collect();
    assert_eq!(events, ["succeeded", "paused", "succeeded"]);
}
