//! Webhooks of deploys run by the console: its engines come from `drivers::open_fleet_engine`,
//! so they are told too, signed; the URL's token and the key stay out of its JSON and files.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nonstop_notify::sign;
use nonstop_testkit::receiver::Receiver;
use serde_json::{Value, json};
use support::{DEADLINE, Instances, Setup, TestConsole, bearer, start_proxy, wait_until};

const TOKEN: &str = "tok-console-5e1d";
const KEY: &str = "whsec-console-90ab";

fn secret_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Starts a job by `POST path` and follows it to its end; its events as text.
async fn job(console: &TestConsole, auth: &[(&str, String)], path: &str, body: Value) -> String {
    let r = console.client.post_json(path, &body, auth).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["job"].as_u64().unwrap();
    let events = console
        .client
        .sse(
            &format!("/api/services/shop/jobs/{job}/events"),
            auth,
            |_, data| data.contains("\"kind\":\"finished\""),
        )
        .await;
    let text: Vec<String> = events.into_iter().map(|(_, data)| data).collect();
    assert!(
        text.last().is_some_and(|l| l.contains("succeeded")),
        "{text:#?}"
    );
    text.join("\n")
}

fn every_file(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            every_file(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_deploys_and_rollbacks_are_told_signed_and_secrets_stay_out_of_its_json() {
    let receiver = Receiver::start(200, Duration::ZERO).await;
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secret_file(
        secrets.path(),
        "hook.url",
        &format!("{}\n", receiver.url(&format!("/hooks/{TOKEN}"))),
    );
    let key_file = secret_file(secrets.path(), "hook.key", KEY);
    let console = TestConsole::start(Setup::default()).await;
    // The console reads its config per request: the webhook is there for the first deploy.
    let mut config = std::fs::read_to_string(console.config()).unwrap();
    config.push_str(&format!(
        "\n[[services.shop.notify]]\nurl_file = \"{}\"\nsecret_file = \"{}\"\n",
        url_file.display(),
        key_file.display()
    ));
    std::fs::write(console.config(), config).unwrap();
    let _proxy = start_proxy(&console.config()).await;
    let _instances = Instances(console.config());
    let admin = console.admin().await;
    let ci = bearer(&console.token(&admin, "admin", "ci").await);

    let mut answers = Vec::new();
    for version in ["v1", "v2"] {
        std::fs::write(
            console.drop_dir().join(format!("hello-{version}.jar")),
            version,
        )
        .unwrap();
        let body = json!({"artifact": format!("hello-{version}.jar"), "version": version});
        answers.push(job(&console, &ci, "/api/services/shop/deploy", body).await);
    }
    answers.push(
        job(
            &console,
            &admin.headers(),
            "/api/services/shop/rollback",
            json!({}),
        )
        .await,
    );

    let (ci_who, admin_who) = ("token:admin/ci via console", "admin via console");
    let expected = [
        ("deploy", "v1", "started", ci_who),
        ("deploy", "v1", "succeeded", ci_who),
        ("deploy", "v2", "started", ci_who),
        ("deploy", "v2", "succeeded", ci_who),
        ("rollback", "v1", "started", admin_who),
        ("rollback", "v1", "succeeded", admin_who),
    ];
    // The console runs on: its deliveries end in the background, nothing waits at a job's end.
    wait_until("every delivery arrived", DEADLINE, || async {
        receiver.received().len() >= expected.len()
    })
    .await;
    let received = receiver.received();
    assert_eq!(received.len(), expected.len(), "{received:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (got, (kind, version, event, who)) in received.iter().zip(expected) {
        assert_eq!(got.path, format!("/hooks/{TOKEN}"));
        let header = got.header(sign::HEADER).expect("signed");
        sign::verify(KEY.as_bytes(), header, &got.body, now, 300)
            .unwrap_or_else(|e| panic!("{kind} {version} {event}: {e}"));
        let body: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            (
                &body["kind"],
                &body["version"],
                &body["event"],
                &body["who"]
            ),
            (&json!(kind), &json!(version), &json!(event), &json!(who)),
            "{body}"
        );
    }
    println!(
        "verified the HMAC of {} deliveries of console jobs (2 deploys, 1 rollback)",
        received.len()
    );

    for path in [
        "/api/services/shop",
        "/api/services/shop/deploys",
        "/api/audit?service=shop",
        "/api/audit/export.json",
    ] {
        let r = console.client.get(path, &admin.headers()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        answers.push(r.text());
    }
    let mut files = Vec::new();
    every_file(console.dir.path(), &mut files);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("nonstop.db")),
        "the service's store is searched: {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for secret in [TOKEN, KEY] {
        for (path, bytes) in &files {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} found in {}", path.display());
        }
        for answer in &answers {
            assert!(
                !answer.contains(secret),
                "{secret} in the console's JSON: {answer}"
            );
        }
    }
    println!(
        "secrets absent from {} files (console state, audit, store, proxy log) and {} API answers / job streams",
        files.len(),
        answers.len()
    );
}
