//! The console driving a fleet: three hosts as network namespaces, each enrolled with a
//! one-time join token (`nonstop agent join` against the console's pinned CA) and running an
//! agent and two app instances; the built-in proxy in front; rolling deploys started through the
//! console's API with a CI token (`nonstop deploy --console`) under a continuous request stream,
//! and a remote instance's log followed live through the console.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nonstop_testkit::client::{LoadOptions, StickyLoad};
use nonstop_testkit::netns::NetnsVeth;
use nonstop_testkit::process::{KillUnder, Proc};
use serde_json::json;
use support::{Setup, TestConsole, binaries, start_proxy, wait_until};

const HOSTS: [&str; 3] = ["web1", "web2", "web3"];

fn config_text(hosts: &[NetnsVeth], hello: &Path, proxy_port: u16) -> String {
    let mut text = format!(
        r#"[proxy]
listen = "127.0.0.1:{proxy_port}"
admin = "unix:{{dir}}/admin.sock"

[pools.shop]

[services.shop]
strategy = "rolling"
balancer = {{ kind = "builtin", pool = "shop" }}
runtime = {{ kind = "process", start = ["{hello}", "--listen", "0.0.0.0:{{port}}", "--version", "{{version}}", "--node", "{{node}}"], stop_grace = "5s" }}
releases = {{ dir = "{{dir}}/releases" }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "5s" }}
verify = "200ms"
"#,
        hello = hello.display()
    );
    for (name, ns) in HOSTS.iter().zip(hosts) {
        text.push_str(&format!(
            "\n[hosts.{name}]\nagent = \"{}:7443\"\n",
            ns.ns_addr
        ));
    }
    for (i, name) in HOSTS.iter().enumerate() {
        for (j, port) in [8081, 8082].iter().enumerate() {
            text.push_str(&format!(
                "\n[[services.shop.nodes]]\nname = \"n{}{}\"\nhost = \"{name}\"\nport = {port}\n",
                i + 1,
                j + 1
            ));
        }
    }
    text
}

/// `nonstop deploy --console` of a new artifact; returns the command's output.
async fn deploy(
    console: &TestConsole,
    token: &str,
    fingerprint: &str,
    version: &str,
) -> std::process::Output {
    let (nonstop, _) = binaries();
    let artifact = console.dir.path().join(format!("shop-{version}.bin"));
    std::fs::write(&artifact, format!("release {version}\n")).unwrap();
    tokio::process::Command::new(nonstop)
        .args(["deploy", "shop"])
        .arg(&artifact)
        .args(["--version", version])
        .arg("--console")
        .arg(format!("https://{}", console.addr))
        .args(["--token", token, "--console-ca-sha256", fingerprint])
        .output()
        .await
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_enrols_agents_and_rolls_across_three_hosts_under_load() {
    let tag = std::process::id() % 100_000;
    let hosts: Vec<NetnsVeth> = (0..HOSTS.len())
        .map(|i| {
            let ns = NetnsVeth::create_free(&format!("{tag}c{i}"))
                .unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
            ns.route_via_host().unwrap();
            ns
        })
        .collect();
    let (nonstop, hello) = binaries();
    let proxy_port = support::free_port();
    // The console listens on the host's end of web1's veth: every namespace routes there.
    let console = TestConsole::start(Setup {
        config: Some(config_text(&hosts, &hello, proxy_port)),
        listen: format!("{}:0", hosts[0].host_addr).parse().unwrap(),
        ..Setup::default()
    })
    .await;
    let _instances = KillUnder(console.dir.path().to_path_buf());
    let _proxy = start_proxy(&console.config()).await;
    let admin = console.admin().await;

    // Enrolment: a one-time token per host from the API, `agent join` inside each namespace.
    let mut agents = Vec::new();
    let mut fingerprint = String::new();
    for (name, ns) in HOSTS.iter().zip(&hosts) {
        let r = console
            .client
            .post_json(
                "/api/agents/tokens",
                &json!({ "name": name }),
                &admin.headers(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let issued = r.json();
        fingerprint = issued["ca_sha256"].as_str().unwrap().to_string();
        let state = console.dir.path().join(format!("agent-{name}"));
        let join = nonstop_testkit::peer::command("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&nonstop)
            .args(["agent", "join", &format!("https://{}", console.addr)])
            .args(["--token", issued["token"].as_str().unwrap()])
            .args(["--ca-sha256", &fingerprint, "--name", name, "--state"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(join.status.success(), "join {name}: {}", text(&join));
        let reused = nonstop_testkit::peer::command("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&nonstop)
            .args(["agent", "join", &format!("https://{}", console.addr)])
            .args(["--token", issued["token"].as_str().unwrap()])
            .args(["--ca-sha256", &fingerprint, "--name", name, "--state"])
            .arg(console.dir.path().join("reused"))
            .output()
            .unwrap();
        assert!(!reused.status.success(), "a join token works once");
        let child = nonstop_testkit::peer::command("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&nonstop)
            .args(["agent", "run", "--config"])
            .arg(console.config())
            .arg("--state")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        agents.push(Proc { child });
        let addr = format!("{}:7443", ns.ns_addr);
        wait_until(&format!("agent {name}"), Duration::from_secs(15), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
    }

    // A wrong pin is refused before any token is sent.
    let wrong_pin = Command::new(&nonstop)
        .args(["agent", "join", &format!("https://{}", console.addr)])
        .args([
            "--token",
            "x",
            "--ca-sha256",
            &"0".repeat(64),
            "--name",
            "web9",
            "--state",
        ])
        .arg(console.dir.path().join("wrong-pin"))
        .output()
        .unwrap();
    assert!(!wrong_pin.status.success());
    assert!(text(&wrong_pin).contains("pins"), "{}", text(&wrong_pin));

    let token = console.token(&admin, "admin", "ci").await;
    let out = deploy(&console, &token, &fingerprint, "v1").await;
    assert!(out.status.success(), "v1: {}", text(&out));

    let load = StickyLoad::start(
        &format!("http://127.0.0.1:{proxy_port}/"),
        4,
        LoadOptions {
            pause: Duration::from_millis(2),
            ..LoadOptions::default()
        },
    );
    let out = deploy(&console, &token, &fingerprint, "v2").await;
    let report = load.stop().await;
    assert!(out.status.success(), "v2: {}", text(&out));
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        report.sent(),
        &failures[..failures.len().min(3)]
    );
    assert!(report.sent() > 100, "too little traffic: {}", report.sent());
    eprintln!(
        "console rolling deploy over 3 hosts: {} requests, 0 failed",
        report.sent()
    );

    // A remote instance's log, followed live through the console (from its agent).
    let events = console
        .client
        .sse(
            "/api/services/shop/nodes/n21/log?lines=5",
            &admin.headers(),
            |kind, data| kind == "line" && data.contains("v2"),
        )
        .await;
    assert!(
        events.iter().any(|(k, d)| k == "line" && d.contains("v2")),
        "{events:?}"
    );

    // The service page sees every node on v2 through the agents.
    let r = console
        .client
        .get("/api/services/shop", &admin.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    assert!(body.matches("\"v2\"").count() >= 6, "{body}");
    drop(agents);
}
