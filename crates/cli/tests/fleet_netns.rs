//! Several hosts on one machine: three network namespaces joined by veth pairs, an agent and two
//! app instances in each, the built-in proxy in front, and rolling deploys driven from here
//! through the agents over mutual TLS, under a continuous request stream.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nonstop_testkit::netns::NetnsVeth;
use support::fleet::{self, Host, deploy, enrol, service_toml};
use support::{KillUnder, Load, Proc, Proxy, nonstop_bin, wait_until};
use tokio::io::AsyncBufReadExt;

const HOSTS: [&str; 3] = ["web1", "web2", "web3"];

/// Deploys `version` while a request stream runs through `url`; the deploy must succeed and no
/// request may fail.
async fn deploy_under_load(
    config: &Path,
    fleet: &Path,
    version: &str,
    artifact: &Path,
    url: String,
) -> support::LoadCounts {
    let load = Load::start(url, 4, 200_000);
    let out = deploy(config, fleet, "shop", version, artifact).await;
    let report = load.stop().await;
    assert!(out.status.success(), "{version}: {}", support::text(&out));
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.by_version.contains_key(version),
        "{:?}",
        report.by_version
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_across_three_hosts_and_an_agent_killed_mid_deploy() {
    let tag = std::process::id() % 100_000;
    let dir = tempfile::tempdir().unwrap();
    let _instances = KillUnder(dir.path().to_path_buf());
    let console_state = dir.path().join("console");
    let mut hosts = fleet::hosts(&tag.to_string(), &HOSTS, dir.path(), &console_state);
    let mut hosts_toml = String::new();
    for (name, host) in HOSTS.iter().zip(&hosts) {
        hosts_toml.push_str(&format!(
            "[hosts.{name}]\nagent = \"{}\"\n\n",
            host.agent_addr()
        ));
    }
    let nodes = [
        ("a1", "web1", 8081),
        ("a2", "web1", 8082),
        ("b1", "web2", 8081),
        ("b2", "web2", 8082),
        ("c1", "web3", 8081),
        ("c2", "web3", 8082),
    ];
    let rest = format!(
        "[pools.shop]\n\n{hosts_toml}{}",
        service_toml(
            "shop",
            "balancer = { kind = \"builtin\", pool = \"shop\" }",
            &dir.path().join("console-releases"),
            &nodes
        )
    );
    let proxy = Proxy::start("", &rest);
    let config = proxy.config_path();
    for host in &mut hosts {
        host.start_agent(&config).await;
    }
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let artifact = |v: &str| {
        let path = artifacts.join(format!("shop-{v}.bin"));
        std::fs::write(&path, format!("release {v}\n")).unwrap();
        path
    };

    let out = deploy(&config, &console_state, "shop", "v1", &artifact("v1")).await;
    assert!(
        out.status.success(),
        "first deploy: {}",
        support::text(&out)
    );

    // A rolling deploy over all three hosts under load: nothing may fail.
    let report = deploy_under_load(
        &config,
        &console_state,
        "v2",
        &artifact("v2"),
        proxy.url("/"),
    )
    .await;
    assert!(
        report.sent > 200,
        "too little traffic to prove anything: {}",
        report.sent
    );
    eprintln!(
        "rolling v1→v2 over 3 hosts: {} requests, {} failed, by version {:?}",
        report.sent, report.failed, report.by_version
    );
    let load = Load::start(proxy.url("/"), 2, 300);
    load.wait_for_requests(300).await;
    let after = load.stop().await;
    assert_eq!(
        after.by_version.keys().collect::<Vec<_>>(),
        ["v2"],
        "{after:?}"
    );
    assert_eq!(after.by_node.len(), 6, "every node serves: {after:?}");

    // Kill web2's agent as the deploy reaches its first node there.
    let load = Load::start(proxy.url("/"), 4, 200_000);
    let mut child = tokio::process::Command::new(nonstop_bin())
        .args(["deploy", "shop"])
        .arg(artifact("v3"))
        .args(["--version", "v3", "--json", "--config"])
        .arg(&config)
        .arg("--fleet")
        .arg(&console_state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut killed = false;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the deploy kept talking")
    {
        seen.push(line.clone());
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if !killed
            && event["kind"] == "step"
            && event["message"].as_str().unwrap_or("").contains("b1")
        {
            hosts[1].agent.as_mut().unwrap().kill();
            killed = true;
        }
    }
    let status = child.wait().await.unwrap();
    let report = load.stop().await;
    assert!(killed, "the deploy never reached b1: {seen:#?}");
    assert!(
        !status.success(),
        "the deploy cannot succeed without web2: {seen:#?}"
    );
    assert_eq!(
        report.failed,
        0,
        "the service kept serving: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    let last = seen.last().unwrap();
    assert!(
        last.contains("web2"),
        "the end says which agent failed: {last}"
    );
    // The journal of that deploy says what was done and which agent could not be reached.
    let deploy_id = seen
        .iter()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["deploy"].as_i64())
        .expect("events carry the deploy id");
    let journal = Command::new(nonstop_bin())
        .args([
            "history",
            "shop",
            "--deploy",
            &deploy_id.to_string(),
            "--config",
        ])
        .arg(&config)
        .arg("--fleet")
        .arg(&console_state)
        .output()
        .unwrap();
    let journal = support::text(&journal);
    assert!(journal.contains("v3"), "{journal}");
    assert!(journal.contains("agent web2"), "{journal}");
    assert!(journal.contains("rollback"), "{journal}");
    eprintln!(
        "agent killed mid-deploy: exit {:?}; {} requests, 0 failed\n{journal}",
        status.code(),
        report.sent
    );

    // Restarted, web2's agent re-reports what runs there; the next deploy goes through.
    hosts[1].start_agent(&config).await;
    let fleet = nonstop_drivers::Fleet::open(&console_state).unwrap();
    let (parsed, _) = nonstop_config::Config::load(&config).unwrap();
    let web2 = fleet.agent("web2", &parsed.hosts["web2"]);
    let running = web2.instances().await.unwrap();
    let nodes_running: Vec<String> = running
        .iter()
        .filter(|i| i.running)
        .map(|i| i.instance.node.to_string())
        .collect();
    assert!(nodes_running.contains(&"b2".to_string()), "{running:?}");
    deploy_under_load(
        &config,
        &console_state,
        "v4",
        &artifact("v4"),
        proxy.url("/"),
    )
    .await;
}

/// HAProxy in front of two app instances on the same host (the per-host balancer of many
/// Tomcat setups), all in a namespace: the deploy drives HAProxy through that host's agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_behind_haproxy_driven_through_its_hosts_agent() {
    let tag = std::process::id() % 100_000;
    let dir = tempfile::tempdir().unwrap();
    let _instances = KillUnder(dir.path().to_path_buf());
    let console_state = dir.path().join("console");
    let ns = NetnsVeth::create_free(&format!("{tag}h"))
        .unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
    let state = dir.path().join("agent-edge");
    enrol(&console_state, &state, "edge");
    let mut host = Host {
        ns,
        state,
        agent: None,
    };
    let ip = host.ns.ns_addr;
    let haproxy_dir = dir.path().join("haproxy");
    std::fs::create_dir_all(&haproxy_dir).unwrap();
    let h = haproxy_dir.display();
    std::fs::write(
        haproxy_dir.join("haproxy.cfg"),
        format!(
            "global\n  maxconn 1024\n  stats socket {h}/admin.sock mode 600 level admin\n  server-state-file {h}/servers.state\n\
             defaults\n  mode http\n  load-server-state-from-file global\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind {ip}:8080\n  default_backend shop\n\
             backend shop\n  balance roundrobin\n  option httpchk GET /health\n  http-check expect status 200\n\
               server n1 {ip}:8081 check inter 500ms disabled\n  server n2 {ip}:8082 check inter 500ms disabled\n"
        ),
    )
    .unwrap();
    let haproxy = nonstop_testkit::peer::command("ip")
        .args(["netns", "exec", &host.ns.name])
        .arg(nonstop_testkit::peer::require("haproxy"))
        .args(["-W", "-db", "-f"])
        .arg(haproxy_dir.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let _haproxy = Proc { child: haproxy };
    let config = dir.path().join("nonstop.toml");
    let balancer = format!(
        "balancer = {{ kind = \"haproxy\", host = \"edge\", socket = \"{h}/admin.sock\", backend = \"shop\", state_file = \"{h}/servers.state\" }}"
    );
    std::fs::write(
        &config,
        format!(
            "[hosts.edge]\nagent = \"{}\"\n{}",
            host.agent_addr(),
            service_toml(
                "shop",
                &balancer,
                &dir.path().join("console-releases"),
                &[("n1", "edge", 8081), ("n2", "edge", 8082)]
            )
        ),
    )
    .unwrap();
    host.start_agent(&config).await;
    let socket = haproxy_dir.join("admin.sock");
    wait_until(
        "haproxy opens its stats socket",
        Duration::from_secs(15),
        || {
            let socket = socket.clone();
            async move { std::os::unix::net::UnixStream::connect(&socket).is_ok() }
        },
    )
    .await;
    let artifact = |v: &str| {
        let path = dir.path().join(format!("shop-{v}.bin"));
        std::fs::write(&path, format!("release {v}\n")).unwrap();
        path
    };
    let out = deploy(&config, &console_state, "shop", "v1", &artifact("v1")).await;
    assert!(
        out.status.success(),
        "first deploy: {}",
        support::text(&out)
    );
    let url = format!("http://{ip}:8080/");
    wait_until(
        "both nodes answer through haproxy",
        Duration::from_secs(15),
        || {
            let url = url.clone();
            async move {
                let client = support::client();
                let mut nodes = std::collections::BTreeSet::new();
                for _ in 0..8 {
                    if let Ok(reply) = support::send(&client, "GET", &url, &[], "").await {
                        nodes.insert(reply.node().to_string());
                    }
                }
                nodes.len() == 2
            }
        },
    )
    .await;
    let report = deploy_under_load(&config, &console_state, "v2", &artifact("v2"), url).await;
    eprintln!(
        "haproxy on host edge, rolling v1→v2 through its agent: {} requests, {} failed, by version {:?}",
        report.sent, report.failed, report.by_version
    );
}
