//! Reloading an edited file never empties a pool whose backends a deploy set through the admin API,
//! and says what it changed; in-process proxy, scripted backends, a keep-alive client that never resends.

mod support;

use std::time::Duration;

use nonstop_config::AdminState;
use nonstop_proxy::{BackendsFrom, ChangeKind};
use support::*;

const HEALTH: &str =
    "health = { path = \"/health\", interval = \"50ms\", timeout = \"1s\", rise = 2, fall = 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_managed_pools_section_keeps_its_backends_under_load() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = TestProxy::start("", "[pools.roll]\n").await;
    // What a deploy does: the file lists no backends, the admin API sets them.
    let mut deployed = vec![a.spec(), b.spec()];
    deployed[0].weight = Some(3);
    proxy
        .shared()
        .replace_backends("roll", &deployed)
        .await
        .unwrap();
    let load = Load::start(proxy.url("/"), 4, u64::MAX);
    load.wait_for_more(200).await;

    proxy.rewrite("", &format!("[pools.roll]\n{HEALTH}\n"));
    let report = proxy.shared().reload().await.unwrap();
    assert_eq!(report.pools.len(), 1, "{report:?}");
    let change = &report.pools[0];
    assert_eq!(
        (change.change, change.settings.as_slice(), change.backends),
        (ChangeKind::Updated, &["health"][..], BackendsFrom::AdminApi)
    );
    assert!(!change.file_backends_ignored);
    assert!(
        report.summary[0].contains("health changed")
            && report.summary[0].contains("kept the backends"),
        "{:?}",
        report.summary
    );
    load.wait_for_more(300).await;
    let (va, vb) = (proxy.backend("roll", "a"), proxy.backend("roll", "b"));
    assert_eq!(
        (va.weight, va.state, vb.state),
        (3, AdminState::Active, AdminState::Active)
    );

    // The file's new health check applies to the kept backends.
    b.healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    wait_until("b down by the reloaded health check", || {
        proxy.backend("roll", "b").health == "down"
    })
    .await;
    load.wait_for_more(200).await;
    let after_down = b.count();
    load.wait_for_more(200).await;
    assert_eq!(b.count(), after_down, "a down backend got traffic");

    // Restoring the file and reloading again keeps them too, and brings b back (no checks any more).
    proxy.rewrite("", "[pools.roll]\n");
    let report = proxy.shared().reload().await.unwrap();
    assert_eq!(report.pools[0].backends, BackendsFrom::AdminApi);
    assert_eq!(proxy.backend("roll", "b").health, "up");
    load.wait_for_more(300).await;
    let load_counts = load.stop().await;
    let (ok, failed) = (load_counts.ok, load_counts.failures);
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 1000, "only {ok} requests");
    assert_eq!(proxy.backend("roll", "a").weight, 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_only_the_file_manages_takes_the_files_backends() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let one = format!(
        "[pools.app]\n[[pools.app.backends]]\nname = \"a\"\naddr = \"{}\"\n",
        a.addr
    );
    let proxy = TestProxy::start("", &one).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, &proxy.url("/")).await.unwrap().0, 200);
    }
    let two = format!(
        "{one}[[pools.app.backends]]\nname = \"b\"\naddr = \"{}\"\n",
        b.addr
    );
    proxy.rewrite("", &two);
    let report = proxy.shared().reload().await.unwrap();
    assert_eq!(report.pools[0].backends, BackendsFrom::File);
    let names: Vec<String> = proxy
        .shared()
        .pool("app")
        .unwrap()
        .view()
        .backends
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        proxy.backend("app", "a").requests,
        5,
        "a kept its counters: it is the same backend"
    );

    // An unchanged file is reported as such.
    let report = proxy.shared().reload().await.unwrap();
    assert_eq!(report.summary, ["no changes"]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_pools_file_backend_edit_is_reported_not_applied() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let file_a = format!(
        "[pools.app]\n[[pools.app.backends]]\nname = \"a\"\naddr = \"{}\"\n",
        a.addr
    );
    let proxy = TestProxy::start("", &file_a).await;
    proxy
        .shared()
        .patch_backend(
            "app",
            "a",
            &nonstop_proxy::BackendPatch {
                state: Some(AdminState::Draining),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    proxy.rewrite(
        "",
        &format!("[pools.app]\nbalance = \"least-conn\"\n[[pools.app.backends]]\nname = \"b\"\naddr = \"{}\"\n", b.addr),
    );
    let report = proxy.shared().reload().await.unwrap();
    let change = &report.pools[0];
    assert_eq!(change.settings, ["balance"]);
    assert!(change.file_backends_ignored);
    assert!(
        report.summary[0].contains("not applied"),
        "{:?}",
        report.summary
    );
    let pool = proxy.shared().pool("app").unwrap().view();
    assert_eq!(pool.backends.len(), 1);
    assert_eq!(
        (pool.backends[0].name.as_str(), pool.backends[0].state),
        ("a", AdminState::Draining)
    );
    assert_eq!(pool.balance, nonstop_config::Balance::LeastConn);

    // A pool that left the file is reported removed.
    proxy.rewrite("", "[pools.other]\n");
    let report = proxy.shared().reload().await.unwrap();
    let kinds: Vec<_> = report
        .pools
        .iter()
        .map(|p| (p.pool.as_str(), p.change))
        .collect();
    assert!(
        kinds.contains(&("other", ChangeKind::Added))
            && kinds.contains(&("app", ChangeKind::Removed)),
        "{kinds:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_editing_a_managed_pool_keeps_the_saved_backends() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("state_file = \"state.json\"", "[pools.roll]\n").await;
    proxy
        .shared()
        .replace_backends("roll", &[a.spec()])
        .await
        .unwrap();
    let dir_path = proxy.dir.path().to_path_buf();
    proxy.rewrite(
        "state_file = \"state.json\"",
        &format!("[pools.roll]\n{HEALTH}\n"),
    );
    let TestProxy { running, dir, .. } = proxy;
    running.unwrap().shutdown().await;
    let (config, source) = nonstop_config::Config::load(&dir_path.join("nonstop.toml")).unwrap();
    let running = nonstop_proxy::start(&config, &source).await.unwrap();
    let pool = running.shared.pool("roll").unwrap().view();
    assert_eq!(
        pool.backends.len(),
        1,
        "the saved deploy's backends were dropped"
    );
    assert!(
        pool.backends[0].checks.is_some(),
        "the edited section's health check applies"
    );
    let (status, body) = get(&client(), &format!("http://{}/", running.listening[0]))
        .await
        .unwrap();
    assert_eq!((status, body.starts_with("node=a")), (200, true), "{body}");
    running.shutdown().await;
    drop(dir);
    tokio::time::sleep(Duration::ZERO).await;
}
