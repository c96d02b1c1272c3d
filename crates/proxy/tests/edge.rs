//! Targeted preview and maintenance mode through the admin API, against a real proxy: the
//! preview reaches a disabled member, `never` stays stable, a dead preview member falls back;
//! maintenance answers 503 + Retry-After to all but the allowed address, under load, and
//! survives a restart through the state file.

mod support;

use std::net::IpAddr;

use nonstop_ports::{Maintenance, NodeName, Preview};
use support::*;

const ALLOWED: &str = "127.0.0.2";

fn pool(blue: &Backend, green: &Backend) -> String {
    format!(
        "[pools.app]\n\
         [[pools.app.backends]]\nname = \"blue\"\naddr = \"{}\"\n\
         [[pools.app.backends]]\nname = \"green\"\naddr = \"{}\"\nstate = \"disabled\"\n",
        blue.addr, green.addr
    )
}

fn preview() -> Preview {
    Preview {
        nodes: vec![NodeName::from("green")],
        header: "X-Nonstop-Canary".into(),
        cookie: "nonstop-canary".into(),
    }
}

/// Who answers a GET with the header or cookie given.
async fn who(proxy: &TestProxy, header: Option<(&str, &str)>) -> String {
    let mut request = hyper::Request::get(proxy.url("/"));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = client()
        .request(
            request
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    // The test backend answers `node=NAME body=N`: the node is who answered.
    let text = String::from_utf8_lossy(&body);
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reaches_the_disabled_new_member_and_never_stays_stable() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let proxy = TestProxy::start("", &pool(&blue, &green)).await;
    let admin = proxy.admin();
    let always = Some(("X-Nonstop-Canary", "always"));
    assert_eq!(who(&proxy, always).await, "node=blue", "no preview yet");

    let view = admin.set_preview("app", Some(&preview())).await.unwrap();
    assert_eq!(view.preview, Some(preview()));
    for _ in 0..10 {
        assert_eq!(who(&proxy, always).await, "node=green");
        assert_eq!(
            who(&proxy, Some(("cookie", "nonstop-canary=always"))).await,
            "node=green"
        );
        assert_eq!(who(&proxy, None).await, "node=blue");
        assert_eq!(
            who(&proxy, Some(("X-Nonstop-Canary", "never"))).await,
            "node=blue"
        );
    }
    // After the switch, `never` still keeps to the old release while it serves (draining).
    admin
        .replace(
            "app",
            &[
                admin_spec("blue", &blue, "draining"),
                admin_spec("green", &green, "active"),
            ],
        )
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            who(&proxy, Some(("X-Nonstop-Canary", "never"))).await,
            "node=blue"
        );
        assert_eq!(who(&proxy, None).await, "node=green");
    }
    let view = admin.set_preview("app", None).await.unwrap();
    assert_eq!(view.preview, None);
    assert_eq!(
        who(&proxy, Some(("X-Nonstop-Canary", "never"))).await,
        "node=green"
    );
    proxy.stop().await;
}

