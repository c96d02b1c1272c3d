//! `nonstop deploy` of a WAR to two real Tomcat 10 instances (jvmRoute tomcat1/tomcat2) behind a
//! real Apache + mod_jk, with sticky clients: rolling deploys through both mod_jk modes (the
//! JkMountFile one with and without jkstatus), and a WAR that fails to start rolled back.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad};
use nonstop_testkit::tomcat::java_opts;
use support::modjk::{Site, SiteOptions, users_on_both};
use support::{KillUnder, assert_all_on, client, nonstop_bin, send, status_json, text};

/// A rolling deploy of `war` under sticky load; returns the load's report.
async fn rolling_under_load(site: &Site, config: &Path, war: &str) -> LoadReport {
    let (load, all) = users_on_both(site, 3).await;
    let out = site.deploy(config, war);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "rolling deploy of {war}: {}",
        text(&out)
    );
    assert_all_on(config, war);
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    load.stop().await
}

fn check(what: &str, report: &LoadReport, war: &str) {
    eprintln!("{what}: {}", report.summary());
    report.assert_none_failed(what);
    assert!(
        report.by_version().contains_key(war),
        "{what}: {war} answered"
    );
    // Within a session the counter goes up by exactly 1; a session ends only when its node goes
    // away (the user moves to the other route), never while its Tomcat keeps running.
    let resets = report
        .check_counts()
        .unwrap_or_else(|bad| panic!("{what}: {:#?}", &bad[..bad.len().min(5)]));
    let lost_in_place: Vec<_> = resets
        .iter()
        .filter(|r| r.from_route == r.to_route)
        .collect();
    assert!(
        lost_in_place.is_empty(),
        "{what}: sessions lost on a running node: {lost_in_place:?}"
    );
    eprintln!(
        "{what}: {} session moves, all off a node being replaced; longest session before its move: {:?}",
        resets.len(),
        resets.iter().filter_map(|r| r.from_count).max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wars_roll_through_mod_jk_with_sticky_sessions_and_a_failing_war_rolls_back() {
    let site = Site::start().await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    // The first deploy starts both Tomcats; probes meanwhile put them in mod_jk's error state,
    // which only jkstatus can reset early (without it, mod_jk retries after `recover_time`).
    let out = site.deploy(&site.config(&site.uriworkermap()), "v1");
    assert!(out.status.success(), "first deploy: {}", text(&out));

    // The JkMountFile mode as `nonstop import modjk` writes it (no `status`): enabling a member
    // hands back its unchanged lbfactor, which needs no jkstatus.
    let config = site.config(&site.uriworkermap_as_imported());
    let report = rolling_under_load(&site, &config, "v2").await;
    check(
        "mod_jk uriworkermap (as imported, no status) rolling v1 -> v2",
        &report,
        "v2",
    );
    assert!(
        !report.users_started_on("tomcat1").is_empty()
            && !report.users_started_on("tomcat2").is_empty(),
        "sticky users on both nodes"
    );
    // Without jkstatus nothing resets a member that came back: mod_jk sends it the new sessions
    // until its load value catches up, so the next load may start on one node only.

    // uriworkermap mode with jkstatus read for busy counts.
    let config = site.config(&site.uriworkermap());
    let report = rolling_under_load(&site, &config, "v3").await;
    check("mod_jk uriworkermap rolling v2 -> v3", &report, "v3");

    // jkstatus mode, same guarantees.
    let config = site.config(&site.jkstatus());
    let report = rolling_under_load(&site, &config, "v4").await;
    check("mod_jk jkstatus rolling v3 -> v4", &report, "v4");

    // A WAR whose app fails to start: tomcat1 gets v4 back and rejoins, nothing fails meanwhile.
    let load = StickyLoad::start(&site.apache.url("/app/count"), 6, LoadOptions::default());
    let all: Vec<usize> = (0..6).collect();
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let out = site.deploy(&config, "bad");
    assert_eq!(out.status.code(), Some(2), "rolled back: {}", text(&out));
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let report = load.stop().await;
    check("failing WAR rolled back", &report, "v4");
    assert!(!report.by_version().contains_key("bad"));
    let restored = std::fs::read(site.bases[0].dir.join("webapps/app.war")).unwrap();
    assert_eq!(
        restored,
        std::fs::read(&site.wars["v4"]).unwrap(),
        "v4's WAR is back"
    );
}

/// A session drain (`sessions = true`, 60 s) over Tomcats whose manager counts sessions: the
/// drain of a node ends when its last session ends (here a logout), an empty node's at once,
/// and the journal says so; before, each drain waited the full 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_drain_ends_when_tomcat_counts_no_session() {
    let site = Site::start().await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    // Every base gets the manager (a lazy `map(..).next_back()` would install only the last).
    let passwords: Vec<_> = site
        .bases
        .iter()
        .map(|b| b.install_manager("nonstop", "drain-counter-pw").unwrap())
        .collect();
    let password = passwords.last().unwrap();
    let manager = format!(
        ", manager_user = \"nonstop\", manager_password_file = \"{}\"",
        password.display()
    );
    let config = site.config_with(
        &site.jkstatus(),
        &manager,
        "{ timeout = \"60s\", sessions = true }",
    );
    let out = site.deploy(&config, "v1");
    assert!(out.status.success(), "first deploy: {}", text(&out));

    // One user with a session on tomcat1 (straight to its HTTP port, not through mod_jk).
    let http = client();
    let tomcat1 = format!("http://127.0.0.1:{}/app", site.bases[0].http_port);
    let login = send(&http, "GET", &format!("{tomcat1}/count"), &[], "")
        .await
        .unwrap();
    let cookie = login.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("JSESSIONID="), "{cookie}");

    let started = std::time::Instant::now();
    let deploy = Command::new(nonstop_bin())
        .args(["deploy", "shop"])
        .arg(&site.wars["v2"])
        .args(["--version", "v2", "--json", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = |node: &str| {
        status_json(&config)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .map(|n| n["balancer"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while state("tomcat1") != "draining" {
        assert!(
            std::time::Instant::now() < deadline,
            "tomcat1 never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While the session is open the drain holds: tomcat1 stays draining on v1 for 3 s.
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            state("tomcat1"),
            "draining",
            "the drain ended with a session open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logout = send(
        &http,
        "GET",
        &format!("{tomcat1}/logout"),
        &[("cookie", cookie.as_str())],
        "",
    )
    .await
    .unwrap();
    assert!(logout.body.contains("logged-out"), "{}", logout.body);
    let out = deploy.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "deploy v2: {}", text(&out));
    assert_all_on(&config, "v2");
    let drains: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| Some(e["message"].as_str()?.to_string()))
        .filter(|m| m.starts_with("drain ended"))
        .collect();
    eprintln!("deploy v2 took {took:?}; drains: {drains:#?}");
    let waited: Vec<u64> = drains
        .iter()
        .filter_map(|m| {
            m.strip_prefix(
                "drain ended on sessions = 0 (Tomcat manager, context /app) and in-flight = 0 after ",
            )?
            // The step's duration follows: `3200ms (3.2s)`.
            .split_once("ms")?
            .0
            .parse()
            .ok()
        })
        .collect();
    assert_eq!(
        waited.len(),
        2,
        "each drain ended on the session count: {drains:?}"
    );
    assert!(
        (3_000..60_000).contains(&waited[0]),
        "tomcat1's drain waited for its session, not for the timeout: {waited:?}"
    );
    assert!(waited[1] < 5_000, "tomcat2 had no session: {waited:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

/// is-deploy's workers.properties: `balancer_ex2` mounts `/balancer_ex2/*` on tomcat1 alone.
/// Taking tomcat1 out of `balancer` would leave that mount on a restarting Tomcat, so `config
/// check` refuses (naming the line, or what jkstatus lists) and so does a deploy, before any
/// change. Before, config check passed and the jkstatus mode took the member out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_another_lb_worker_needs_is_refused_before_anything_changes() {
    let site = Site::start_with(SiteOptions {
        extra_lbs: vec![("balancer_ex2".into(), vec!["tomcat1".into()])],
        ..SiteOptions::default()
    })
    .await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    let check = |config: &Path| {
        Command::new(nonstop_bin())
            .args(["config", "check"])
            .arg(config)
            .output()
            .unwrap()
    };
    let jkstatus = site.config(&site.jkstatus());
    let out = check(&jkstatus);
    let said = text(&out);
    eprintln!("config check, jkstatus mode:\n{said}");
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("`tomcat1` is also a member of lb worker `balancer_ex2` (jkstatus lists it in `worker.balancer_ex2.balance_workers`, as its only member)"),
        "{said}"
    );
    let out = check(&site.config(&site.uriworkermap()));
    let said = text(&out);
    eprintln!("config check, JkMountFile mode:\n{said}");
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("(workers.properties line ") && said.contains("as its only member"),
        "{said}"
    );

    let mounts = std::fs::read_to_string(&site.apache.mount_file).unwrap();
    let out = site.deploy(&jkstatus, "v1");
    let said = text(&out);
    eprintln!("deploy, jkstatus mode:\n{said}");
    // The site's shape, not the release: an environment error (3), never "rolled back" (2).
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("Nothing was changed"), "{said}");
    assert!(!said.contains("rolled back"), "{said}");
    assert!(said.contains("the service is as it was before"), "{said}");
    for node in status_json(&jkstatus)["nodes"].as_array().unwrap() {
        assert_eq!(
            node["balancer"], "active",
            "no member was taken out: {node}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&site.apache.mount_file).unwrap(),
        mounts
    );
}

/// Day one over Tomcats an operator started (`catalina.sh run` of the configured bases, v1
/// deployed by hand): nonstop does not adopt them. The deploy is refused at plan time (exit 3),
/// naming each Tomcat's pid and the shutdown command of its base, before any balancer change;
/// the operator's Tomcats keep serving every sticky user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcats_an_operator_started_are_named_at_plan_time_and_nothing_changes() {
    let site = Site::start().await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    let mut operators = Vec::new();
    for base in &site.bases {
        std::fs::copy(&site.wars["v1"], base.dir.join("webapps/app.war")).unwrap();
        let mut opts = java_opts();
        opts.push(format!("-Dnonstop.http.port={}", base.http_port));
        let child = Command::new("/usr/share/tomcat10/bin/catalina.sh")
            .arg("run")
            .env("CATALINA_HOME", "/usr/share/tomcat10")
            .env("CATALINA_BASE", &base.dir)
            .env("CATALINA_OPTS", opts.join(" "))
            .current_dir(&base.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        operators.push(support::Proc { child });
    }
    let http = client();
    for base in &site.bases {
        let url = format!("http://127.0.0.1:{}/app/health", base.http_port);
        support::wait_until(
            &format!("the operator's Tomcat on {url}"),
            Duration::from_secs(90),
            || async {
                send(&http, "GET", &url, &[], "")
                    .await
                    .is_ok_and(|r| r.status == 200)
            },
        )
        .await;
    }
    let config = site.config(&site.jkstatus());
    let states = |config: &Path| -> Vec<String> {
        status_json(config)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| format!("{} {}", n["node"], n["balancer"]))
            .collect()
    };
    let before = states(&config);
    let (load, users) = users_on_both(&site, 2).await;
    let started = std::time::Instant::now();
    let out = site.deploy(&config, "v2");
    let took = started.elapsed();
    load.wait_progress(&users, 3, Duration::from_secs(30)).await;
    let report = load.stop().await;
    let said = text(&out);
    eprintln!("day one over the operator's Tomcats: {took:?}\n{said}");
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("nothing was changed"), "{said}");
    let pid = operators[0].pid();
    assert!(
        said.contains(&format!(
            "a Tomcat of tomcat1's CATALINA_BASE {} (pid {pid},",
            site.bases[0].dir.display()
        )),
        "the holder is named: {said}"
    );
    // The test's bases have no shutdown port (`<Server port="-1">`): SIGTERM is the way.
    assert!(
        said.contains(&format!("stop it with `kill {pid}`")),
        "how to stop it: {said}"
    );
    assert!(
        took < Duration::from_secs(20),
        "refused at plan time: {took:?}"
    );
    assert_eq!(states(&config), before, "no balancer change");
    check(
        "the operator's Tomcats during the refused deploy",
        &report,
        "v1",
    );
    for operator in &mut operators {
        operator.assert_running("the operator's Tomcat");
    }
}
