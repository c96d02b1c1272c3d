//! Targeted preview and maintenance mode on a real HAProxy through its Runtime API (maps, no
//! reload): `always` reaches the server still in maintenance, `never` and everyone else stay on
//! stable; maintenance answers 503 + Retry-After to all but the allowed address under load,
//! survives an HAProxy reload (the map files), and after `off` nothing fails.

#[path = "../../balancer-nginx/tests/support/mod.rs"]
mod support;

use std::process::Stdio;

use nonstop_balancer_haproxy::{HaproxyBalancer, HaproxyConfig};
use nonstop_ports::{Balancer, Maintenance, NodeName, Preview};
use nonstop_testkit::client::raw_get;
use support::*;

/// The lines docs/balancers/haproxy.md documents, with this test's map paths.
fn config(dir: &std::path::Path, port: u16, blue: &str, green: &str) -> String {
    let d = dir.display();
    format!(
        "global\n  stats socket {d}/admin.sock mode 600 level admin\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n\
         \x20 acl nonstop_maint str(app.html),map({d}/maintenance.map) -m found\n\
         \x20 acl nonstop_allowed src,map_ip({d}/allow-app.map) -m found\n\
         \x20 acl nonstop_json req.hdr(accept) -m sub application/json\n\
         \x20 http-request return status 503 content-type application/json lf-string \"%[str(app.json),map({d}/maintenance.map)]\" hdr Retry-After \"%[str(app.retry),map({d}/maintenance.map)]\" if nonstop_maint !nonstop_allowed nonstop_json\n\
         \x20 http-request return status 503 content-type \"text/html; charset=utf-8\" lf-string \"%[str(app.html),map({d}/maintenance.map)]\" hdr Retry-After \"%[str(app.retry),map({d}/maintenance.map)]\" if nonstop_maint !nonstop_allowed\n\
         \x20 default_backend app\n\
         backend app\n  balance roundrobin\n  option httpchk GET /health\n\
         \x20 acl nonstop_always req.hdr(X-Nonstop-Canary) -m str always\n\
         \x20 acl nonstop_always req.cook(nonstop-canary) -m str always\n\
         \x20 acl nonstop_never req.hdr(X-Nonstop-Canary) -m str never\n\
         \x20 acl nonstop_never req.cook(nonstop-canary) -m str never\n\
         \x20 acl nonstop_preview str(app),map({d}/preview.map) -m found\n\
         \x20 force-persist if nonstop_always nonstop_preview\n\
         \x20 use-server blue if nonstop_always {{ str(app/blue),map({d}/preview.map) -m found }}\n\
         \x20 use-server green if nonstop_always {{ str(app/green),map({d}/preview.map) -m found }}\n\
         \x20 use-server blue if nonstop_never nonstop_preview !{{ str(app/blue),map({d}/preview.map) -m found }} {{ srv_is_up(app/blue) }}\n\
         \x20 use-server green if nonstop_never nonstop_preview !{{ str(app/green),map({d}/preview.map) -m found }} {{ srv_is_up(app/green) }}\n\
         \x20 server blue {blue} check inter 1s\n\
         \x20 server green {green} check inter 1s disabled\n"
    )
}

