//! A real deploy through the console's API: `nonstop proxy` and the sample app as processes, a
//! CI token deploying from the drop directory, an upload, live progress and logs over SSE,
//! drain/enable, rollback, history with step timing and the audit trail of all of it.

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::{Instances, Login, Setup, TestConsole, bearer, start_proxy};

/// Follows a job's events to its end; returns them.
async fn follow(console: &TestConsole, headers: &[(&str, String)], job: u64) -> Vec<Value> {
    let events = console
        .client
        .sse(
            &format!("/api/services/shop/jobs/{job}/events"),
            headers,
            |_, data| data.contains("\"kind\":\"finished\""),
        )
        .await;
    events
        .into_iter()
        .map(|(_, data)| serde_json::from_str(&data).unwrap())
        .collect()
}

fn assert_succeeded(events: &[Value]) {
    let last = events.last().expect("events");
    assert_eq!(last["kind"], "finished", "{events:#?}");
    assert!(
        last["message"].as_str().unwrap().starts_with("succeeded"),
        "{events:#?}"
    );
    let steps = events.iter().filter(|e| e["kind"] == "step").count();
    assert!(steps >= 3, "{events:#?}");
    // Sequence numbers arrive in order, without gaps.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i, "{events:#?}");
    }
}

async fn status(console: &TestConsole, login: &Login) -> Value {
    let r = console
        .client
        .get("/api/services/shop", &login.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_upload_logs_drain_and_rollback_through_the_api() {
    let console = TestConsole::start(Setup::default()).await;
    let _proxy = start_proxy(&console.config()).await;
    let _instances = Instances(console.config());
    let admin = console.admin().await;
    let ci = bearer(&console.token(&admin, "admin", "ci").await);

    // CI deploys v1 from the drop directory with its token.
    std::fs::write(console.drop_dir().join("hello-v1.jar"), b"release one").unwrap();
    let r = console.client.get("/api/artifacts", &ci).await;
    assert_eq!(r.json()["artifacts"][0]["name"], "hello-v1.jar");
    let r = console
        .client
        .post_json(
            "/api/services/shop/deploy",
            &json!({"artifact": "hello-v1.jar", "version": "v1"}),
            &ci,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["job"].as_u64().unwrap();
    // A second deploy while the first runs is refused.
    let again = console
        .client
        .post_json(
            "/api/services/shop/deploy",
            &json!({"artifact": "hello-v1.jar", "version": "v1b"}),
            &ci,
        )
        .await;
    let v1 = follow(&console, &ci, job).await;
    assert_succeeded(&v1);
    assert!(
        again.status == 409 || again.status == 202,
        "{}",
        again.text()
    );
    if again.status == 202 {
        // It started after the first finished: let it finish too.
        let job = again.json()["job"].as_u64().unwrap();
        follow(&console, &ci, job).await;
    }
    let s = status(&console, &admin).await;
    assert!(s["current"] == "v1" || s["current"] == "v1b", "{s:#}");

    // A person deploys v2 by upload, with the session and its CSRF token.
    let r = console
        .client
        .post_multipart(
            "/api/services/shop/deploy",
            "hello-v2.jar",
            b"release two",
            &[("version", "v2"), ("strategy", "blue-green")],
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v2 = follow(
        &console,
        &admin.headers(),
        r.json()["job"].as_u64().unwrap(),
    )
    .await;
    assert_succeeded(&v2);
    let s = status(&console, &admin).await;
    assert_eq!(s["current"], "v2", "{s:#}");
    let live = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["version"] == "v2" && n["process"] == "running")
        .unwrap_or_else(|| panic!("no node runs v2: {s:#}"))
        .clone();
    assert_eq!(live["health"], "up", "{s:#}");
    assert_eq!(live["balancer"], "active", "{s:#}");
    let node = live["node"].as_str().unwrap().to_string();
    // No upload is left behind once the job is done.
    let uploads = console.state.join("uploads");
    let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0);

    // The live log of that instance: its history, then a line appended once that was shown.
    let log_path = format!("/api/services/shop/nodes/{node}/log?lines=20");
    let marker = format!("console-test-marker-{}", std::process::id());
    let mut file: Option<PathBuf> = None;
    let events = console
        .client
        .sse(&log_path, &admin.headers(), |name, data| {
            if name == "file" {
                file = Some(PathBuf::from(data));
            }
            if name == "line" && data.contains("listening") {
                use std::io::Write;
                let path = file.as_ref().expect("the file comes first");
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                writeln!(f, "{marker}").unwrap();
            }
            name == "line" && data.contains(&marker)
        })
        .await;
    let listening = events
        .iter()
        .position(|(_, d)| d.contains("listening"))
        .unwrap();
    assert!(
        events[listening + 1..]
            .iter()
            .any(|(_, d)| d.contains(&marker))
    );

    // Draining the only node that serves is refused (through the engine, with the
    // invariant a deploy keeps); enabling it is fine.
    let r = console
        .client
        .post_json(
            &format!("/api/services/shop/nodes/{node}/drain"),
            &json!({}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("no backend would be eligible"),
        "{}",
        r.text()
    );
    let s = status(&console, &admin).await;
    let state = |s: &Value| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node.as_str())
            .unwrap()["balancer"]
            .clone()
    };
    assert_eq!(state(&s), "active", "{s:#}");
    let r = console
        .client
        .post_json(
            &format!("/api/services/shop/nodes/{node}/enable"),
            &json!({}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state(&status(&console, &admin).await), "active");
    let r = console
        .client
        .post_json(
            "/api/services/shop/nodes/nope/drain",
            &json!({}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());

    // One-click rollback (by API here; the browser test clicks).
    let r = console
        .client
        .post_json("/api/services/shop/rollback", &json!({}), &admin.headers())
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let back = follow(
        &console,
        &admin.headers(),
        r.json()["job"].as_u64().unwrap(),
    )
    .await;
    assert_succeeded(&back);
    let s = status(&console, &admin).await;
    assert!(s["current"].as_str().unwrap().starts_with("v1"), "{s:#}");

    // History, with every step timed.
    let r = console.client.get("/api/services/shop/deploys", &ci).await;
    let deployments = r.json()["deployments"].as_array().unwrap().clone();
    assert!(deployments.len() >= 3, "{deployments:#?}");
    assert_eq!(deployments[0]["kind"], "rollback");
    let id = deployments[0]["id"].as_i64().unwrap();
    let r = console
        .client
        .get(&format!("/api/services/shop/deploys/{id}"), &ci)
        .await;
    let steps = r.json()["steps"].as_array().unwrap().clone();
    assert!(!steps.is_empty());
    assert!(steps.iter().all(|s| s["took_ms"].is_i64()), "{steps:#?}");

    // The audit log has who did what, from where, with the outcome.
    let r = console
        .client
        .get("/api/audit?service=shop", &admin.headers())
        .await;
    let records = r.json()["records"].as_array().unwrap().clone();
    let has = |action: &str, actor: &str, outcome: &str| {
        records
            .iter()
            .any(|r| r["action"] == action && r["actor"] == actor && r["outcome"] == outcome)
    };
    assert!(has("deploy", "token:admin/ci", "ok"), "{records:#?}");
    assert!(has("deploy-finished", "token:admin/ci", "succeeded"));
    assert!(has("deploy", "admin", "ok"));
    assert!(
        has("drain", "admin", "refused"),
        "the refused drain is audited"
    );
    assert!(has("enable", "admin", "ok"));
    assert!(has("rollback", "admin", "ok"));
    assert!(has("rollback-finished", "admin", "succeeded"));
    assert!(records.iter().all(|r| r["peer"] == "127.0.0.1"));
    let r = console
        .client
        .get("/api/audit/export.csv", &admin.headers())
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .starts_with("id,at_ms,actor,peer,action,service,node,outcome,detail\r\n")
    );
    assert!(r.text().contains("rollback-finished"));
    let r = console
        .client
        .get("/api/audit/export.json", &admin.headers())
        .await;
    assert!(r.json().as_array().unwrap().len() >= records.len());
}
