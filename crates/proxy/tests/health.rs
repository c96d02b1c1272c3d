//! The admin API can mark a backend up after the caller's own health gate passed, and every
//! listing shows health as the proxy's checker sees it; in-process proxy, scripted backends.

mod support;

use std::sync::atomic::Ordering;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_a_backend_up_makes_it_eligible_before_rise_checks() {
    let green = Backend::start("green").await;
    // rise = 1000: the checker alone would take ~50 s to bring green back.
    let pool = format!(
        "[pools.app]\nhealth = {{ path = \"/health\", interval = \"50ms\", timeout = \"1s\", rise = 1000, fall = 2 }}\n\
         [[pools.app.backends]]\nname = \"green\"\naddr = \"{}\"\n",
        green.addr
    );
    let proxy = TestProxy::start("", &pool).await;
    let admin = proxy.admin();
    green.healthy.store(false, Ordering::Relaxed);
    wait_until("green down", || {
        proxy.backend("app", "green").health == "down"
    })
    .await;
    let listed = admin.pool("app").await.unwrap();
    let seen = listed.backend("green").unwrap();
    assert_eq!((seen.health.as_str(), seen.eligible), ("down", Some(false)));
    assert!(seen.checks.is_some_and(|c| c.failures >= 2), "{seen:?}");
    let (status, body) = get(&client(), &proxy.url("/")).await.unwrap();
    assert_eq!(status, 503, "{body}");

    // The instance is healthy again (a deploy restarted it and its own gate passed).
    green.healthy.store(true, Ordering::Relaxed);
    let marked = admin.mark_up("app", "green").await.unwrap();
    assert_eq!(
        (marked.health.as_str(), marked.eligible),
        ("up", Some(true))
    );
    assert_eq!(marked.checks.map(|c| c.failures), Some(0));
    let (status, body) = get(&client(), &proxy.url("/")).await.unwrap();
    assert_eq!(
        (status, body.starts_with("node=green")),
        (200, true),
        "{body}"
    );
    // The checker keeps its view from there: passes accumulate and green stays up.
    wait_until("3 passing checks after the mark", || {
        proxy
            .backend("app", "green")
            .checks
            .is_some_and(|c| c.passes >= 3)
    })
    .await;
    assert_eq!(proxy.backend("app", "green").health, "up");

    // Marking does not hide a real failure: the checker takes it down again after `fall`.
    green.healthy.store(false, Ordering::Relaxed);
    wait_until("green down again", || {
        proxy.backend("app", "green").health == "down"
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_up_clears_passive_ejection_and_down_is_refused() {
    let b = Backend::start("b").await;
    let proxy = TestProxy::start("", "[pools.app]\n").await;
    let mut gone = b.spec();
    gone.addr = format!("127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    proxy
        .shared()
        .replace_backends("app", &[gone.clone()])
        .await
        .unwrap();
    // A refused connect ejects at once.
    let (status, _) = get(&client(), &proxy.url("/")).await.unwrap();
    assert_eq!(status, 502);
    assert!(proxy.backend("app", "b").ejected);
    let admin = proxy.admin();
    let marked = admin.mark_up("app", "b").await.unwrap();
    assert!(
        !marked.ejected && marked.eligible == Some(true),
        "{marked:?}"
    );
    assert_eq!(marked.checks, None, "the pool has no active checks");

    // Down comes only from the proxy's own checks.
    let body = r#"{"health":"down"}"#;
    let request = format!(
        "PATCH /v1/pools/app/backends/b HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::UnixStream::connect(proxy.dir.path().join("admin.sock"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("unknown variant `down`"),
        "{answer}"
    );
    proxy.stop().await;
}
