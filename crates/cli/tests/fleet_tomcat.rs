//! Tomcat parallel deployment on remote hosts: two Tomcat 10 bases, each on its own host (a
//! network namespace) and started there by `nonstop agent`, behind the built-in proxy with
//! sticky JSESSIONID routes. A v1 → v2 deploy through the agents runs `app##v2` beside `app##v1`:
//! sticky users keep counting on v1 until they log out, new sessions get v2, v1 is undeployed
//! once its sessions end; a v3 whose context fails to start is rolled back, v2 serving; a v4
//! retires a v2 whose session stays open at the grace, longer than an agent call's timeout;
//! `nonstop rollback` to v2 is refused by the host's runtime (v4 sorts last), v4 serving.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad, Url, request_once};
use nonstop_testkit::tomcat::{TomcatBase, Variant, build_war, java_opts};
use support::fleet::{self, Host, deploy_with};
use support::*;

const USER: &str = "deployer";
const PASSWORD: &str = "m4nager-Secret";
/// Longer than an agent call's own 30 s timeout, and long enough that a retire waiting for it
/// would show in the deploy's duration.
const STOP_GRACE: Duration = Duration::from_secs(35);
const ROUTES: [&str; 2] = ["tomcat1", "tomcat2"];
const HOSTS: [&str; 2] = ["web1", "web2"];

struct Site {
    proxy: Proxy,
    hosts: Vec<Host>,
    bases: Vec<TomcatBase>,
    console_state: PathBuf,
    work: tempfile::TempDir,
}

impl Site {
    /// One host per Tomcat base (tomcat1 on web1, tomcat2 on web2), their agents running, and a
    /// proxy whose `[services.shop]` deploys in manager mode with `parallel = true`.
    async fn start() -> Site {
        let tag = std::process::id() % 100_000;
        let work = tempfile::tempdir().unwrap();
        let console_state = work.path().join("console");
        let mut hosts = fleet::hosts(&format!("{tag}t"), &HOSTS, work.path(), &console_state);
        let bases: Vec<TomcatBase> = ROUTES
            .iter()
            .map(|route| {
                let port = nonstop_testkit::free_port;
                let dir = work.path().join(route);
                let base =
                    TomcatBase::create(&dir, port(), port(), -1, route, "ajp-unused").unwrap();
                // The proxy outside the namespace reaches it on the host's address.
                base.listen_http_on("0.0.0.0").unwrap();
                base
            })
            .collect();
        let mut password_file = PathBuf::new();
        for base in &bases {
            password_file = base.install_manager(USER, PASSWORD).unwrap();
        }
        let opts: Vec<String> = java_opts().iter().map(|o| format!("\"{o}\"")).collect();
        let bases_toml: Vec<String> = bases
            .iter()
            .map(|b| format!("{} = \"{}\"", b.jvm_route, b.dir.display()))
            .collect();
        let mut rest = String::from("[pools.shop]\nsticky = { kind = \"jsessionid\" }\n\n");
        for (name, host) in HOSTS.iter().zip(&hosts) {
            rest.push_str(&format!(
                "[hosts.{name}]\nagent = \"{}\"\n\n",
                host.agent_addr()
            ));
        }
        rest.push_str(&format!(
            r#"[services.shop]
strategy = "rolling"
balancer = {{ kind = "builtin", pool = "shop" }}
runtime = {{ kind = "tomcat", catalina_home = "/usr/share/tomcat10", context = "app", health_path = "/app/health", bases = {{ {bases} }}, java_opts = [{opts}], startup_timeout = "90s", stop_grace = "{grace}s", deploy = "manager", manager_user = "{USER}", manager_password_file = "{password}", parallel = true }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/app/health", interval = "100ms", deadline = "60s", successes = 2 }}
drain = {{ timeout = "2s" }}
verify = "500ms"
"#,
            bases = bases_toml.join(", "),
            opts = opts.join(", "),
            grace = STOP_GRACE.as_secs(),
            password = password_file.display(),
            releases = work.path().join("console-releases").display(),
        ));
        for (base, host) in bases.iter().zip(HOSTS) {
            rest.push_str(&format!(
                "\n[[services.shop.nodes]]\nname = \"{}\"\nhost = \"{host}\"\nport = {}\n",
                base.jvm_route, base.http_port
            ));
        }
        let proxy = Proxy::start("", &rest);
        for host in &mut hosts {
            host.start_agent(&proxy.config_path()).await;
        }
        Site {
            proxy,
            hosts,
            bases,
            console_state,
            work,
        }
    }

    /// `nonstop deploy shop WAR --version V --fleet ...`, to be awaited (or spawned).
    fn deploy(
        &self,
        version: &str,
        variant: Variant,
    ) -> impl std::future::Future<Output = std::process::Output> + Send + 'static {
        let war = build_war(&self.work.path().join("wars"), version, variant).unwrap();
        let (config, fleet) = (self.proxy.config_path(), self.console_state.clone());
        let version = version.to_string();
        async move { deploy_with(&config, &fleet, "shop", &version, &war, &[]).await }
    }

