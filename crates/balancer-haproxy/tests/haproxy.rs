//! The HAProxy driver against a real HAProxy (own temp dir, 127.0.0.1, admin stats socket) in
//! front of sample-app instances: drain seen in `scur`, maint, weight, register, rolling under load.

#[path = "../../balancer-nginx/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Instant;

use nonstop_balancer_haproxy::{HaproxyBalancer, HaproxyConfig};
use nonstop_ports::{Balancer, LbState, Member, NodeName};
use support::*;

/// A real HAProxy in master-worker mode in the foreground, config and socket in its temp dir.
struct Haproxy {
    _proc: Proc,
    dir: tempfile::TempDir,
    port: u16,
}

impl Haproxy {
    /// `servers` are `(name, addr, extra)` lines of backend `app`.
    async fn start(servers: &[(&str, String, &str)]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 1024\n  stats socket {d}/admin.sock mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option httpchk GET /health\n  http-check expect status 200\n"
        );
        for (name, addr, extra) in servers {
            cfg.push_str(&format!("  server {name} {addr} check inter 1s {extra}\n"));
        }
        std::fs::write(dir.path().join("haproxy.cfg"), cfg).unwrap();
        let child = nonstop_testkit::peer::command("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(dir.path().join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let haproxy = Haproxy {
            _proc: Proc { child },
            dir,
            port,
        };
        let url = haproxy.url("/health");
        wait_until("haproxy answers", DEADLINE, || {
            let url = url.clone();
            async move { matches!(get(&client(), &url).await, Ok(r) if r.status == 200) }
        })
        .await;
        haproxy
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn balancer(&self, backend: &str) -> HaproxyBalancer {
        HaproxyBalancer::new(HaproxyConfig {
            socket: self.dir.path().join("admin.sock"),
            backend: backend.into(),
            state_file: None,
            preview_map: None,
            maintenance_map: None,
            allow_map: None,
        })
        .unwrap()
    }
}

async fn member(lb: &HaproxyBalancer, node: &str) -> Member {
    lb.members()
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.node.as_str() == node)
        .unwrap_or_else(|| panic!("no member {node}"))
}

/// Waits until HAProxy's own counter says `node` has no session left; returns how long it took.
async fn wait_drained(lb: &HaproxyBalancer, node: &str) -> std::time::Duration {
    let start = Instant::now();
    wait_until(&format!("{node} scur reaches 0"), DEADLINE, || async move {
        member(lb, node).await.in_flight == 0
    })
    .await;
    start.elapsed()
}