fn node_in(answer: &str) -> &str {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-node: "))
        .unwrap_or("none")
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_and_maintenance_through_maps_without_a_reload() {
    let blue = Hello::start("blue", "1");
    let green = Hello::start("green", "2");
    let dir = tempfile::tempdir().unwrap();
    for map in ["preview.map", "maintenance.map", "allow-app.map"] {
        std::fs::write(dir.path().join(map), "").unwrap();
    }
    let port = free_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, config(dir.path(), port, &blue.addr(), &green.addr())).unwrap();
    let child = nonstop_testkit::peer::command("haproxy")
        .args(["-W", "-db", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let master = child.id();
    let _haproxy = Proc { child };
    let url = format!("http://127.0.0.1:{port}/");
    wait_until("haproxy answers", DEADLINE, || {
        let url = url.clone();
        async move { matches!(get(&client(), &url).await, Ok(r) if r.status == 200) }
    })
    .await;
    let lb = HaproxyBalancer::new(HaproxyConfig {
        socket: dir.path().join("admin.sock"),
        backend: "app".into(),
        state_file: None,
        preview_map: Some(dir.path().join("preview.map")),
        maintenance_map: Some(dir.path().join("maintenance.map")),
        allow_map: Some(dir.path().join("allow-app.map")),
    })
    .unwrap();

    // Preview: green is still in maintenance (no customer traffic), testers reach it.
    let load = Load::start(url.clone(), 4, 1_000_000);
    load.wait_for_more(200).await;
    let preview = Preview {
        nodes: vec![NodeName::from("green")],
        header: "X-Nonstop-Canary".into(),
        cookie: "nonstop-canary".into(),
    };
    lb.set_preview(Some(&preview)).await.unwrap();
    for _ in 0..5 {
        let always = raw_get("127.0.0.1", port, "X-Nonstop-Canary: always\r\n").await;
        assert_eq!(node_in(&always), "green", "{always}");
        let cookie = raw_get("127.0.0.1", port, "cookie: a=1; nonstop-canary=always\r\n").await;
        assert_eq!(node_in(&cookie), "green", "{cookie}");
        let never = raw_get("127.0.0.1", port, "X-Nonstop-Canary: never\r\n").await;
        assert_eq!(node_in(&never), "blue", "{never}");
    }
    load.wait_for_more(200).await;
    let report = load.stop().await;
    assert_no_failures("customers while green is previewed", &report);
    assert_eq!(
        report.by_node.keys().collect::<Vec<_>>(),
        ["blue"],
        "customers stay on blue"
    );
    let saved = std::fs::read_to_string(dir.path().join("preview.map")).unwrap();
    assert!(
        saved.contains("app/green 1") && saved.contains("\napp 1"),
        "{saved}"
    );
    lb.set_preview(None).await.unwrap();
    let cleared = raw_get("127.0.0.1", port, "X-Nonstop-Canary: always\r\n").await;
    assert_eq!(node_in(&cleared), "blue", "cleared: {cleared}");

    // Maintenance: 503 + Retry-After for everyone but 127.0.0.2, under load.
    let outsiders = Load::start(url.clone(), 4, 1_000_000);
    outsiders.wait_for_more(200).await;
    let maintenance = Maintenance {
        message: "Upgrading; back at <10:00> & soon".into(),
        allow: vec![nonstop_ports::edge::parse_allow("127.0.0.2").unwrap()],
        retry_after_s: 45,
    };
    lb.set_maintenance(Some(&maintenance)).await.unwrap();
    outsiders.wait_for_more(500).await;
    let page = raw_get("127.0.0.1", port, "").await;
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(page.contains("retry-after: 45"), "{page}");
    assert!(page.contains("back at &lt;10:00&gt; &amp; soon"), "{page}");
    let json = raw_get("127.0.0.1", port, "accept: application/json\r\n").await;
    let body = json.split("\r\n\r\n").nth(1).unwrap_or("");
    let parsed: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(parsed["message"], maintenance.message);
    let mut insider_ok = 0;
    for _ in 0..20 {
        let answer = raw_get("127.0.0.2", port, "").await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the allowed address: {answer}"
        );
        insider_ok += 1;
    }
    assert_eq!(lb.maintenance().await.unwrap(), Some(maintenance.clone()));
    // Stopped before the reload below: an HAProxy reload closes the old worker's idle
    // keep-alive connections, which a client that never resends sees fail; that is the reload's
    // cost, not maintenance mode's.
    let outside = outsiders.stop().await;

    // An HAProxy reload (master-worker, SIGUSR2) reads the map files nonstop wrote.
    let worker = worker_pid(&lb).await;
    nonstop_testkit::process::send_signal(master, "USR2").unwrap();
    wait_until("a new HAProxy worker answers", DEADLINE, || async {
        worker_pid(&lb).await.is_some_and(|pid| Some(pid) != worker)
    })
    .await;
    wait_until(
        "maintenance is still on after the reload",
        DEADLINE,
        || async {
            raw_get("127.0.0.1", port, "")
                .await
                .starts_with("HTTP/1.1 503")
        },
    )
    .await;
    let after_reload = lb.maintenance().await.unwrap();
    assert_eq!(
        after_reload,
        Some(maintenance.clone()),
        "read back after the reload"
    );
    let maintenance_503 = outside
        .failures
        .iter()
        .filter(|f| f.starts_with("503") && f.contains("Down for maintenance"))
        .count() as u64;

    lb.set_maintenance(None).await.unwrap();
    let after = Load::start(url.clone(), 4, 1_000_000);
    after.wait_for_more(500).await;
    let after = after.stop().await;
    eprintln!(
        "haproxy maintenance: outsiders {} ok, {maintenance_503} maintenance 503s, {} other failures; allowed address {insider_ok}/20 ok; after off {} sent {} failed",
        outside.ok,
        outside.failed - maintenance_503,
        after.sent,
        after.failed
    );
    assert_eq!(
        outside.failed,
        maintenance_503,
        "only maintenance 503s: {:?}",
        outside
            .failures
            .iter()
            .filter(|f| !f.contains("Down for maintenance"))
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(maintenance_503 >= 300, "{maintenance_503}");
    assert_no_failures("after maintenance off", &after);
    assert_eq!(lb.maintenance().await.unwrap(), None);
}

/// The pid of the worker answering on the stats socket now.
async fn worker_pid(lb: &HaproxyBalancer) -> Option<String> {
    let info = lb.api().command("show info").await.ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .map(|p| p.trim().to_string())
}