fn admin_spec(name: &str, b: &Backend, state: &str) -> nonstop_admin_client::BackendSpec {
    nonstop_admin_client::BackendSpec {
        name: name.into(),
        addr: b.addr.to_string(),
        weight: None,
        route: None,
        state: Some(serde_json::from_value(serde_json::json!(state)).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_of_a_dead_or_unknown_member_falls_back_to_stable() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let proxy = TestProxy::start("", &pool(&blue, &green)).await;
    let admin = proxy.admin();
    let mut unknown = preview();
    unknown.nodes = vec![NodeName::from("purple")];
    admin.set_preview("app", Some(&unknown)).await.unwrap();
    assert_eq!(
        who(&proxy, Some(("X-Nonstop-Canary", "always"))).await,
        "node=blue"
    );

    admin.set_preview("app", Some(&preview())).await.unwrap();
    drop(green); // its port now refuses connections
    for _ in 0..10 {
        assert_eq!(
            who(&proxy, Some(("X-Nonstop-Canary", "always"))).await,
            "node=blue",
            "a refused preview is retried on stable, never a 502"
        );
    }
    let bad = Preview {
        header: "bad header".into(),
        ..preview()
    };
    let err = admin.set_preview("app", Some(&bad)).await.unwrap_err();
    assert!(err.to_string().contains("not a valid header name"), "{err}");
    proxy.stop().await;
}

fn maintenance() -> Maintenance {
    Maintenance {
        message: "Upgrading the database; back at 10:00".into(),
        allow: vec![nonstop_ports::edge::parse_allow(ALLOWED).unwrap()],
        retry_after_s: 30,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_turns_away_all_but_the_allowed_address_under_load_and_survives_a_restart() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let extra = "state_file = \"state.json\"";
    let proxy = TestProxy::start(extra, &pool(&blue, &green)).await;
    let admin = proxy.admin();
    let allowed: IpAddr = ALLOWED.parse().unwrap();
    let insider = Load::start_from(proxy.url("/"), 4, u64::MAX, allowed);
    let outsider = Load::start(proxy.url("/"), 4, u64::MAX);
    insider.wait_for_more(200).await;
    outsider.wait_for_more(200).await;

    admin
        .set_maintenance("app", Some(&maintenance()))
        .await
        .unwrap();
    outsider.wait_for_more(500).await;
    insider.wait_for_more(500).await;
    // One request of each kind by hand, to read the headers.
    let plain = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(status_line(&plain).starts_with("HTTP/1.1 503"), "{plain}");
    assert!(
        plain.to_ascii_lowercase().contains("retry-after: 30"),
        "{plain}"
    );
    assert!(
        plain.contains("text/html") && plain.contains("back at 10:00"),
        "{plain}"
    );
    let json = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\naccept: application/json\r\nconnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(
        json.contains("application/json") && json.contains("\"error\":\"maintenance\""),
        "{json}"
    );

    // A restart keeps it: the state file holds maintenance mode.
    let config_path = proxy.config_path();
    let dir = proxy.dir.path().to_path_buf();
    let (config, source) = nonstop_config::Config::load(&config_path).unwrap();
    let insider_counts = insider.stop().await;
    let (insider_ok, insider_failed) = (insider_counts.ok, insider_counts.failures);
    let outsider_counts = outsider.stop().await;
    let (outsider_ok, outsider_failed) = (outsider_counts.ok, outsider_counts.failures);
    let TestProxy {
        running, dir: tmp, ..
    } = proxy;
    running.unwrap().shutdown().await;
    let restarted = nonstop_proxy::start(&config, &source).await.unwrap();
    let addr = restarted.listening[0];
    let again = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert!(
        status_line(&again).starts_with("HTTP/1.1 503"),
        "after a restart: {again}"
    );
    let proxy = TestProxy {
        running: Some(restarted),
        addr,
        dir: tmp,
    };
    assert_eq!(proxy.dir.path(), dir);

    let admin = proxy.admin();
    admin.set_maintenance("app", None).await.unwrap();
    let after = Load::start(proxy.url("/"), 4, u64::MAX);
    after.wait_for_more(500).await;
    let after_counts = after.stop().await;
    let (after_ok, after_failed) = (after_counts.ok, after_counts.failures);
    let maintenance_503 = outsider_failed
        .iter()
        .filter(|f| f.starts_with("503") && f.contains("maintenance"))
        .count();
    println!(
        "maintenance: allowed client {insider_ok} ok / {} failed; other client {outsider_ok} ok, {maintenance_503} maintenance 503s, {} other failures; after off {after_ok} ok / {} failed",
        insider_failed.len(),
        outsider_failed.len() - maintenance_503,
        after_failed.len()
    );
    assert!(
        insider_failed.is_empty(),
        "the allowed address was turned away: {:?}",
        &insider_failed[..insider_failed.len().min(3)]
    );
    assert_eq!(
        maintenance_503,
        outsider_failed.len(),
        "only maintenance 503s: {:?}",
        &outsider_failed[..outsider_failed.len().min(3)]
    );
    assert!(
        maintenance_503 >= 300,
        "the outsider saw {maintenance_503} 503s"
    );
    assert!(
        after_failed.is_empty(),
        "failures after off: {:?}",
        &after_failed[..after_failed.len().min(3)]
    );
    assert!(blue.count() > 0 && green.count() == 0);
    proxy.stop().await;
}
