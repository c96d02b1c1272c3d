//! `nonstop deploy` behind a real HAProxy (own temp dir, 127.0.0.1, admin stats socket): a rolling
//! deploy under a continuous request stream, with each drain ended by HAProxy's `scur` counter.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use nonstop_testkit::haproxy::Haproxy;
use support::*;

fn deploy(config: &Path, version: &str, extra: &[&str]) -> Output {
    let artifact = config.with_file_name(format!("shop-{version}.jar"));
    write(&artifact, &format!("release {version}"));
    Command::new(nonstop_bin())
        .args([
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            version,
        ])
        .args(extra)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_behind_haproxy_drains_by_scur() {
    let nodes = [("n1", free_port()), ("n2", free_port())];
    let haproxy = Haproxy::start(&nodes).await;
    let work = tempfile::tempdir().unwrap();
    let config_path = work.path().join("nonstop.toml");
    let mut config = format!(
        r#"
[services.shop]
strategy = "rolling"
balancer = {{ kind = "haproxy", socket = "{socket}", backend = "shop", state_file = "{state}" }}
runtime = {{ kind = "process", start = ["{hello}", "--port", "{{port}}", "--version", "{{version}}", "--node", "{{node}}"], stop_grace = "5s" }}
releases = {{ dir = "{base}", keep = 3 }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "20s" }}
verify = "300ms"
"#,
        socket = haproxy.dir.path().join("admin.sock").display(),
        state = haproxy.dir.path().join("servers.state").display(),
        hello = hello_bin().display(),
        base = work.path().join("shop").display(),
    );
    for (name, port) in nodes {
        config.push_str(&format!(
            "[[services.shop.nodes]]\nname = \"{name}\"\nport = {port}\n"
        ));
    }
    write(&config_path, &config);
    let _instances = KillUnder(work.path().to_path_buf());

    let out = deploy(&config_path, "1", &[]);
    assert!(out.status.success(), "first deploy: {}", text(&out));
    wait_until("both nodes answer through haproxy", DEADLINE, || {
        let url = haproxy.url("/");
        async move {
            let client = client();
            let mut nodes = std::collections::BTreeSet::new();
            for _ in 0..6 {
                if let Ok(r) = send(&client, "GET", &url, &[], "").await {
                    nodes.insert(r.node().to_string());
                }
            }
            nodes.len() == 2
        }
    })
    .await;

    // Slow requests are in flight on both nodes as the deploy starts: each drain must wait for
    // them (HAProxy's scur), not for the 20 s timeout and not for a fixed pause.
    let load = Load::start(haproxy.url("/"), 8, 1_000_000);
    load.wait_for_requests(300).await;
    let slow = (0..4)
        .map(|_| {
            let url = haproxy.url("/slow?ms=1500");
            tokio::spawn(async move { send(&client(), "GET", &url, &[], "").await })
        })
        .collect::<Vec<_>>();
    let out = deploy(&config_path, "2", &["--json"]);
    assert!(out.status.success(), "rolling deploy: {}", text(&out));
    for request in slow {
        let reply = request
            .await
            .unwrap()
            .expect("a slow request survives the drain");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let sent = load.sent();
    load.wait_for_requests(sent + 300).await;
    let report = load.stop().await;
    eprintln!(
        "haproxy rolling 1 -> 2: sent {} ok {} failed {} by version {:?} by node {:?}",
        report.sent, report.ok, report.failed, report.by_version, report.by_node
    );
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}",
        report.failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(report.by_version.contains_key("2"));

    // The journal's drain steps: the first waited for the slow requests, none hit the timeout.
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let drains: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.to_lowercase().contains("drain"))
        .collect();
    eprintln!("drain events: {drains:#?}");
    let waited: Vec<u64> = drains
        .iter()
        .filter_map(|m| {
            m.strip_prefix("drain ended on in-flight = 0 after ")?
                .split("ms")
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(waited.len(), 2, "one finished drain per node: {drains:?}");
    assert!(
        waited.iter().any(|ms| *ms >= 500),
        "a drain waited for the slow requests HAProxy counted in scur: {waited:?}"
    );
    assert!(
        waited.iter().all(|ms| *ms < 20_000),
        "no drain ran into its 20 s timeout: {waited:?}"
    );

    // A reload keeps what nonstop set (haproxy.cfg declares both servers `disabled`): the
    // driver wrote `show servers state` to HAProxy's server-state-file after every change.
    haproxy.reload().await;
    let status = status_json(&config_path);
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["balancer"], "active", "after a reload: {node}");
    }
    let client = client();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let reply = send(&client, "GET", &haproxy.url("/"), &[], "")
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        answered.insert(reply.node().to_string());
    }
    assert_eq!(
        answered.len(),
        2,
        "both nodes serve after the reload: {answered:?}"
    );
}
