//! `nonstop deploy` of WARs through the Tomcat Manager (`deploy = "manager"`) to two real Tomcat
//! 10 instances (jvmRoute tomcat1/tomcat2) behind a real `nonstop proxy` with sticky JSESSIONID
//! routes:
//!
//! - `parallel = true` (a `Beside` runtime): rolling v1 → v2 deploys `app##v2` next to `app##v1`
//!   on a node that keeps serving; the sticky users from before stay on v1 with unbroken counts
//!   until they log out, and the engine retires v1 as soon as its sessions end (not at the
//!   grace); a v3 whose context fails to start is rolled back, v2 serving throughout; a v4
//!   deploy interrupted while v4 runs beside v2 rolls back without draining (v2 adopted);
//! - `parallel = false` (`InPlace`): a rolling `update=true` redeploy, each node drained first.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nonstop_runtime_tomcat::manager::Manager;
use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad, Url, request_once};
use nonstop_testkit::tomcat::{TomcatBase, Variant, build_war, java_opts};
use support::*;

const USER: &str = "deployer";
const PASSWORD: &str = "m4nager-Secret";
const AJP_SECRET: &str = "ajp-secret-unused";
/// Long enough that a retire waiting for it would show in the deploy's duration.
const STOP_GRACE: Duration = Duration::from_secs(20);
const ROUTES: [&str; 2] = ["tomcat1", "tomcat2"];

struct Site {
    proxy: Proxy,
    bases: Vec<TomcatBase>,
    password_file: PathBuf,
    work: tempfile::TempDir,
}

impl Site {
    /// Two Tomcat bases with the manager webapp and a proxy whose config has `[services.shop]`
    /// in manager mode (`parallel` or in place).
    fn start(parallel: bool) -> Site {
        let work = tempfile::tempdir().unwrap();
        let bases: Vec<TomcatBase> = ROUTES
            .iter()
            .map(|route| {
                let port = nonstop_testkit::free_port;
                TomcatBase::create(
                    &work.path().join(route),
                    port(),
                    port(),
                    -1,
                    route,
                    AJP_SECRET,
                )
                .unwrap()
            })
            .collect();
        let mut password_file = PathBuf::new();
        for base in &bases {
            password_file = base
                .install_manager(USER, PASSWORD)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let opts: Vec<String> = java_opts().iter().map(|o| format!("\"{o}\"")).collect();
        let bases_toml: Vec<String> = bases
            .iter()
            .map(|b| format!("{} = \"{}\"", b.jvm_route, b.dir.display()))
            .collect();
        let mut config = format!(
            r#"[proxy]
listen = "127.0.0.1:0"
admin = "unix:{socket}"

[pools.shop]
sticky = {{ kind = "jsessionid" }}

[services.shop]
strategy = "rolling"
balancer = {{ kind = "builtin", pool = "shop" }}
runtime = {{ kind = "tomcat", catalina_home = "/usr/share/tomcat10", context = "app", health_path = "/app/health", bases = {{ {bases} }}, java_opts = [{opts}], startup_timeout = "90s", stop_grace = "{grace}s", deploy = "manager", manager_user = "{USER}", manager_password_file = "{password}", parallel = {parallel} }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/app/health", interval = "100ms", deadline = "60s", successes = 2 }}
drain = {{ timeout = "2s" }}
verify = "500ms"
"#,
            socket = dir.path().join("admin.sock").display(),
            bases = bases_toml.join(", "),
            opts = opts.join(", "),
            grace = STOP_GRACE.as_secs(),
            password = password_file.display(),
            releases = work.path().join("releases").display(),
        );
        for b in &bases {
            config.push_str(&format!(
                "\n[[services.shop.nodes]]\nname = \"{}\"\nport = {}\n",
                b.jvm_route, b.http_port
            ));
        }
        write(&dir.path().join("nonstop.toml"), &config);
        let proxy = Proxy::start_in(dir);
        Site {
            proxy,
            bases,
            password_file,
            work,
        }
    }

    fn war(&self, version: &str, variant: Variant) -> PathBuf {
        build_war(&self.work.path().join("wars"), version, variant).unwrap()
    }

    fn deploy_command(&self, version: &str, variant: Variant) -> Command {
        let mut command = Command::new(nonstop_bin());
        command
            .args(["deploy", "shop"])
            .arg(self.war(version, variant))
            .args(["--version", version, "--config"])
            .arg(self.proxy.config_path())
            .stdin(Stdio::null());
        command
    }

    fn deploy(&self, version: &str, variant: Variant) -> Output {
        self.deploy_command(version, variant).output().unwrap()
    }

    /// `nonstop status`: every node runs `version` and takes traffic.
    fn assert_all_on(&self, version: &str) {
        support::assert_all_on(&self.proxy.config_path(), version);
    }

    /// Every node serves `version` and its Tomcat lists `app##VERSION` running, nothing else.
    async fn assert_only(&self, version: &str) {
        self.assert_all_on(version);
        for base in &self.bases {
            let listed = self.listed(base).await;
            assert!(
                listed.len() == 1 && listed[0].starts_with(&format!("app##{version}:running")),
                "{listed:?}"
            );
        }
    }

    /// What the manager of `base` lists for `/app`: `NAME:STATE:SESSIONS`.
    async fn listed(&self, base: &TomcatBase) -> Vec<String> {
        Manager {
            url: format!("http://127.0.0.1:{}/manager/text", base.http_port),
            user: USER.into(),
            password_file: self.password_file.clone(),
        }
        .list(Duration::from_secs(10))
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.path == "/app")
        .map(|l| format!("{}:{}:{}", l.name, l.state, l.sessions))
        .collect()
    }

    /// The version that answers a request without a session on `base`'s own port (the newest
    /// deployed one); `/slow?ms=0` creates no session.
    async fn newest_on(&self, base: &TomcatBase) -> Option<String> {
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/app/slow?ms=0",
            base.http_port
        ))
        .unwrap();
        request_once(&url, "JSESSIONID", None, Duration::from_secs(5))
            .await
            .version
    }
}