    /// What the manager of node `i` lists for `/app` (`NAME:STATE:SESSIONS`), asked from inside
    /// its host: the manager answers on loopback only.
    fn listed(&self, i: usize) -> Vec<String> {
        let url = format!(
            "http://127.0.0.1:{}/manager/text/list",
            self.bases[i].http_port
        );
        let auth = format!("{USER}:{PASSWORD}");
        let out = self.hosts[i]
            .ns
            .exec(&["curl", "-s", "--max-time", "10", "-u", &auth, &url])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("OK"),
            "manager list on {}: {text}",
            ROUTES[i]
        );
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() == 4 && f[0] == "/app").then(|| format!("{}:{}:{}", f[3], f[1], f[2]))
            })
            .collect()
    }

    /// Every node runs `version` (`nonstop status`) and its Tomcat lists only `app##VERSION`.
    fn assert_only(&self, version: &str) {
        let fleet = self.console_state.display().to_string();
        let (ok, status) = self
            .proxy
            .cli(&["status", "shop", "--json", "--fleet", &fleet]);
        assert!(ok, "{status}");
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        for node in status["nodes"].as_array().unwrap() {
            assert_eq!(node["version"], version, "{node}");
            assert_eq!(node["balancer"], "active", "{node}");
        }
        for (i, route) in ROUTES.iter().enumerate() {
            let listed = self.listed(i);
            assert!(
                listed.len() == 1 && listed[0].starts_with(&format!("app##{version}:running")),
                "{route}: {listed:?}"
            );
        }
    }

    /// The version that answers a request without a session on node `i`'s own address (the
    /// newest deployed one); `/slow?ms=0` creates no session.
    async fn newest_on(&self, i: usize) -> Option<String> {
        let url = Url::parse(&format!(
            "http://{}:{}/app/slow?ms=0",
            self.hosts[i].ns.ns_addr, self.bases[i].http_port
        ))
        .unwrap();
        request_once(&url, "JSESSIONID", None, Duration::from_secs(5))
            .await
            .version
    }

    /// `nonstop history shop --fleet ...`.
    fn history(&self) -> String {
        let fleet = self.console_state.display().to_string();
        let (ok, history) = self.proxy.cli(&["history", "shop", "--fleet", &fleet]);
        assert!(ok, "{history}");
        history
    }
}

/// Keep-alive sticky users (one connection each, never resending) through the proxy until at
/// least `per_node` of them started on each Tomcat.
async fn users_on_both(site: &Site, per_node: usize) -> (StickyLoad, Vec<usize>) {
    let options = LoadOptions {
        pause: Duration::from_millis(20),
        keep_alive: true,
        ..LoadOptions::default()
    };
    StickyLoad::spread_over(
        &site.proxy.url("/app/count"),
        4,
        options,
        &ROUTES,
        per_node,
        10,
    )
    .await
}

