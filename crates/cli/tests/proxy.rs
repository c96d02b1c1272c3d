//! `nonstop proxy` end to end: real proxy and sample-app processes on 127.0.0.1, one test per behaviour.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use nonstop_admin_client::{AdminError, BackendSpec, BackendState};
use support::*;

fn spec(name: &str, hello: &Hello) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        addr: hello.addr(),
        weight: None,
        route: None,
        state: None,
    }
}

async fn served_by(client: &HttpClient, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let reply = get(client, url).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        *seen.entry(reply.node().to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights() {
    let (a, b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let proxy = Proxy::start(
        "",
        &pool_toml(
            "app",
            "",
            &[("a", a.addr(), "weight = 3"), ("b", b.addr(), "weight = 1")],
        ),
    );
    let seen = served_by(&client(), &proxy.url("/"), 400).await;
    assert_eq!(seen, BTreeMap::from([("a".into(), 300), ("b".into(), 100)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_backend() {
    let (a, b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let proxy = Proxy::start(
        "",
        &pool_toml(
            "app",
            "balance = \"least-conn\"",
            &[("a", a.addr(), ""), ("b", b.addr(), "")],
        ),
    );
    // Keep three slow requests in flight on `a` only, then let `b` back in.
    proxy
        .admin
        .set_state("app", "b", BackendState::Disabled)
        .await
        .unwrap();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = proxy.url("/slow?ms=3000");
            tokio::spawn(async move { get(&client(), &url).await })
        })
        .collect();
    proxy
        .wait_backend("app", "a", "3 requests in flight on a", |b| {
            b.in_flight == 3
        })
        .await;
    proxy
        .admin
        .set_state("app", "b", BackendState::Active)
        .await
        .unwrap();
    let seen = served_by(&client(), &proxy.url("/"), 20).await;
    assert_eq!(
        seen,
        BTreeMap::from([("b".into(), 20)]),
        "round-robin would have sent half to the busy backend"
    );
    for request in slow {
        assert_eq!(request.await.unwrap().node(), "a");
    }
}

async fn new_session(client: &HttpClient, proxy: &Proxy) -> (String, String) {
    let reply = get(client, &proxy.url("/session")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let cookie = reply.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, reply.node().to_string())
}

async fn with_session(client: &HttpClient, proxy: &Proxy, cookie: &str) -> Reply {
    send(
        client,
        "GET",
        &proxy.url("/session"),
        &[("cookie", cookie)],
        "",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsessionid_route_sticks_and_draining_keeps_only_its_sessions() {
    let a = Hello::start_with("tomcat1", "1", &["--route", "tomcat1"]);
    let b = Hello::start_with("tomcat2", "1", &["--route", "tomcat2"]);
    let proxy = Proxy::start(
        "",
        &pool_toml(
            "app",
            "sticky = { kind = \"jsessionid\" }",
            &[
                ("t1", a.addr(), "route = \"tomcat1\""),
                ("t2", b.addr(), "route = \"tomcat2\""),
            ],
        ),
    );
    let client = client();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(new_session(&client, &proxy).await);
    }
    assert!(
        sessions.iter().any(|(_, n)| n == "tomcat1")
            && sessions.iter().any(|(_, n)| n == "tomcat2")
    );
    for (cookie, node) in &sessions {
        for expected in 2..=4 {
            let reply = with_session(&client, &proxy, cookie).await;
            assert_eq!(reply.node(), node, "session {cookie} moved");
            assert!(
                reply.body.starts_with(&format!("count={expected} ")),
                "{}",
                reply.body
            );
        }
    }
    // The `;jsessionid=` path parameter routes too (URL-rewritten sessions).
    let (cookie, node) = &sessions[0];
    let id = cookie.trim_start_matches("JSESSIONID=");
    let reply = get(&client, &proxy.url(&format!("/session;jsessionid={id}"))).await;
    assert_eq!(reply.node(), node);

    // Draining t2: its sessions still reach it, new clients do not.
    proxy
        .admin
        .set_state("app", "t2", BackendState::Draining)
        .await
        .unwrap();
    for (cookie, node) in &sessions {
        assert_eq!(with_session(&client, &proxy, cookie).await.node(), node);
    }
    assert_eq!(
        served_by(&client, &proxy.url("/"), 10).await,
        BTreeMap::from([("tomcat1".into(), 10)])
    );

    // Disabled: nothing reaches t2, not even its sessions (they start over on t1).
    proxy
        .admin
        .set_state("app", "t2", BackendState::Disabled)
        .await
        .unwrap();
    for (cookie, _) in &sessions {
        let reply = with_session(&client, &proxy, cookie).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.node(), "tomcat1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cookie_sticks_apps_without_sessions() {
    let (a, b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let proxy = Proxy::start(
        "",
        &pool_toml(
            "app",
            "sticky = { kind = \"cookie\" }",
            &[("a", a.addr(), ""), ("b", b.addr(), "")],
        ),
    );
    let client = client();
    let first = get(&client, &proxy.url("/")).await;
    let cookie = first.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("NONSTOP_ROUTE="), "{cookie}");
    for _ in 0..10 {
        let reply = send(&client, "GET", &proxy.url("/"), &[("cookie", &cookie)], "")
            .await
            .unwrap();
        assert_eq!(reply.node(), first.node());
        assert!(
            !reply.headers.contains_key("set-cookie"),
            "a bound client needs no new cookie"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_eject_and_restore_a_backend() {
    let (a, b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let health = "health = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", rise = 2, fall = 2 }";
    let proxy = Proxy::start(
        "",
        &pool_toml("app", health, &[("a", a.addr(), ""), ("b", b.addr(), "")]),
    );
    let client = client();
    send(
        &client,
        "POST",
        &format!("http://{}/admin/fail-health", b.addr()),
        &[],
        "",
    )
    .await
    .unwrap();
    proxy
        .wait_backend("app", "b", "b marked down", |b| b.health == "down")
        .await;
    assert_eq!(
        served_by(&client, &proxy.url("/"), 10).await,
        BTreeMap::from([("a".into(), 10)])
    );
    send(
        &client,
        "POST",
        &format!("http://{}/admin/heal", b.addr()),
        &[],
        "",
    )
    .await
    .unwrap();
    proxy
        .wait_backend("app", "b", "b back up", |b| b.health == "up")
        .await;
    assert_eq!(
        served_by(&client, &proxy.url("/"), 10).await.get("b"),
        Some(&5)
    );
    let metrics = proxy.admin.metrics().await.unwrap();
    assert!(
        metrics.contains("nonstop_health_changes_total{pool=\"app\",backend=\"b\",to=\"Down\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_clients_nothing() {
    let (a, mut b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let proxy = Proxy::start(
        "",
        &pool_toml("app", "", &[("a", a.addr(), ""), ("b", b.addr(), "")]),
    );
    let client = client();
    assert_eq!(served_by(&client, &proxy.url("/"), 4).await.len(), 2);
    b.proc.kill();
    // GETs and a small POST alike are retried on `a` after `b` refuses the connection.
    assert_eq!(
        served_by(&client, &proxy.url("/"), 20).await,
        BTreeMap::from([("a".into(), 20)])
    );
    for _ in 0..4 {
        let reply = send(&client, "POST", &proxy.url("/echo"), &[], "payload")
            .await
            .unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "payload"));
    }
    let pool = proxy.admin.pool("app").await.unwrap();
    assert!(pool.backend("b").unwrap().ejected, "{pool:?}");
    assert!(pool.backend("b").unwrap().failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let a = Hello::start("a", "1");
    let proxy = Proxy::start("", &pool_toml("app", "", &[("a", a.addr(), "")]));
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", proxy.port))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["one", "two"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("a: {text}"));
    }
    socket.close(None).await.unwrap();
    drop(socket);
    proxy
        .wait_backend("app", "a", "tunnel released", |b| b.in_flight == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_hop_by_hop_removed() {
    let a = Hello::start("a", "1");
    let proxy = Proxy::start("", &pool_toml("app", "", &[("a", a.addr(), "")]));
    let reply = send(
        &client(),
        "GET",
        &proxy.url("/headers"),
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "10.0.0.9"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic eA=="),
        ],
        "",
    )
    .await
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(seen["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com");
    assert_eq!(seen["host"], "shop.example.com");
    assert!(
        seen.get("x-secret").is_none() && seen.get("proxy-authorization").is_none(),
        "{seen}"
    );
    let id = reply.headers["x-request-id"].to_str().unwrap();
    assert_eq!(seen["x-request-id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_prefix() {
    let (shop, api) = (Hello::start("shop", "1"), Hello::start("api", "1"));
    let routes = "[[proxy.routes]]\nhost = \"api.example.com\"\npool = \"api\"\n[[proxy.routes]]\npath = \"/api\"\npool = \"api\"\n[[proxy.routes]]\npath = \"/\"\npool = \"shop\"\n";
    let pools = pool_toml("shop", "", &[("s", shop.addr(), "")])
        + &pool_toml("api", "", &[("a", api.addr(), "")]);
    let proxy = Proxy::start(routes, &pools);
    let client = client();
    let node = |host: &'static str, path: &'static str| {
        let (client, url) = (client.clone(), proxy.url(path));
        async move {
            send(&client, "GET", &url, &[("host", host)], "")
                .await
                .unwrap()
                .node()
                .to_string()
        }
    };
    assert_eq!(node("API.example.com:80", "/").await, "api");
    assert_eq!(node("shop.example.com", "/api/x").await, "api");
    assert_eq!(node("shop.example.com", "/apiary").await, "shop");
    assert_eq!(node("shop.example.com", "/").await, "shop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_pool_switches_every_new_request() {
    let (blue, green) = (Hello::start("blue", "1"), Hello::start("green", "2"));
    let proxy = Proxy::start("", &pool_toml("app", "", &[("blue", blue.addr(), "")]));
    let client = client();
    // A slow request on blue is in flight while the pool switches; it must still complete.
    let slow = {
        let url = proxy.url("/slow?ms=1500");
        tokio::spawn(async move { get(&support::client(), &url).await })
    };
    proxy
        .wait_backend("app", "blue", "slow request in flight", |b| {
            b.in_flight == 1
        })
        .await;
    let pool = proxy
        .admin
        .replace("app", &[spec("green", &green)])
        .await
        .unwrap();
    assert_eq!(pool.backends.len(), 1);
    assert_eq!(
        served_by(&client, &proxy.url("/"), 10).await,
        BTreeMap::from([("green".into(), 10)])
    );
    let finished = slow.await.unwrap();
    assert_eq!((finished.status, finished.node()), (200, "blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_through_50_switches_and_a_backend_restart() {
    let blue = [Hello::start("blue1", "1"), Hello::start("blue2", "1")];
    let mut green = [Hello::start("green1", "2"), Hello::start("green2", "2")];
    let set = |hellos: &[Hello]| hellos.iter().map(|h| spec(&h.node, h)).collect::<Vec<_>>();
    let proxy = Proxy::start(
        "drain_timeout = \"10s\"",
        &pool_toml(
            "app",
            "",
            &[("blue1", blue[0].addr(), ""), ("blue2", blue[1].addr(), "")],
        ),
    );
    let load = Load::start(proxy.url("/"), 8, 200_000);
    load.wait_for_requests(200).await;
    let mut switches = 0;
    for round in 0..60 {
        let target = if round % 2 == 0 {
            set(&green)
        } else {
            set(&blue)
        };
        proxy.admin.replace("app", &target).await.unwrap();
        switches += 1;
        if round == 30 {
            // Kill a green backend and bring it back on the same port while traffic flows.
            let port = green[1].port;
            green[1].proc.kill();
            green[1] = Hello::start_on(port, "green1b", "2", &[]);
        }
        let seen = load.sent();
        load.wait_for_requests(seen + 40).await;
    }
    let report = load.stop().await;
    println!(
        "switch under load: {switches} switches, {} requests sent, {} ok, {} failed, served by {:?}",
        report.sent, report.ok, report.failed, report.by_node
    );
    assert!(switches >= 50);
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}",
        &report.failures[..report.failures.len().min(10)]
    );
    assert_eq!(report.ok, report.sent);
    assert!(report.by_node.len() >= 4, "{:?}", report.by_node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_answers_and_others_keep_flowing() {
    let a = Hello::start("a", "1");
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_addr = garbage.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in garbage.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"this is not HTTP at all\r\n\r\n");
        }
    });
    let routes = "max_body = \"1KiB\"\n[[proxy.routes]]\npath = \"/broken\"\npool = \"broken\"\n[[proxy.routes]]\npool = \"app\"\n";
    let pools = pool_toml("app", "", &[("a", a.addr(), "")])
        + &pool_toml("broken", "", &[("junk", garbage_addr, "")]);
    let proxy = Proxy::start(routes, &pools);
    let client = client();

    let reply = send(&client, "GET", &proxy.url("/broken"), &[], "")
        .await
        .unwrap();
    assert_eq!(reply.status, 502);
    assert!(
        reply.body.contains("did not answer with valid HTTP"),
        "{}",
        reply.body
    );

    let reply = send(
        &client,
        "GET",
        &proxy.url("/"),
        &[("host", "bad host!")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("Host header"), "{}", reply.body);

    let big = "x".repeat(4096);
    let reply = send(&client, "POST", &proxy.url("/echo"), &[], &big)
        .await
        .unwrap();
    assert_eq!(reply.status, 413);
    assert!(reply.body.contains("max_body"), "{}", reply.body);

    // Unknown pool and backend in admin calls are named in a 404.
    match proxy
        .admin
        .set_state("nope", "a", BackendState::Draining)
        .await
    {
        Err(AdminError::Refused {
            status: 404,
            message,
            ..
        }) => assert!(message.contains("nope"), "{message}"),
        other => panic!("expected 404, got {other:?}"),
    }
    match proxy
        .admin
        .set_state("app", "ghost", BackendState::Draining)
        .await
    {
        Err(AdminError::Refused {
            status: 404,
            message,
            ..
        }) => assert!(message.contains("ghost"), "{message}"),
        other => panic!("expected 404, got {other:?}"),
    }
    let bad_spec = BackendSpec {
        name: "x".into(),
        addr: "no-port".into(),
        weight: None,
        route: None,
        state: None,
    };
    match proxy.admin.add("app", &bad_spec).await {
        Err(AdminError::Refused {
            status: 422,
            message,
            ..
        }) => assert!(message.contains("no port"), "{message}"),
        other => panic!("expected 422, got {other:?}"),
    }

    // Through all of that, normal traffic was never disturbed.
    assert_eq!(
        served_by(&client, &proxy.url("/"), 5).await,
        BTreeMap::from([("a".into(), 5)])
    );
    let metrics = proxy.admin.metrics().await.unwrap();
    assert!(
        metrics.contains("nonstop_proxy_errors_total{pool=\"broken\",kind=\"BadResponse\"} 1"),
        "{metrics}"
    );
}

/// One request written raw on its own connection; the answer up to the proxy's close (or 5 s).
fn raw_exchange(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 12: 12 malformed chunked bodies used to eject both backends of a pool (502 each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_the_clients_fault_and_eject_no_backend() {
    let (a, b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let proxy = Proxy::start(
        "",
        &pool_toml(
            "app",
            "eject = { consecutive_failures = 2, cooldown = \"60s\" }",
            &[("a", a.addr(), ""), ("b", b.addr(), "")],
        ),
    );
    let port = proxy.port;
    let answers = tokio::task::spawn_blocking(move || {
        let head = "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut answers = Vec::new();
        for body in [
            "zz\r\nhello\r\n0\r\n\r\n",
            "2\r\nhello\r\n0\r\n\r\n",
            "5\nhello\n0\n\n",
        ] {
            for _ in 0..4 {
                answers.push(raw_exchange(port, format!("{head}{body}").as_bytes()));
            }
        }
        answers.push(raw_exchange(
            port,
            b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        ));
        let filler = "f".repeat(100_000);
        answers.push(raw_exchange(
            port,
            format!("GET / HTTP/1.1\r\nhost: x\r\nx-filler: {filler}\r\n\r\n").as_bytes(),
        ));
        answers
    })
    .await
    .unwrap();
    let firsts: Vec<&str> = answers
        .iter()
        .map(|a| a.lines().next().unwrap_or(""))
        .collect();
    assert!(
        firsts[..12].iter().all(|l| l.starts_with("HTTP/1.1 400")),
        "{firsts:?}"
    );
    assert!(
        firsts[12].starts_with("HTTP/1.1 400") && answers[12].contains("more than one Host"),
        "{}",
        answers[12]
    );
    assert!(firsts[13].starts_with("HTTP/1.1 431"), "{firsts:?}");
    let pool = proxy.admin.pool("app").await.unwrap();
    for backend in &pool.backends {
        assert!(!backend.ejected && backend.failures == 0, "{backend:?}");
        assert_eq!(backend.responses.get("5xx"), Some(&0), "{backend:?}");
    }
    assert_eq!(served_by(&client(), &proxy.url("/"), 4).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_left_gets_a_503_that_says_why() {
    let a = Hello::start("a", "1");
    let proxy = Proxy::start("", &pool_toml("app", "", &[("a", a.addr(), "")]));
    proxy
        .admin
        .set_state("app", "a", BackendState::Disabled)
        .await
        .unwrap();
    let reply = get(&client(), &proxy.url("/")).await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("no backend of pool `app`") && reply.body.contains("1 disabled"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_admin_requires_the_token() {
    let a = Hello::start("a", "1");
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    write(&dir.path().join("token"), token);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"tcp:127.0.0.1:{port}\"\nadmin_token_file = \"{}\"\n{}",
        dir.path().join("token").display(),
        pool_toml("app", "", &[("a", a.addr(), "")])
    );
    write(&dir.path().join("nonstop.toml"), &config);
    let _proxy = Proxy::start_in(dir);
    let client = client();
    let url = format!("http://127.0.0.1:{port}/v1/pools");
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token-wrong"),
        Some("Basic YTpi"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        for (method, path) in [
            ("GET", "/v1/pools"),
            ("PATCH", "/v1/pools/app/backends/a"),
            ("POST", "/v1/reload"),
            ("GET", "/metrics"),
        ] {
            let reply = send(
                &client,
                method,
                &format!("http://127.0.0.1:{port}{path}"),
                &headers,
                "{\"state\":\"disabled\"}",
            )
            .await
            .unwrap();
            assert_eq!(
                reply.status, 401,
                "{method} {path} with {auth:?}: {}",
                reply.body
            );
        }
    }
    let bearer = format!("Bearer {token}");
    let reply = send(&client, "GET", &url, &[("authorization", &bearer)], "")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        served_by_admin_state(&reply.body),
        "active",
        "unauthenticated PATCH changed nothing"
    );
}

fn served_by_admin_state(body: &str) -> String {
    let pools: serde_json::Value = serde_json::from_str(body).unwrap();
    pools["pools"][0]["backends"][0]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_admin_without_token_is_refused_at_config_check() {
    let (ok, text) = nonstop_on_config(
        &["config", "check"],
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"tcp:127.0.0.1:9999\"\n",
    );
    assert!(!ok);
    assert!(
        text.contains("nonstop.toml:1:1")
            && text.contains("open to anyone")
            && text.contains("admin_token_file"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_config_and_refuses_a_bad_one() {
    let (a, b) = (Hello::start("a", "1"), Hello::start("b", "1"));
    let proxy = Proxy::start("", &pool_toml("app", "", &[("a", a.addr(), "")]));
    let client = client();
    let path = proxy.config_path();
    let original = std::fs::read_to_string(&path).unwrap();

    // A broken file: the CLI names file:line, and the old config keeps serving.
    write(
        &path,
        &original.replace(
            "[[pools.app.backends]]",
            "[[pools.app.backends]]\nweight = \"heavy\"",
        ),
    );
    let (ok, text) = proxy.cli(&["lb", "reload"]);
    assert!(!ok);
    assert!(
        text.contains("nonstop.toml:") && text.contains("weight"),
        "{text}"
    );
    assert_eq!(
        served_by(&client, &proxy.url("/"), 3).await,
        BTreeMap::from([("a".into(), 3)])
    );

    // SIGHUP with a good file adds a backend.
    write(
        &path,
        &format!(
            "{original}{}",
            pool_toml("app", "", &[("b", b.addr(), "")]).replace("[pools.app]\n", "")
        ),
    );
    proxy.proc.signal("HUP");
    proxy
        .wait_backend("app", "b", "reload picked up backend b", |_| true)
        .await;
    assert_eq!(served_by(&client, &proxy.url("/"), 4).await.len(), 2);

    // `nonstop lb` verbs work against the running proxy.
    let (ok, text) = proxy.cli(&["lb", "drain", "app/b"]);
    assert!(ok, "{text}");
    let (ok, text) = proxy.cli(&["lb", "pools"]);
    assert!(ok && text.contains("draining"), "{text}");
    let (ok, text) = proxy.cli(&["lb", "drain", "app/nobody"]);
    assert!(!ok && text.contains("no backend named `nobody`"), "{text}");

    // A reload of an unchanged file keeps runtime state (b stays draining).
    let (ok, text) = proxy.cli(&["lb", "reload"]);
    assert!(ok, "{text}");
    assert_eq!(
        proxy
            .admin
            .pool("app")
            .await
            .unwrap()
            .backend("b")
            .unwrap()
            .state,
        BackendState::Draining
    );
}

/// Issue 10 item 2: a deploy set the pool's backends through the admin API; an operator adds a
/// `health = …` line under the pool's section and reloads, by `nonstop lb reload` and by SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_an_edited_deploy_managed_pool_fails_no_request() {
    let (blue, green) = (Hello::start("blue", "1"), Hello::start("green", "2"));
    let proxy = Proxy::start("", "[pools.roll]\n");
    let mut deployed = vec![spec("blue", &blue), spec("green", &green)];
    deployed[0].state = Some(BackendState::Disabled);
    proxy.admin.replace("roll", &deployed).await.unwrap();
    let path = proxy.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let load = Load::start(proxy.url("/"), 4, 1_000_000);
    load.wait_for_requests(200).await;

    let health = "[pools.roll]\nhealth = { path = \"/health\", interval = \"200ms\", timeout = \"1s\", rise = 2, fall = 3 }\n";
    write(&path, &original.replace("[pools.roll]\n", health));
    let (ok, text) = proxy.cli(&["lb", "reload"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("pool `roll`: health changed; kept the backends, states and weights set through the admin API"),
        "{text}"
    );
    let seen = load.sent();
    load.wait_for_requests(seen + 500).await;

    write(&path, &original);
    proxy.proc.signal("HUP");
    wait_until("SIGHUP reload logged", DEADLINE, || async {
        proxy.log_text().matches("reload: pool `roll`").count() >= 2
    })
    .await;
    let seen = load.sent();
    load.wait_for_requests(seen + 500).await;
    let report = load.stop().await;
    println!(
        "reload of a managed pool under load: {} sent, {} ok, {} failed, served by {:?}",
        report.sent, report.ok, report.failed, report.by_node
    );
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}",
        &report.failures[..report.failures.len().min(10)]
    );
    assert_eq!(report.by_node.keys().collect::<Vec<_>>(), ["green"]);
    let pool = proxy.admin.pool("roll").await.unwrap();
    assert_eq!(pool.backend("blue").unwrap().state, BackendState::Disabled);
    assert_eq!(pool.backend("green").unwrap().state, BackendState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let a = Hello::start("a", "1");
    let mut proxy = Proxy::start("", &pool_toml("app", "", &[("a", a.addr(), "")]));
    let slow = {
        let url = proxy.url("/slow?ms=1000");
        tokio::spawn(async move { get(&client(), &url).await })
    };
    proxy
        .wait_backend("app", "a", "slow request in flight", |b| b.in_flight == 1)
        .await;
    proxy.proc.signal("TERM");
    let finished = slow.await.unwrap();
    assert_eq!(finished.status, 200);
    let status = proxy.proc.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {}", proxy.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backends_are_cut_at_the_drain_timeout_and_slow_backends_get_504() {
    let (blue, green) = (Hello::start("blue", "1"), Hello::start("green", "2"));
    let proxy = Proxy::start(
        "drain_timeout = \"300ms\"\ntimeouts = { response_header = \"1s\" }",
        &pool_toml("app", "", &[("blue", blue.addr(), "")]),
    );
    let slow = {
        let url = proxy.url("/slow?ms=800");
        tokio::spawn(async move { get(&support::client(), &url).await })
    };
    proxy
        .wait_backend("app", "blue", "slow request in flight", |b| {
            b.in_flight == 1
        })
        .await;
    proxy
        .admin
        .replace("app", &[spec("green", &green)])
        .await
        .unwrap();
    let cut = slow.await.unwrap();
    assert_eq!(cut.status, 503, "{}", cut.body);
    assert!(cut.body.contains("drain timeout"), "{}", cut.body);

    let reply = get(&client(), &proxy.url("/slow?ms=3000")).await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        reply.body.contains("no response headers within"),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_over_cleartext() {
    let a = Hello::start("a", "1");
    let proxy = Proxy::start("", &pool_toml("app", "", &[("a", a.addr(), "")]));
    let h2: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let reply = get(&h2, &proxy.url("/headers")).await;
    assert_eq!(reply.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        seen["host"],
        format!("127.0.0.1:{}", proxy.port),
        "the :authority becomes Host for HTTP/1.1 backends"
    );
}

#[test]
fn shipped_example_configs_pass_config_check() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = std::process::Command::new(nonstop_bin())
                .args(["config", "check"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn proxy_refuses_to_start_on_a_bad_config_or_a_taken_port() {
    let (ok, text) = nonstop_on_config(
        &["proxy", "--config"],
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[pools.app]\nbalance = \"fastest\"\n",
    );
    assert!(!ok);
    assert!(
        text.contains("nonstop.toml:5:11")
            && text.contains("fastest")
            && text.contains("round-robin"),
        "{text}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (ok, text) = nonstop_on_config(
        &["proxy", "--config"],
        &format!("[proxy]\nlisten = \"{addr}\"\nadmin = \"unix:{{dir}}/admin.sock\"\n"),
    );
    assert!(!ok);
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_serves_what_the_last_switch_set_up() {
    let (blue, green) = (Hello::start("blue", "1"), Hello::start("green", "2"));
    let proxy = Proxy::start(
        "state_file = \"state/pools.json\"",
        &pool_toml("app", "", &[("blue", blue.addr(), "")]),
    );
    // A relative state_file is relative to the config file.
    let path = proxy.config_path();
    let state = proxy.dir.path().join("state/pools.json");
    let mut green_spec = spec("green", &green);
    green_spec.weight = Some(3);
    proxy.admin.replace("app", &[green_spec]).await.unwrap();
    proxy.admin.add("app", &spec("blue", &blue)).await.unwrap();
    proxy
        .admin
        .set_state("app", "blue", BackendState::Draining)
        .await
        .unwrap();
    assert!(
        state.exists(),
        "every admin change is written to the state file"
    );

    let proxy = proxy.restart();
    let pool = proxy.admin.pool("app").await.unwrap();
    let green_now = pool.backend("green").expect("green survived the restart");
    assert_eq!(
        (green_now.weight, green_now.state),
        (3, BackendState::Active)
    );
    assert_eq!(pool.backend("blue").unwrap().state, BackendState::Draining);
    assert_eq!(
        served_by(&client(), &proxy.url("/"), 5).await,
        BTreeMap::from([("green".into(), 5)])
    );

    // An edit of the pool's settings applies, and the admin-set members still survive the
    // restart (issue 10 item 2: a deploy's pool is never emptied by an edited file).
    let text = std::fs::read_to_string(&path).unwrap();
    write(
        &path,
        &text.replace("[pools.app]\n", "[pools.app]\nbalance = \"least-conn\"\n"),
    );
    let proxy = proxy.restart();
    let pool = proxy.admin.pool("app").await.unwrap();
    assert_eq!(pool.balance, "least-conn");
    let names: Vec<&str> = pool.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["green", "blue"]);
    assert_eq!(pool.backend("blue").unwrap().state, BackendState::Draining);
    assert_eq!(pool.backend("green").unwrap().weight, 3);
}
