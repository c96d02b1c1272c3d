//! `deploy = "manager"` against a real Tomcat 10 (Debian's tomcat10 + tomcat10-admin), one
//! Tomcat for the whole file, two contexts in it:
//!
//! - `/app` deployed in place (`update=true`) under a request stream: what a redeploy costs;
//! - `/par` as Tomcat parallel deployments (`par##v1`, `par##v2`): sessions from before stay on
//!   v1, new ones go to v2, nothing fails; v1 is undeployed once its sessions are gone;
//! - a WAR whose context fails to start, in both modes: Tomcat's words in the error, the old
//!   version serving again (in place) or all along (parallel);
//! - a version that sorts before the running one is refused; a wrong password is named by user
//!   and URL, never by its value.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nonstop_http_client as http;
use nonstop_ports::{Instance, InstanceSpec, NodeName, Runtime, Version};
use nonstop_runtime_tomcat::manager::Manager;
use nonstop_runtime_tomcat::{DEFAULT_MANAGER_URL, ManagerConfig, TomcatConfig, TomcatRuntime};
use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad, request_once};
use nonstop_testkit::tomcat::{self, TomcatBase, Variant};
use nonstop_testkit::{ProcessGuard, free_port, wait_until};

const USER: &str = "deployer";
const PASSWORD: &str = "m4nager-Secret";

struct Fixture {
    root: PathBuf,
    base: TomcatBase,
    password_file: PathBuf,
}

impl Fixture {
    fn runtime(&self, context: &str, parallel: bool, password_file: &Path) -> TomcatRuntime {
        TomcatRuntime::with_manager(
            TomcatConfig {
                catalina_home: tomcat::CATALINA_HOME.into(),
                bases: [("tomcat1".to_string(), self.base.dir.clone())].into(),
                context: context.into(),
                health_path: Some(format!("/{context}/health")),
                java_opts: tomcat::java_opts(),
                startup_timeout: "60s".into(),
                ..Default::default()
            },
            ManagerConfig {
                url: DEFAULT_MANAGER_URL.into(),
                urls: Default::default(),
                user: USER.into(),
                password_file: password_file.to_path_buf(),
                parallel,
            },
        )
        .unwrap()
    }

    fn spec(&self, version: &str, variant: Variant) -> InstanceSpec {
        InstanceSpec {
            node: NodeName::from("tomcat1"),
            port: self.base.http_port,
            version: Version::from(version),
            release_dir: self.root.join("release").join(version),
            artifact: tomcat::build_war(&self.root.join("wars"), version, variant).unwrap(),
            env: Default::default(),
            log: self.root.join("tomcat1.log"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.base.http_port)
    }

    fn manager(&self) -> Manager {
        Manager {
            url: DEFAULT_MANAGER_URL.replace("{port}", &self.base.http_port.to_string()),
            user: USER.into(),
            password_file: self.password_file.clone(),
        }
    }

    async fn listed(&self, context: &str) -> Vec<String> {
        let path = format!("/{context}");
        self.manager()
            .list(Duration::from_secs(10))
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.path == path)
            .map(|l| format!("{}:{}:{}", l.name, l.state, l.sessions))
            .collect()
    }
}

fn options() -> LoadOptions {
    LoadOptions {
        pause: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..LoadOptions::default()
    }
}

/// The longest run of failed answers, as time between the first and the last of them.
fn longest_gap(report: &LoadReport) -> Duration {
    let mut samples: Vec<_> = report.samples().collect();
    samples.sort_by_key(|s| s.at);
    let (mut best, mut start) = (Duration::ZERO, None::<Duration>);
    for s in samples {
        match (s.ok, start) {
            (false, None) => start = Some(s.at),
            (false, Some(from)) => best = best.max(s.at + s.latency - from),
            (true, _) => start = None,
        }
    }
    best
}

fn first_failures(report: &LoadReport) -> Vec<String> {
    let mut seen: Vec<String> = report
        .failures()
        .iter()
        .map(|s| s.error.clone().unwrap_or_default())
        .map(|e| e.chars().take(60).collect())
        .collect();
    seen.sort();
    seen.dedup();
    seen.truncate(4);
    seen
}