fn options() -> LoadOptions {
    LoadOptions {
        pause: Duration::from_millis(20),
        ..LoadOptions::default()
    }
}

/// Sticky users through the proxy until at least `per_node` of them started on each Tomcat.
async fn users_on_both(site: &Site, per_node: usize) -> (StickyLoad, Vec<usize>) {
    StickyLoad::spread_over(
        &site.proxy.url("/app/count"),
        4,
        options(),
        &ROUTES,
        per_node,
        10,
    )
    .await
}

/// Lets every user of `load` get 5 more answers, stops it, prints `what` with its summary and
/// asserts that no request failed.
async fn finish(load: StickyLoad, what: &str) -> LoadReport {
    let all: Vec<usize> = (0..load.snapshot().users.len()).collect();
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let report = load.stop().await;
    eprintln!("{what}; load: {}", report.summary());
    report.assert_none_failed(what);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_deployment_rolls_beside_the_old_version_and_a_failing_war_rolls_back() {
    let site = Site::start(true);
    let _instances = KillUnder(site.work.path().to_path_buf());
    let out = site.deploy("v1", Variant::Good);
    assert!(out.status.success(), "first deploy: {}", text(&out));
    site.assert_all_on("v1");

    // --- v1 -> v2 while the users from before keep counting on v1.
    let (mut load, old_users) = users_on_both(&site, 2).await;
    let before = load.snapshot();
    let started = Instant::now();
    let deploy = {
        let mut command = site.deploy_command("v2", Variant::Good);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let mut beside_at = Vec::new();
    for (base, route) in site.bases.iter().zip(ROUTES) {
        // app##v2 deployed beside app##v1 on this node: requests without a session get v2.
        wait_until(
            &format!("{route} serves v2 to new sessions"),
            Duration::from_secs(90),
            || async { site.newest_on(base).await.as_deref() == Some("v2") },
        )
        .await;
        beside_at.push(load.elapsed());
        let listed = site.listed(base).await;
        eprintln!(
            "{route}: v2 beside v1 after {:?}: {listed:?}",
            started.elapsed()
        );
        let users = before.users_started_on(route);
        // Its v1 users keep their sessions while v2 runs beside them...
        load.wait_progress(&users, 5, Duration::from_secs(30)).await;
        // ...until they log out: v1 has no sessions left and is retired at once.
        let answers = load.log_out(&users, &site.proxy.url("/app/logout")).await;
        for a in &answers {
            assert!(
                a.ok && a.version.as_deref() == Some("v1") && a.route.as_deref() == Some(route),
                "logout on {route} v1: {a:?}"
            );
        }
    }
    let out = deploy.await.unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "rolling deploy of v2: {}", text(&out));
    assert!(
        !stdout.contains(": draining"),
        "a parallel deploy drains no node: {stdout}"
    );
    assert!(
        took < STOP_GRACE,
        "both v1 retired once their sessions ended, not at the {STOP_GRACE:?} grace: {took:?}"
    );
    site.assert_all_on("v2");
    for (base, route) in site.bases.iter().zip(ROUTES) {
        let listed = site.listed(base).await;
        eprintln!("{route} after the deploy: {listed:?}");
        assert!(
            listed.len() == 1 && listed[0].starts_with("app##v2:running"),
            "{route}: v1 undeployed: {listed:?}"
        );
    }
    let new_users = load.add_users(4);
    load.wait_progress(&new_users, 5, Duration::from_secs(30))
        .await;
    let report = load.stop().await;
    let what = format!("parallel v1 -> v2: deploy took {took:?}");
    eprintln!("{what}; load: {}", report.summary());
    report.assert_none_failed(&what);
    let resets = report
        .check_counts()
        .unwrap_or_else(|bad| panic!("{:#?}", &bad[..bad.len().min(5)]));
    assert!(resets.is_empty(), "no session lost or reset: {resets:?}");
    for &u in &old_users {
        let samples: Vec<_> = report.users[u].iter().filter(|s| s.ok).collect();
        assert!(
            samples.iter().all(|s| s.version.as_deref() == Some("v1")),
            "user {u} from before the deploy stayed on v1"
        );
        let route = report.first_route(u).unwrap();
        let i = ROUTES.iter().position(|r| *r == route).unwrap();
        // Answered once v2 ran beside v1, as `wait_progress` counted them (a request sent just
        // before and answered after counts there too).
        let after = samples
            .iter()
            .filter(|s| s.answered_at() > beside_at[i])
            .count();
        assert!(after >= 5, "user {u} counted on v1 beside v2 on {route}");
    }
    let kept: u64 = old_users.iter().filter_map(|&u| report.last_count(u)).sum();
    eprintln!(
        "{} sessions from before the deploy kept to the end ({kept} requests counted in them), {} new users",
        old_users.len(),
        new_users.len()
    );
    for &u in &new_users {
        assert!(
            report.users[u]
                .iter()
                .all(|s| s.version.as_deref() == Some("v2")),
            "new user {u} goes to v2"
        );
    }
    let new_routes: std::collections::BTreeSet<_> = new_users
        .iter()
        .filter_map(|&u| report.first_route(u))
        .collect();
    assert_eq!(new_routes.len(), 2, "new users on both nodes");

    // --- a v3 whose context fails to start: rolled back, v2 serving throughout.
    let (load, _) = users_on_both(&site, 1).await;
    let started = Instant::now();
    let out = site.deploy("v3", Variant::Failing);
    let took = started.elapsed();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(2), "rolled back: {}", text(&out));
    assert!(
        text(&out).contains("fails at startup on purpose"),
        "Tomcat's words: {}",
        text(&out)
    );
    let report = finish(load, &format!("failing v3: rolled back after {took:?}")).await;
    assert_eq!(report.by_version().keys().collect::<Vec<_>>(), ["v2"]);
    let resets = report.check_counts().unwrap();
    assert!(resets.is_empty(), "no session lost: {resets:?}");
    site.assert_only("v2").await;

    // --- a deploy interrupted while tomcat1 runs v4 beside v2 (its v2 users still counting):
    // the rollback undeploys v4 and adopts the v2 that never stopped, without draining.
    let (load, _) = users_on_both(&site, 1).await;
    let mut command = site.deploy_command("v4", Variant::Good);
    let mut deploy = Proc {
        child: command.stdout(Stdio::piped()).spawn().unwrap(),
    };
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = deploy.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(90))
            .expect("the deploy retires tomcat1's v2 within 90s");
        if line.contains("retire tomcat1 v2") {
            break line;
        }
    };
    let listed = site.listed(&site.bases[0]).await;
    eprintln!("interrupting at `{line}`; tomcat1 lists {listed:?}");
    assert!(listed.iter().any(|l| l.starts_with("app##v4:running")));
    let started = Instant::now();
    deploy.signal("TERM");
    let status = deploy.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(2), "interrupted deploy rolled back");
    let after: Vec<String> = lines.try_iter().collect();
    eprintln!("{}", after.join("\n"));
    assert!(
        after
            .iter()
            .any(|l| l.contains("tomcat1 still runs v2 beside v4")),
        "the rollback adopted v2 beside v4: {after:?}"
    );
    assert!(
        !after.iter().any(|l| l.contains("drain tomcat1")),
        "no drain: {after:?}"
    );
    let what = format!("interrupted v4: rolled back {took:?} after the signal");
    let report = finish(load, &what).await;
    let resets = report.check_counts().unwrap();
    assert!(resets.is_empty(), "no session lost: {resets:?}");
    site.assert_only("v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_manager_deploys_roll_through_drained_nodes() {
    let site = Site::start(false);
    let _instances = KillUnder(site.work.path().to_path_buf());
    let out = site.deploy("v1", Variant::Good);
    assert!(out.status.success(), "first deploy: {}", text(&out));
    let (load, _) = users_on_both(&site, 2).await;
    let started = Instant::now();
    let out = site.deploy("v2", Variant::Good);
    let took = started.elapsed();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "in-place deploy of v2: {}",
        text(&out)
    );
    site.assert_all_on("v2");
    let report = finish(load, &format!("in place v1 -> v2: deploy took {took:?}")).await;
    assert!(report.by_version().contains_key("v2"));
    // An in-place redeploy ends the node's sessions: its users move to the other node (or start
    // again on v2), never with a broken count inside one session.
    let resets = report
        .check_counts()
        .unwrap_or_else(|bad| panic!("{:#?}", &bad[..bad.len().min(5)]));
    eprintln!("in place: {} sessions restarted", resets.len());
    for base in &site.bases {
        assert_eq!(site.listed(base).await.len(), 1);
    }
}