/// Logs `users` out (their sessions end), stops `load`, prints `what` with its summary, asserts
/// that no request failed and that no session's count broke or restarted.
async fn finish(mut load: StickyLoad, site: &Site, users: &[usize], what: &str) -> LoadReport {
    for a in load.log_out(users, &site.proxy.url("/app/logout")).await {
        assert!(a.ok, "{what}: logout {a:?}");
    }
    let report = load.stop().await;
    eprintln!("{what}; load: {}", report.summary());
    report.assert_none_failed(what);
    let resets = report
        .check_counts()
        .unwrap_or_else(|bad| panic!("{what}: {:#?}", &bad[..bad.len().min(5)]));
    assert!(resets.is_empty(), "{what}: no session lost: {resets:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_deployment_through_agents_keeps_sessions_and_rolls_back_a_failing_war() {
    let site = Site::start().await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    let out = site.deploy("v1", Variant::Good).await;
    assert!(out.status.success(), "first deploy: {}", text(&out));
    site.assert_only("v1");

    // --- v1 -> v2 through the agents while the users from before keep counting on v1.
    let (mut load, old_users) = users_on_both(&site, 2).await;
    let before = load.snapshot();
    let started = Instant::now();
    let deploy = tokio::spawn(site.deploy("v2", Variant::Good));
    let mut beside_at = Vec::new();
    for (i, route) in ROUTES.iter().enumerate() {
        wait_until(
            &format!("{route} serves v2 to new sessions"),
            Duration::from_secs(120),
            || async { site.newest_on(i).await.as_deref() == Some("v2") },
        )
        .await;
        beside_at.push(load.elapsed());
        let listed = site.listed(i);
        eprintln!(
            "{route}: v2 beside v1 after {:?}: {listed:?}",
            started.elapsed()
        );
        assert!(
            listed.iter().any(|l| l.starts_with("app##v1:running")),
            "{route} still runs v1 beside v2: {listed:?}"
        );
        let users = before.users_started_on(route);
        // Its v1 users keep their sessions while v2 runs beside them...
        load.wait_progress(&users, 20, Duration::from_secs(30))
            .await;
        let listed = site.listed(i);
        assert!(
            listed.iter().any(|l| l.starts_with("app##v1:running:2")),
            "{route}: v1 holds its 2 sessions while they count: {listed:?}"
        );
        // ...until they log out: v1 has no sessions left and is retired at once.
        for a in load.log_out(&users, &site.proxy.url("/app/logout")).await {
            assert!(
                a.ok && a.version.as_deref() == Some("v1") && a.route.as_deref() == Some(route),
                "logout on {route} v1: {a:?}"
            );
        }
    }
    let out = deploy.await.unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "v2 through the agents: {}",
        text(&out)
    );
    assert!(!stdout.contains(": draining"), "no node drained: {stdout}");
    assert!(
        took < STOP_GRACE,
        "both v1 retired once their sessions ended, not at the {STOP_GRACE:?} grace: {took:?}"
    );
    site.assert_only("v2");
    let new_users = load.add_users(4);
    load.wait_progress(&new_users, 5, Duration::from_secs(30))
        .await;
    let what = format!("parallel v1 -> v2 via agents: deploy took {took:?}");
    let report = finish(load, &site, &new_users, &what).await;
    for &u in &old_users {
        let samples: Vec<_> = report.users[u].iter().filter(|s| s.ok).collect();
        assert!(
            samples.iter().all(|s| s.version.as_deref() == Some("v1")),
            "user {u} from before the deploy stayed on v1"
        );
        let route = report.first_route(u).unwrap();
        let i = ROUTES.iter().position(|r| *r == route).unwrap();
        // Answered once v2 ran beside v1, as `wait_progress` counted them.
        let after = samples
            .iter()
            .filter(|s| s.answered_at() > beside_at[i])
            .count();
        assert!(after >= 5, "user {u} counted on v1 beside v2 on {route}");
    }
    let kept: u64 = old_users.iter().filter_map(|&u| report.last_count(u)).sum();
    eprintln!(
        "{} sessions from before the deploy kept on v1 to their logout ({kept} requests counted in them), {} new users on v2",
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

    // --- a v3 whose context fails to start on web1: rolled back, v2 serving throughout.
    let (load, _) = users_on_both(&site, 1).await;
    let started = Instant::now();
    let out = site.deploy("v3", Variant::Failing).await;
    let took = started.elapsed();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(2), "rolled back: {}", text(&out));
    assert!(
        text(&out).contains("fails at startup on purpose"),
        "Tomcat's words from the host: {}",
        text(&out)
    );
    let all: Vec<usize> = (0..load.snapshot().users.len()).collect();
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let what = format!("failing v3 via agents: rolled back after {took:?}");
    let report = finish(load, &site, &all, &what).await;
    assert_eq!(report.by_version().keys().collect::<Vec<_>>(), ["v2"]);
    site.assert_only("v2");

    // --- v4 while a user keeps a v2 session open on tomcat1 and never logs out: v2 stays
    // deployed there until the grace, longer than an agent call's own timeout, then goes.
    let (load, _) = users_on_both(&site, 1).await;
    let before = load.snapshot();
    let started = Instant::now();
    let deploy = tokio::spawn(site.deploy("v4", Variant::Good));
    wait_until(
        "tomcat1 serves v4 to new sessions",
        Duration::from_secs(120),
        || async { site.newest_on(0).await.as_deref() == Some("v4") },
    )
    .await;
    let held = before.users_started_on(ROUTES[0]);
    load.wait_progress(&held, 5, Duration::from_secs(30)).await;
    // The users on tomcat2 log out, those on tomcat1 leave without: their v2 sessions stay.
    let on_web2 = before.users_started_on(ROUTES[1]);
    let report = finish(load, &site, &on_web2, "v4 with sessions held on tomcat1 v2").await;
    assert!(report.by_version().keys().all(|v| v == "v2"));
    let listed = site.listed(0);
    assert!(
        listed
            .iter()
            .any(|l| l.starts_with("app##v2:running:") && !l.ends_with(":0")),
        "tomcat1 v2 keeps its open sessions: {listed:?}"
    );
    let out = deploy.await.unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "v4 through the agents: {}",
        text(&out)
    );
    eprintln!("v4 with a v2 session held on tomcat1: deploy took {took:?} (grace {STOP_GRACE:?})");
    assert!(
        took >= STOP_GRACE && took < 2 * STOP_GRACE,
        "tomcat1 v2 retired at the grace, tomcat2 v2 (no sessions) at once: {took:?}"
    );
    site.assert_only("v4");

    // --- `nonstop rollback` to v2 beside v4: Tomcat would send new sessions to v4 (it sorts
    // last), so the runtime on the host refuses it before deploying; v4 serves throughout.
    let (load, _) = users_on_both(&site, 1).await;
    let fleet = site.console_state.display().to_string();
    let started = Instant::now();
    let out = site
        .proxy
        .command(&["rollback", "shop", "--fleet", &fleet])
        .output()
        .unwrap();
    let took = started.elapsed();
    eprintln!("rollback: {}", text(&out));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("runs app##v4 whose version sorts after (or as) `v2`"),
        "the host's runtime says why: {}",
        text(&out)
    );
    let all: Vec<usize> = (0..load.snapshot().users.len()).collect();
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let what = format!("rollback to v2 refused after {took:?}");
    let report = finish(load, &site, &all, &what).await;
    assert_eq!(report.by_version().keys().collect::<Vec<_>>(), ["v4"]);
    site.assert_only("v4");

    let history = site.history();
    eprintln!("{history}");
    // `#  STARTED  KIND  FROM → TO  STRATEGY  OUTCOME ...`: the outcome of `kind` to `to`.
    let outcome = |kind: &str, to: &str| {
        history
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() > 7 && w[2] == kind && w[5] == to)
            .map(|w| w[7].to_string())
            .unwrap_or_else(|| panic!("{kind} of {to} in the history: {history}"))
    };
    assert_eq!(outcome("deploy", "v2"), "succeeded", "{history}");
    assert_eq!(outcome("deploy", "v3"), "rolled-back", "{history}");
    assert_eq!(outcome("deploy", "v4"), "succeeded", "{history}");
    assert_eq!(outcome("rollback", "v2"), "rolled-back", "{history}");
}