async fn body(url: &str) -> String {
    let url = http::Url::parse(url).unwrap();
    match http::get(&url, Vec::new(), Duration::from_secs(5)).await {
        Ok(r) => format!("{} {}", r.status, r.body),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_deploys_in_place_and_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let base = TomcatBase::create(
        &root.join("tomcat1"),
        free_port(),
        free_port(),
        -1,
        "tomcat1",
        "secret1",
    )
    .unwrap();
    let password_file = base.install_manager(USER, PASSWORD).unwrap();
    let fx = Fixture {
        root,
        base,
        password_file,
    };
    let guard = ProcessGuard::new();
    let track = |i: &Instance| guard.track(i.pid);

    // --- in place: v1 (this starts the Tomcat), then v2 with update=true under load.
    let app = fx.runtime("app", false, &fx.password_file);
    let started = Instant::now();
    let app_v1 = app.start(&fx.spec("v1", Variant::Good)).await.unwrap();
    track(&app_v1);
    eprintln!(
        "in place: Tomcat started and app v1 deployed in {:?} (JVM pid {})",
        started.elapsed(),
        app_v1.pid
    );
    assert!(app.is_running(&app_v1).await);
    let load = StickyLoad::start(&fx.url("/app/count"), 4, options());
    load.wait_progress(&[0, 1, 2, 3], 5, Duration::from_secs(20))
        .await;
    let started = Instant::now();
    let app_v2 = app.start(&fx.spec("v2", Variant::Good)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(app_v2.pid, app_v1.pid, "the same JVM: Tomcat kept running");
    load.wait_progress(&[0, 1, 2, 3], 5, Duration::from_secs(20))
        .await;
    let report = load.stop().await;
    let failed = report.sent() - report.ok();
    eprintln!(
        "in place: update=true deploy of v2 took {took:?}; {}; longest failing stretch {:?}; {:?}",
        report.summary(),
        longest_gap(&report),
        first_failures(&report)
    );
    assert!(report.by_version().contains_key("v2"));
    assert!(
        !app.is_running(&app_v1).await,
        "v1 was replaced: its instance no longer runs"
    );
    assert!(app.is_running(&app_v2).await);
    // A late stop of the replaced instance must not undeploy its successor.
    app.stop(&app_v1, Duration::from_secs(5)).await.unwrap();
    assert!(body(&fx.url("/app/count")).await.contains("version=v2"));
    let _ = failed;

    // --- a failing WAR in place: Tomcat's words, and v2 deployed again by the runtime.
    let load = StickyLoad::start(&fx.url("/app/count"), 2, options());
    load.wait_progress(&[0, 1], 3, Duration::from_secs(20))
        .await;
    let started = Instant::now();
    let error = app
        .start(&fx.spec("v3", Variant::Failing))
        .await
        .expect_err("a context that cannot start")
        .to_string();
    let took = started.elapsed();
    load.wait_progress(&[0, 1], 3, Duration::from_secs(30))
        .await;
    let report = load.stop().await;
    eprintln!(
        "in place, failing v3: error after {took:?}:\n{error}\n-- load: {}; longest failing stretch {:?}",
        report.summary(),
        longest_gap(&report)
    );
    assert!(error.contains("FAIL"), "Tomcat's FAIL line: {error}");
    assert!(
        error.contains("fails at startup on purpose"),
        "Tomcat's log words: {error}"
    );
    assert!(
        error.contains("the WAR deployed before was deployed again"),
        "{error}"
    );
    assert!(body(&fx.url("/app/count")).await.contains("version=v2"));
    assert!(app.is_running(&app_v2).await, "v2 serves again");

    // --- wrong password: named by user and URL, not by value.
    let wrong = fx.root.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let error = fx
        .runtime("app", false, &wrong)
        .start(&fx.spec("v4", Variant::Good))
        .await
        .expect_err("a wrong password")
        .to_string();
    eprintln!("wrong password: {error}");
    assert!(
        error.contains("user `deployer` was refused (HTTP 401)"),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "http://127.0.0.1:{}/manager/text/list",
            fx.base.http_port
        )),
        "{error}"
    );
    assert!(!error.contains("not-the-password") && !error.contains(PASSWORD));
    assert!(body(&fx.url("/app/count")).await.contains("version=v2"));

    // --- parallel: par##v1 with sessions, then par##v2 beside it.
    let par = fx.runtime("par", true, &fx.password_file);
    let par_v1 = par.start(&fx.spec("v1", Variant::Good)).await.unwrap();
    assert_eq!(par_v1.pid, app_v1.pid);
    let mut load = StickyLoad::start(&fx.url("/par/count"), 4, options());
    let old_users = [0, 1, 2, 3];
    load.wait_progress(&old_users, 5, Duration::from_secs(20))
        .await;
    let refused = par
        .start(&fx.spec("v0", Variant::Good))
        .await
        .expect_err("v0 sorts before v1")
        .to_string();
    eprintln!("parallel, v0 after v1: {refused}");
    assert!(refused.contains("sorts after"), "{refused}");
    let started = Instant::now();
    let par_v2 = par.start(&fx.spec("v2", Variant::Good)).await.unwrap();
    let deployed_at = load.elapsed();
    eprintln!(
        "parallel: par##v2 deployed beside par##v1 in {:?}; list {:?}",
        started.elapsed(),
        fx.listed("par").await
    );
    let new_users = load.add_users(4);
    load.wait_progress(&new_users, 5, Duration::from_secs(20))
        .await;
    load.wait_progress(&old_users, 5, Duration::from_secs(20))
        .await;
    assert!(par.is_running(&par_v1).await && par.is_running(&par_v2).await);
    let report = load.stop().await;
    eprintln!(
        "parallel: {}; failing stretch {:?}",
        report.summary(),
        longest_gap(&report)
    );
    assert_eq!(report.failures().len(), 0, "{:?}", first_failures(&report));
    for &u in &old_users {
        let after: Vec<_> = report.users[u]
            .iter()
            .filter(|s| s.at > deployed_at)
            .collect();
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|s| s.version.as_deref() == Some("v1")),
            "user {u} with a v1 session stays on v1"
        );
    }
    for &u in &new_users {
        assert!(
            report.users[u]
                .iter()
                .all(|s| s.version.as_deref() == Some("v2")),
            "new user {u} goes to v2"
        );
    }
    report.check_counts().expect("no session lost or reset");

    // The old users log out; stop(v1) undeploys it as soon as its sessions are gone.
    let logout = http::Url::parse(&fx.url("/par/logout")).unwrap();
    for &u in &old_users {
        let session = report.users[u].last().and_then(|s| s.session.clone());
        let s = request_once(
            &logout,
            "JSESSIONID",
            session.as_deref(),
            Duration::from_secs(5),
        )
        .await;
        assert!(s.ok && s.version.as_deref() == Some("v1"), "{s:?}");
    }
    let grace = Duration::from_secs(30);
    let started = Instant::now();
    par.stop(&par_v1, grace).await.unwrap();
    let took = started.elapsed();
    eprintln!(
        "parallel: stop(v1) after its sessions ended took {took:?}; list {:?}",
        fx.listed("par").await
    );
    assert!(took < grace, "not the grace: the sessions reached 0");
    assert!(!par.is_running(&par_v1).await);
    assert_eq!(fx.listed("par").await, ["par##v2:running:4"]);

    // --- parallel, failing v3 under load: v2 serves throughout.
    let load = StickyLoad::start(&fx.url("/par/count"), 4, options());
    load.wait_progress(&[0, 1, 2, 3], 3, Duration::from_secs(20))
        .await;
    let error = par
        .start(&fx.spec("v3", Variant::Failing))
        .await
        .expect_err("a context that cannot start")
        .to_string();
    let mut load = load;
    let late = load.add_users(2);
    load.wait_progress(&late, 3, Duration::from_secs(20)).await;
    let report = load.stop().await;
    eprintln!(
        "parallel, failing v3: {}\n-- load: {}",
        error.lines().next().unwrap_or_default(),
        report.summary()
    );
    assert!(error.contains("fails at startup on purpose"), "{error}");
    assert!(error.contains("still serving: par##v2"), "{error}");
    assert_eq!(report.failures().len(), 0, "{:?}", first_failures(&report));
    assert_eq!(report.by_version().keys().collect::<Vec<_>>(), ["v2"]);
    wait_until("par##v3 gone", Duration::from_secs(10), || async {
        !fx.listed("par")
            .await
            .iter()
            .any(|l| l.starts_with("par##v3"))
    })
    .await;
    assert!(par.is_running(&par_v2).await);
}
