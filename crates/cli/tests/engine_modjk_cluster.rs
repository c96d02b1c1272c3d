//! Tomcat session clustering behind a real Apache + mod_jk: with a static-membership `<Cluster>`
//! (DeltaManager) and `drain.sessions = false` a rolling deploy loses no request and no session;
//! the same site without `<Cluster>` resets the sessions of every user who moved.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nonstop_testkit::client::{LoadReport, Reset, SessionMove};
use support::modjk::{Site, SiteOptions, users_on_both};
use support::{KillUnder, assert_all_on, nonstop_bin, text};

const NO_SESSION_DRAIN: &str = "{ timeout = \"60s\", sessions = false }";

/// What one rolling deploy under sticky load showed.
struct Rolled {
    report: LoadReport,
    resets: Vec<Reset>,
    moves: Vec<SessionMove>,
    took: Duration,
}

/// First deploy of v1, then a rolling v1 -> v2 under sticky load (6 users or more, until at
/// least 3 started on each Tomcat; no resend); prints the numbers.
async fn roll_v1_to_v2(what: &str, site: &Site, config: &Path) -> Rolled {
    let out = site.deploy(config, "v1");
    assert!(out.status.success(), "{what}: first deploy: {}", text(&out));
    let (load, users) = users_on_both(site, 3).await;
    let started = Instant::now();
    let out = site.deploy(config, "v2");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{what}: rolling deploy of v2: {}",
        text(&out)
    );
    assert_all_on(config, "v2");
    load.wait_progress(&users, 5, Duration::from_secs(30)).await;
    let report = load.stop().await;
    let resets = report
        .check_counts()
        .unwrap_or_else(|bad| panic!("{what}: {:#?}", &bad[..bad.len().min(5)]));
    let moves = report.session_moves();
    eprintln!(
        "{what}: {} users, requests {}, failed {}, session moves {} (kept {}), resets {}, deploy {:.1} s; {}",
        users.len(),
        report.sent(),
        report.failures().len(),
        moves.len(),
        moves.iter().filter(|m| m.kept).count(),
        resets.len(),
        took.as_secs_f64(),
        report.summary()
    );
    report.assert_none_failed(what);
    assert!(
        report.by_version().contains_key("v2"),
        "{what}: v2 answered"
    );
    Rolled {
        report,
        resets,
        moves,
        took,
    }
}

fn config_check(config: &Path) -> String {
    let out = Command::new(nonstop_bin())
        .args(["config", "check"])
        .arg(config)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "config check: {said}");
    said
}

fn moved(moves: &[SessionMove], from: &str) -> usize {
    moves
        .iter()
        .filter(|m| m.from_route.as_deref() == Some(from))
        .count()
}

const ADVICE: &str = "tomcat1, tomcat2 replicate sessions (<Cluster> in conf/server.xml): with \
                      replication a restarted node's users continue on the other one, so `drain = \
                      { sessions = false }`";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_sessions_survive_a_rolling_deploy_without_a_session_drain() {
    // One site at a time: four JVMs at once would slow every deploy the test measures.
    let clustered = {
        let site = Site::start_with(SiteOptions {
            cluster: true,
            distributable: true,
            ..SiteOptions::default()
        })
        .await;
        let _instances = KillUnder(site.work.path().to_path_buf());
        let draining = site.config_with(
            &site.jkstatus(),
            "",
            "{ timeout = \"60s\", sessions = true }",
        );
        let said = config_check(&draining);
        eprintln!("config check, clustered, sessions = true:\n{said}");
        assert!(said.contains(ADVICE), "the <Cluster> advice: {said}");
        let config = site.config_with(&site.jkstatus(), "", NO_SESSION_DRAIN);
        assert!(
            !config_check(&config).contains("replicate sessions"),
            "no advice once sessions = false"
        );
        roll_v1_to_v2(
            "clustered, sessions = false, rolling v1 -> v2",
            &site,
            &config,
        )
        .await
    };
    assert!(
        clustered.resets.is_empty(),
        "replication keeps every session: {:?}",
        clustered.resets
    );
    // Each Tomcat's users moved off it while it restarted, and kept counting on the other one;
    // the users of tomcat2 moved onto the restarted tomcat1, whose sessions came from tomcat2.
    assert!(
        moved(&clustered.moves, "tomcat1") > 0 && moved(&clustered.moves, "tomcat2") > 0,
        "users moved both ways: {:?}",
        clustered.moves
    );
    let lost: Vec<_> = clustered.moves.iter().filter(|m| !m.kept).collect();
    assert!(lost.is_empty(), "moved users lost their count: {lost:?}");
    let longest = clustered
        .moves
        .iter()
        .filter_map(|m| m.from_count)
        .max()
        .unwrap_or(0);
    eprintln!(
        "clustered: every moved session kept counting (longest before a move: {longest}); deploy {:?}",
        clustered.took
    );

    // The same site, WARs and drain without `<Cluster>`: whoever moves starts again at 1.
    let plain = {
        let site = Site::start_with(SiteOptions {
            distributable: true,
            ..SiteOptions::default()
        })
        .await;
        let _instances = KillUnder(site.work.path().to_path_buf());
        let draining = site.config_with(
            &site.jkstatus(),
            "",
            "{ timeout = \"60s\", sessions = true }",
        );
        assert!(
            !config_check(&draining).contains("replicate sessions"),
            "no <Cluster>, no advice"
        );
        let config = site.config_with(&site.jkstatus(), "", NO_SESSION_DRAIN);
        roll_v1_to_v2(
            "no cluster, sessions = false, rolling v1 -> v2",
            &site,
            &config,
        )
        .await
    };
    assert!(
        !plain.resets.is_empty(),
        "without replication the moved users' sessions reset"
    );
    assert!(
        plain.moves.iter().all(|m| !m.kept),
        "no session survives a move without replication: {:?}",
        plain.moves
    );
    assert!(
        plain.resets.iter().all(|r| r.from_route != r.to_route),
        "sessions reset only by a move: {:?}",
        plain.resets
    );
    eprintln!(
        "without <Cluster>: {} resets in {} requests; with it: 0 in {}",
        plain.resets.len(),
        plain.report.sent(),
        clustered.report.sent()
    );
}