/// `n` GETs on fresh connections, counted by the node that answered.
async fn spread(url: &str, n: usize) -> std::collections::BTreeMap<String, u32> {
    let mut by_node = std::collections::BTreeMap::new();
    for _ in 0..n {
        *by_node.entry(node_of(url).await).or_default() += 1;
    }
    by_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_by_scur_maint_weight_register_and_rolls_under_load() {
    let s1 = Hello::start("s1", "1");
    let s2 = Hello::start("s2", "1");
    let s3 = Hello::start("s3", "2");
    let haproxy = Haproxy::start(&[
        ("s1", s1.addr(), ""),
        ("s2", s2.addr(), ""),
        ("s3", "127.0.0.1:1".into(), "disabled"),
    ])
    .await;
    let lb = haproxy.balancer("app");
    let (n1, n2, n3) = (
        NodeName::from("s1"),
        NodeName::from("s2"),
        NodeName::from("s3"),
    );
    let url = haproxy.url("/");
    assert_eq!(member(&lb, "s3").await.state, LbState::Disabled);

    // Drain while slow requests are in flight: scur > 0, then 0, and every slow request succeeds.
    let slow_url = haproxy.url("/slow?ms=1500");
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let url = slow_url.clone();
            tokio::spawn(async move { get(&client(), &url).await })
        })
        .collect();
    wait_until("s1 has sessions in flight", DEADLINE, || async {
        member(&lb, "s1").await.in_flight > 0
    })
    .await;
    lb.set_state(&n1, LbState::Draining).await.unwrap();
    let draining = member(&lb, "s1").await;
    assert_eq!(draining.state, LbState::Draining);
    assert!(draining.in_flight > 0, "{draining:?}");
    eprintln!("s1 draining with scur {}", draining.in_flight);
    assert_eq!(spread(&url, 10).await.keys().collect::<Vec<_>>(), ["s2"]);
    let took = wait_drained(&lb, "s1").await;
    eprintln!("s1 drained (scur 0) after {took:?}");
    for reply in slow {
        let reply = reply.await.unwrap().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // Maint: no traffic at all; back to ready.
    lb.set_state(&n1, LbState::Disabled).await.unwrap();
    assert_eq!(member(&lb, "s1").await.state, LbState::Disabled);
    assert_eq!(spread(&url, 6).await.keys().collect::<Vec<_>>(), ["s2"]);
    lb.set_state(&n1, LbState::Active).await.unwrap();
    assert_eq!(member(&lb, "s1").await.state, LbState::Active);

    // Weight 3:1 shows in the members and in round-robin.
    lb.set_weight(&n1, 3).await.unwrap();
    assert_eq!(member(&lb, "s1").await.weight, 3);
    let by_node = spread(&url, 40).await;
    assert_eq!(by_node.get("s1"), Some(&30), "{by_node:?}");
    lb.set_weight(&n1, 1).await.unwrap();

    // Register points the declared spare at a new instance, still in maintenance.
    lb.register(&n3, &s3.addr()).await.unwrap();
    let m3 = member(&lb, "s3").await;
    assert_eq!(
        (m3.addr.as_str(), m3.state),
        (s3.addr().as_str(), LbState::Disabled)
    );
    lb.register(&n3, &s3.addr()).await.unwrap();

    // Rolling under load: each server drained (until scur 0), maint, ready; then a switch to s3.
    let load = Load::start(url.clone(), 8, 500_000);
    load.wait_for_more(300).await;
    for node in [&n1, &n2] {
        lb.set_state(node, LbState::Draining).await.unwrap();
        wait_drained(&lb, node.as_str()).await;
        lb.set_state(node, LbState::Disabled).await.unwrap();
        load.wait_for_more(300).await;
        lb.set_state(node, LbState::Active).await.unwrap();
        load.wait_for_more(300).await;
    }
    lb.switch(&[
        (n1.clone(), LbState::Draining, None),
        (n2.clone(), LbState::Draining, None),
        (n3.clone(), LbState::Active, Some(2)),
    ])
    .await
    .unwrap();
    wait_drained(&lb, "s1").await;
    wait_drained(&lb, "s2").await;
    load.wait_for_more(300).await;
    let report = load.stop().await;
    assert_no_failures("haproxy rolling drain/maint/ready and switch", &report);
    assert!(report.by_node["s1"] > 0 && report.by_node["s2"] > 0 && report.by_node["s3"] > 0);
    assert_eq!(member(&lb, "s3").await.weight, 2);

    // Clear errors: HAProxy's own text for unknown names, ours for what HAProxy cannot do.
    let err = lb
        .set_state(&NodeName::from("nope"), LbState::Draining)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("No such server"), "{err}");
    let err = lb.set_weight(&n1, 300).await.unwrap_err().to_string();
    assert!(err.contains("between 0 and 256"), "{err}");
    let err = lb
        .register(&NodeName::from("s9"), "127.0.0.1:9")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no server `s9`") && err.contains("disabled"),
        "{err}"
    );
    let err = lb
        .switch(&[
            (n3.clone(), LbState::Disabled, None),
            (NodeName::from("s9"), LbState::Active, None),
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no server `s9`"), "{err}");
    assert_eq!(
        member(&lb, "s3").await.state,
        LbState::Active,
        "a failed switch changed s3"
    );
    let err = lb
        .register(&n3, "localhost:80")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("IP:PORT"), "{err}");
    let err = haproxy
        .balancer("nope")
        .members()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("backend"), "{err}");
    eprintln!("unknown backend: {err}");
}
