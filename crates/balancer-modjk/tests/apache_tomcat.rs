//! The mod_jk driver end to end: ONE real Apache httpd + mod_jk (our own instance, own ServerRoot
//! in a temp dir) in front of TWO real Tomcat 10 instances started by `TomcatRuntime`, under a
//! sticky load that runs through every scenario:
//!
//! a. uriworkermap mode: drain tomcat1 (`;disabled=`), new sessions avoid it while its sessions
//!    keep counting, stop it (`;stopped=`), redeploy v2 with TomcatRuntime, re-activate;
//! b. jkstatus mode: the same with v3, and the drain's end is read from `busy` (in_flight) while
//!    a /slow request is running on tomcat1;
//! c. a failing WAR: TomcatRuntime reports it from the log quickly, the previous WAR brings the
//!    node back and it rejoins;
//! d. jkstatus security: 401 without credentials on loopback; from a network namespace (veth)
//!    403 even with the right password, while /app/health answers.
//!
//! 0 failed requests overall; within a session every count is the previous one + 1; a session
//! moves off tomcat1 only while tomcat1 is taken out (right after an activation, 60 requests of
//! tomcat1 sessions must all reach tomcat1); users never on tomcat1 keep one session throughout.
//! The JVMs and Apache start once for the whole file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nonstop_balancer_modjk::{ModjkBalancer, ModjkConfig, ModjkMode, StatusWorker};
use nonstop_http_client as http;
use nonstop_ports::{
    Balancer, Instance, InstanceSpec, LbState, Member, NodeName, Runtime, Version,
};
use nonstop_runtime_tomcat::{TomcatConfig, TomcatRuntime};
use nonstop_testkit::apache::{Apache, ApacheOptions, JkMember, LB_WORKER};
use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad, request_once};
use nonstop_testkit::netns::NetnsVeth;
use nonstop_testkit::tomcat::{self, TomcatBase, Variant};
use nonstop_testkit::{ProcessGuard, free_port, wait_until};

const T1: &str = "tomcat1";
const T2: &str = "tomcat2";
const LONG: Duration = Duration::from_secs(30);
const SLOW_MS: u64 = 2500;

/// On a panic, prints what the servers logged (before the directory goes).
struct Diagnostics {
    logs: Vec<PathBuf>,
}

impl Drop for Diagnostics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    ["error", "fail", "SEVERE", "Caused by"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            eprintln!(
                "--- {} ({} error lines, last 10):\n{}",
                path.display(),
                lines.len(),
                lines[lines.len().saturating_sub(10)..].join("\n")
            );
        }
    }
}

struct Fixture {
    // Dropped in this order: logs printed on a panic, Apache (SIGTERM), the JVMs, the
    // namespace, the directory.
    _diagnostics: Diagnostics,
    apache: Apache,
    runtime: TomcatRuntime,
    running: BTreeMap<String, Instance>,
    guard: ProcessGuard,
    netns: Result<NetnsVeth, String>,
    root: PathBuf,
    bases: BTreeMap<String, TomcatBase>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        eprintln!(
            "fixture dir {} (NONSTOP_TEST_KEEP=1 keeps it)",
            root.display()
        );
        let pid = std::process::id();
        // Created first: Apache can only Listen on the veth address once it exists.
        let netns = NetnsVeth::create_free(&pid.to_string());
        if let Err(e) = &netns {
            eprintln!("network namespace unavailable: {e}");
        }
        let secret = format!("ajp{pid}x{}", free_port());
        let mut bases = BTreeMap::new();
        for node in [T1, T2] {
            let base = TomcatBase::create(
                &root.join(node),
                free_port(),
                free_port(),
                -1,
                node,
                &secret,
            )
            .unwrap();
            bases.insert(node.to_string(), base);
        }
        let runtime = TomcatRuntime::new(TomcatConfig {
            catalina_home: tomcat::CATALINA_HOME.into(),
            bases: bases
                .iter()
                .map(|(n, b)| (n.clone(), b.dir.clone()))
                .collect(),
            context: "app".into(),
            health_path: Some("/app/health".into()),
            java_opts: tomcat::java_opts(),
            startup_timeout: "60s".into(),
            ..Default::default()
        })
        .unwrap();
        let mut options = ApacheOptions::new(
            bases
                .values()
                .map(|b| JkMember {
                    name: b.jvm_route.clone(),
                    route: b.jvm_route.clone(),
                    ajp_port: b.ajp_port,
                    secret: secret.clone(),
                })
                .collect(),
        );
        // mod_jk updates the members' `busy` in shared memory under its lock only with the
        // pessimistic lock; the drains below end on busy == 0, so the count must be exact.
        options.lb_settings.push(("lock".into(), "P".into()));
        if let Ok(ns) = &netns {
            options.extra_listen.push(IpAddr::V4(ns.host_addr));
        }
        let apache = Apache::start(&root.join("apache"), options)
            .await
            .expect("start apache2");
        let mut fixture = Fixture {
            _diagnostics: Diagnostics {
                logs: vec![
                    apache.error_log.clone(),
                    apache.jk_log.clone(),
                    root.join(format!("{T1}.log")),
                    root.join(format!("{T2}.log")),
                ],
            },
            apache,
            runtime,
            running: BTreeMap::new(),
            guard: ProcessGuard::new(),
            netns,
            root,
            bases,
            _dir: match std::env::var_os("NONSTOP_TEST_KEEP") {
                Some(_) => {
                    let _ = dir.keep();
                    None
                }
                None => Some(dir),
            },
        };
        let v1 = fixture.war("v1", Variant::Good);
        let started = Instant::now();
        let (spec1, spec2) = (fixture.spec(T1, "v1", &v1), fixture.spec(T2, "v1", &v1));
        let (a, b) = tokio::join!(fixture.runtime.start(&spec1), fixture.runtime.start(&spec2));
        for (node, result) in [(T1, a), (T2, b)] {
            let instance = result.unwrap_or_else(|e| panic!("{node} v1: {e}"));
            fixture.guard.track(instance.pid);
            fixture.running.insert(node.to_string(), instance);
        }
        // Both members answer through Apache over AJP when a cookie names their route.
        for node in [T1, T2] {
            let url = http::Url::parse(&fixture.apache.url("/app/count")).unwrap();
            let sample =
                request_once(&url, "JSESSIONID", Some(&format!("check.{node}")), LONG).await;
            assert!(
                sample.ok && sample.route.as_deref() == Some(node),
                "{node} does not answer through Apache: {sample:?}"
            );
        }
        eprintln!(
            "fixture: two Tomcats (v1) healthy in {:?}, Apache on 127.0.0.1:{} (pid {})",
            started.elapsed(),
            fixture.apache.port,
            fixture.apache.pid
        );
        fixture
    }

    fn war(&self, version: &str, variant: Variant) -> PathBuf {
        tomcat::build_war(&self.root.join("wars"), version, variant).unwrap()
    }

    fn spec(&self, node: &str, version: &str, war: &Path) -> InstanceSpec {
        InstanceSpec {
            node: NodeName::from(node),
            port: self.bases[node].http_port,
            version: Version::from(version),
            release_dir: self.root.join("releases").join(version),
            artifact: war.to_path_buf(),
            env: BTreeMap::new(),
            log: self.root.join(format!("{node}.log")),
        }
    }

    async fn stop_node(&mut self, node: &str) -> Duration {
        let instance = self.running.remove(node).expect("node is running");
        let started = Instant::now();
        self.runtime
            .stop(&instance, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(!self.runtime.is_running(&instance).await);
        // SIGTERM ran Tomcat's shutdown hook: the connectors were stopped, not killed.
        let log = std::fs::read_to_string(&instance.log).unwrap();
        let last_start = log.rfind("--- nonstop: starting Tomcat").unwrap_or(0);
        assert!(
            log[last_start..].contains("Stopping service [Catalina]"),
            "{node} stopped gracefully: {}",
            &log[last_start..]
        );
        started.elapsed()
    }

    /// TomcatRuntime::start; the JVM is tracked for cleanup when it comes up.
    async fn start_node(
        &mut self,
        node: &str,
        version: &str,
        war: &Path,
    ) -> (Result<(), String>, Duration) {
        let started = Instant::now();
        let result = self.runtime.start(&self.spec(node, version, war)).await;
        let took = started.elapsed();
        match result {
            Ok(instance) => {
                self.guard.track(instance.pid);
                self.running.insert(node.to_string(), instance);
                (Ok(()), took)
            }
            Err(e) => (Err(e.to_string()), took),
        }
    }

    fn status_worker(&self) -> StatusWorker {
        StatusWorker {
            url: self.apache.status_url.clone(),
            user: Some(self.apache.status_user.clone()),
            password_file: Some(self.apache.password_file.clone()),
        }
    }

    fn urimap_balancer(&self) -> ModjkBalancer {
        ModjkBalancer::new(ModjkConfig {
            lb_worker: LB_WORKER.into(),
            mode: ModjkMode::Uriworkermap {
                file: self.apache.mount_file.clone(),
                reload_secs: self.apache.mount_reload_secs,
                workers_file: self.apache.workers_file.clone(),
                status: Some(self.status_worker()),
            },
            probe_url: Some(self.apache.url("/app/count")),
            session_cookie: "JSESSIONID".into(),
            confirm_timeout: "30s".into(),
            confirm_requests: 40,
        })
        .unwrap()
    }

    fn jkstatus_balancer(&self) -> ModjkBalancer {
        let s = self.status_worker();
        ModjkBalancer::new(ModjkConfig {
            lb_worker: LB_WORKER.into(),
            mode: ModjkMode::Jkstatus {
                url: s.url,
                user: s.user,
                password_file: s.password_file,
            },
            probe_url: None,
            session_cookie: "JSESSIONID".into(),
            confirm_timeout: "30s".into(),
            confirm_requests: 40,
        })
        .unwrap()
    }

    /// GET on the node's own HTTP port, bypassing Apache.
    async fn direct(&self, node: &str, path: &str) -> http::Response {
        let url = http::Url::parse(&format!(
            "http://127.0.0.1:{}{path}",
            self.bases[node].http_port
        ))
        .unwrap();
        http::get(&url, Vec::new(), Duration::from_secs(5))
            .await
            .unwrap()
    }
}

async fn member(lb: &ModjkBalancer, node: &str) -> Member {
    lb.members()
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.node.as_str() == node)
        .unwrap_or_else(|| panic!("no member {node}"))
}

/// Adds users two at a time until at least `n` are on `route` (a new user's first answer names
/// its node); returns the users on `route`.
async fn ensure_users_on(load: &mut StickyLoad, route: &str, n: usize) -> Vec<usize> {
    for _ in 0..15 {
        let on = load.snapshot().users_on(route);
        if on.len() >= n {
            return on;
        }
        let added = load.add_users(2);
        load.wait_progress(&added, 1, LONG).await;
    }
    panic!(
        "could not get {n} users onto {route}: {}",
        load.snapshot().summary()
    );
}

/// Requests and failures between two snapshots.
fn delta(before: &LoadReport, after: &LoadReport) -> (usize, usize) {
    let sent = after.sent() - before.sent();
    let failed = after.failures().len() - before.failures().len();
    (sent, failed)
}

struct Roll {
    /// On the load's clock: from just before tomcat1 was stopped in the balancer to just after
    /// it was active again. Only then may a session move off tomcat1.
    out_window: (Duration, Duration),
    set_draining: Duration,
    drained: Duration,
    set_stopped: Duration,
    stop_jvm: Duration,
    start_jvm: Duration,
    activate: Duration,
    requests: usize,
    failed: usize,
}

/// One maintenance of tomcat1 with `lb`, under the running load: Draining (new sessions avoid
/// it, its sessions keep counting), wait for in_flight 0, Disabled (its users move to tomcat2),
/// stop the JVM, start `version`, Active (new sessions reach it with `version`).
/// With `slow`, a /slow request is on tomcat1 as the drain starts and the drain must outlast it.
async fn roll_tomcat1(
    fx: &mut Fixture,
    lb: &ModjkBalancer,
    load: &mut StickyLoad,
    label: &str,
    version: &str,
    slow: bool,
) -> Roll {
    let n1 = NodeName::from(T1);
    let t1_users = ensure_users_on(load, T1, 2).await;
    let t2_users = ensure_users_on(load, T2, 2).await;
    let before = load.snapshot();
    eprintln!(
        "{label}: users on tomcat1 {t1_users:?}, on tomcat2 {t2_users:?}; {}",
        before.summary()
    );

    // A long request bound to tomcat1 by its route, running as the drain starts.
    let slow_task = if slow {
        let url = http::Url::parse(&fx.apache.url(&format!("/app/slow?ms={SLOW_MS}"))).unwrap();
        let sent_at = Instant::now();
        let task = tokio::spawn(async move {
            let sample = request_once(&url, "JSESSIONID", Some("slowprobe.tomcat1"), LONG).await;
            (sample, Instant::now())
        });
        let seen = wait_until(
            "tomcat1 reports the /slow request in busy",
            LONG,
            || async { member(lb, T1).await.in_flight >= 1 },
        )
        .await;
        eprintln!("{label}: /slow?ms={SLOW_MS} in flight on tomcat1 (busy >= 1 after {seen:?})");
        Some((task, sent_at))
    } else {
        None
    };

    let started = Instant::now();
    lb.set_state(&n1, LbState::Draining).await.unwrap();
    let set_draining = started.elapsed();
    let drain_started_at = load.elapsed();
    let m = member(lb, T1).await;
    assert_eq!(m.state, LbState::Draining, "{label}: {m:?}");
    if slow {
        assert!(
            m.in_flight >= 1,
            "{label}: the /slow request is in flight: {m:?}"
        );
        eprintln!(
            "{label}: tomcat1 draining, in_flight {} (jkstatus busy)",
            m.in_flight
        );
    }

    // The drain ends when tomcat1's in-flight count (mod_jk's busy) reaches 0.
    let busy_reads = std::sync::atomic::AtomicU32::new(0);
    let drained = wait_until(&format!("{label}: tomcat1 in_flight 0"), LONG, || async {
        let idle = member(lb, T1).await.in_flight == 0;
        if !idle {
            busy_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        idle
    })
    .await;
    let busy_reads = busy_reads.into_inner();
    let drained_at = Instant::now();
    if let Some((task, sent_at)) = slow_task {
        let (sample, done_at) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the /slow answer arrives once busy is 0")
            .unwrap();
        assert!(sample.ok, "{label}: /slow failed: {sample:?}");
        assert_eq!(sample.route.as_deref(), Some(T1), "{label}: {sample:?}");
        // busy cannot be 0 before the servlet has slept SLOW_MS after the request was sent.
        let slow_for = Duration::from_millis(SLOW_MS);
        assert!(
            drained_at - sent_at >= slow_for,
            "{label}: drain ended {:?} after /slow was sent, before its {slow_for:?}",
            drained_at - sent_at
        );
        eprintln!(
            "{label}: drained (in_flight 0) {drained:?} after draining started, after \
             {busy_reads} reads of jkstatus with in_flight >= 1; /slow answered {:?} after it \
             was sent, in_flight 0 seen {:?} after it was sent",
            done_at - sent_at,
            drained_at - sent_at
        );
    }

    // New sessions avoid tomcat1; tomcat1's sessions keep counting there.
    let new_users = load.add_users(4);
    load.wait_progress(&new_users, 3, LONG).await;
    load.wait_progress(&t1_users, 5, LONG).await;
    let snap = load.snapshot();
    for &u in &new_users {
        assert!(
            snap.users[u]
                .iter()
                .filter(|s| s.ok)
                .all(|s| s.route.as_deref() == Some(T2)),
            "{label}: new user {u} reached tomcat1 while it drains: {:?}",
            snap.users[u]
        );
    }
    for &u in &t1_users {
        let since: Vec<_> = snap.users[u]
            .iter()
            .filter(|s| s.ok && s.at >= drain_started_at)
            .collect();
        assert!(since.len() >= 5, "{label}: user {u}");
        assert!(
            since.iter().all(|s| s.route.as_deref() == Some(T1)),
            "{label}: user {u} left tomcat1 while it drained: {since:?}"
        );
        assert!(
            since
                .windows(2)
                .all(|w| w[1].count == w[0].count.map(|c| c + 1)),
            "{label}: user {u}'s count did not go up by 1 on tomcat1: {since:?}"
        );
    }
    eprintln!(
        "{label}: while draining, {} new users all went to tomcat2; tomcat1's users {t1_users:?} \
         kept counting there (last counts {:?})",
        new_users.len(),
        t1_users
            .iter()
            .map(|&u| snap.last_count(u))
            .collect::<Vec<_>>()
    );

    // Stopped: nothing reaches tomcat1; its users fail over to tomcat2 with a new session.
    let started = Instant::now();
    let out_from = load.elapsed();
    lb.set_state(&n1, LbState::Disabled).await.unwrap();
    let set_stopped = started.elapsed();
    assert_eq!(member(lb, T1).await.state, LbState::Disabled);
    wait_until(
        &format!("{label}: tomcat1's users moved to tomcat2"),
        LONG,
        || {
            let snap = load.snapshot();
            let moved = t1_users.iter().all(|&u| snap.last_route(u) == Some(T2));
            async move { moved }
        },
    )
    .await;
    wait_until(&format!("{label}: tomcat1 idle"), LONG, || async {
        member(lb, T1).await.in_flight == 0
    })
    .await;

    let stop_jvm = fx.stop_node(T1).await;
    let war = fx.war(version, Variant::Good);
    let (started_ok, start_jvm) = fx.start_node(T1, version, &war).await;
    started_ok.unwrap_or_else(|e| panic!("{label}: tomcat1 {version}: {e}"));
    let body = fx.direct(T1, "/app/count").await.body;
    assert!(body.contains(&format!("version={version} ")), "{body}");

    let started = Instant::now();
    lb.set_state(&n1, LbState::Active).await.unwrap();
    let activate = started.elapsed();
    let out_window = (out_from, load.elapsed());
    assert_eq!(member(lb, T1).await.state, LbState::Active);
    // Once Active is confirmed, every Apache child sends a tomcat1 session to tomcat1: none
    // still fails it over (that would lose the session). Fresh connections spread the requests
    // over the children.
    let url = http::Url::parse(&fx.apache.url("/app/count")).unwrap();
    let mut elsewhere = Vec::new();
    for i in 0..60 {
        let sample = request_once(&url, "JSESSIONID", Some(&format!("s{i}.{T1}")), LONG).await;
        assert!(sample.ok, "{label}: {sample:?}");
        if sample.route.as_deref() != Some(T1) {
            elsewhere.push(i);
        }
    }
    assert!(
        elsewhere.is_empty(),
        "{label}: right after activation, {} of 60 requests of tomcat1 sessions went to \
         another node (requests {elsewhere:?})",
        elsewhere.len()
    );
    let back = ensure_users_on(load, T1, 1).await;
    let snap = load.snapshot();
    assert!(
        back.iter().any(|&u| snap.users[u]
            .iter()
            .any(|s| s.version.as_deref() == Some(version))),
        "{label}: no new session reached tomcat1 {version}"
    );
    let (requests, failed) = delta(&before, &snap);
    Roll {
        set_draining,
        drained,
        out_window,
        set_stopped,
        stop_jvm,
        start_jvm,
        activate,
        requests,
        failed,
    }
}

fn print_roll(label: &str, r: &Roll) {
    eprintln!(
        "{label}: {} requests, {} failed; set draining {:?}, drained after {:?}, set stopped {:?}, \
         JVM stop {:?}, JVM start to healthy {:?}, activate {:?}",
        r.requests,
        r.failed,
        r.set_draining,
        r.drained,
        r.set_stopped,
        r.stop_jvm,
        r.start_jvm,
        r.activate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_mod_jk_in_front_of_two_tomcats() {
    let test_started = Instant::now();
    let mut fx = Fixture::start().await;
    let setup = test_started.elapsed();

    let mut load = StickyLoad::start(
        &fx.apache.url("/app/count"),
        8,
        LoadOptions {
            pause: Duration::from_millis(30),
            max_duration: Duration::from_secs(240),
            ..LoadOptions::default()
        },
    );

    // a. uriworkermap rule extensions.
    let urimap = fx.urimap_balancer();
    let found = urimap.check_environment().await.unwrap();
    assert!(
        found.contains("jkstatus answers with 2 member(s)"),
        "{found}"
    );
    assert_eq!(
        urimap
            .members()
            .await
            .unwrap()
            .iter()
            .map(|m| (m.node.to_string(), m.state))
            .collect::<Vec<_>>(),
        [
            (T1.to_string(), LbState::Active),
            (T2.to_string(), LbState::Active)
        ]
    );
    let a = roll_tomcat1(&mut fx, &urimap, &mut load, "a/uriworkermap", "v2", false).await;
    print_roll("a/uriworkermap", &a);
    let mounts = std::fs::read_to_string(&fx.apache.mount_file).unwrap();
    assert_eq!(
        mounts,
        Apache::initial_mounts(),
        "re-activation restores the file"
    );
    let reloads = fx.apache.jk_log_lines("Reloaded urimaps");
    eprintln!(
        "a/uriworkermap: mod_jk logged {} per-child reloads of the JkMountFile",
        reloads.len()
    );
    assert!(!reloads.is_empty());

    // b. jkstatus, drain end read from busy during a /slow request.
    let jk = fx.jkstatus_balancer();
    let b = roll_tomcat1(&mut fx, &jk, &mut load, "b/jkstatus", "v3", true).await;
    print_roll("b/jkstatus", &b);

    // c. A WAR that fails at startup, then the previous WAR.
    let before_c = load.snapshot();
    let n1 = NodeName::from(T1);
    jk.set_state(&n1, LbState::Draining).await.unwrap();
    wait_until("c: tomcat1 in_flight 0", LONG, || async {
        member(&jk, T1).await.in_flight == 0
    })
    .await;
    let c_out_from = load.elapsed();
    jk.set_state(&n1, LbState::Disabled).await.unwrap();
    fx.stop_node(T1).await;
    let failing = fx.war("v4", Variant::Failing);
    let (result, failed_after) = fx.start_node(T1, "v4", &failing).await;
    let error = result.expect_err("a WAR whose listener throws must not start");
    eprintln!(
        "c: TomcatRuntime::start(v4 failing) returned an error after {failed_after:?}: {}",
        error.lines().next().unwrap_or_default()
    );
    assert!(
        error.contains("Tomcat logged"),
        "c: the failure is read from the log: {error}"
    );
    assert!(
        failed_after < Duration::from_secs(20),
        "c: reported in {failed_after:?}, long before the 60s startup timeout"
    );
    assert!(!fx.running.contains_key(T1));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", fx.bases[T1].http_port)).is_err(),
        "c: the failed Tomcat was stopped again"
    );
    let previous = fx
        .runtime
        .previous_war(&n1)
        .expect("the v3 WAR was kept as previous.war");
    let (result, back_after) = fx.start_node(T1, "v3", &previous).await;
    result.unwrap_or_else(|e| panic!("c: previous WAR: {e}"));
    let body = fx.direct(T1, "/app/count").await.body;
    assert!(body.contains("version=v3 "), "c: {body}");
    jk.set_state(&n1, LbState::Active).await.unwrap();
    let c_window = (c_out_from, load.elapsed());
    let rejoined = ensure_users_on(&mut load, T1, 1).await;
    let after_c = load.snapshot();
    let (c_requests, c_failed) = delta(&before_c, &after_c);
    eprintln!(
        "c/failing-war: {c_requests} requests, {c_failed} failed; failing start reported in \
         {failed_after:?}, previous WAR healthy in {back_after:?}; users on tomcat1 again: {rejoined:?}"
    );

    // The whole load: no failed request; counts go up by exactly 1 within every session; only
    // users that were on tomcat1 when it was stopped lost their session (no replication).
    let report = load.stop().await;
    let failures = report.failures();
    eprintln!(
        "load: {} users, {}; first failures: {:?}",
        report.users.len(),
        report.summary(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(report.sent() > 1000, "a real load: {}", report.sent());
    assert_eq!(failures.len(), 0, "failed requests");
    let resets = report.check_counts().unwrap_or_else(|bad| {
        panic!(
            "{} count violations, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        )
    });
    let windows = [a.out_window, b.out_window, c_window];
    for r in &resets {
        let at = report.users[r.user][r.seq as usize].at;
        assert!(
            r.from_route.as_deref() == Some(T1)
                && windows.iter().any(|(from, to)| *from <= at && at <= *to),
            "a session was lost outside the times tomcat1 was taken out {windows:?}: {r:?} at {at:?}"
        );
    }
    let never_on_t1: Vec<usize> = (0..report.users.len())
        .filter(|&u| {
            report.users[u]
                .iter()
                .all(|s| !s.ok || s.route.as_deref() == Some(T2))
        })
        .collect();
    for &u in &never_on_t1 {
        let ok = report.users[u].iter().filter(|s| s.ok).count() as u64;
        assert_eq!(report.last_count(u), Some(ok), "user {u} kept one session");
    }
    eprintln!(
        "load: {} sessions moved tomcat1 -> tomcat2 when tomcat1 stopped; {} users only ever on \
         tomcat2 kept one session each (final counts {:?})",
        resets.len(),
        never_on_t1.len(),
        never_on_t1
            .iter()
            .map(|&u| report.last_count(u).unwrap_or(0))
            .collect::<Vec<_>>()
    );
    for m in jk.members().await.unwrap() {
        assert_eq!(m.in_flight, 0, "busy back to 0 after the load: {m:?}");
        assert_eq!(m.state, LbState::Active);
    }

    // Members come from workers.properties: a known one registers, an unknown one is refused;
    // weights go through jkstatus (lbfactor).
    jk.register(&NodeName::from(T1), "ignored").await.unwrap();
    let unknown = jk
        .register(&NodeName::from("tomcat3"), "127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("balance_workers"), "{unknown}");
    jk.set_weight(&NodeName::from(T2), 3).await.unwrap();
    assert_eq!(member(&jk, T2).await.weight, 3);
    assert_eq!(
        member(&urimap, T2).await.weight,
        3,
        "the uriworkermap mode reads live lbfactors from its status worker"
    );
    jk.set_weight(&NodeName::from(T2), 1).await.unwrap();
    assert_eq!(member(&jk, T2).await.weight, 1);

    // d. The status worker: loopback plus Basic auth.
    let list = "/jkstatus?cmd=list&mime=prop";
    let url = http::Url::parse(&fx.apache.url(list)).unwrap();
    let anonymous = http::get(&url, Vec::new(), LONG).await.unwrap();
    assert_eq!(anonymous.status, 401, "d: no credentials on loopback");
    let wrong = http::get(
        &url,
        vec![(
            "Authorization",
            http::basic_auth(&fx.apache.status_user, "wrong"),
        )],
        LONG,
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401, "d: wrong password on loopback");
    let right = http::get(
        &url,
        vec![(
            "Authorization",
            http::basic_auth(&fx.apache.status_user, &fx.apache.status_password),
        )],
        LONG,
    )
    .await
    .unwrap();
    assert_eq!(right.status, 200);
    assert!(right.body.contains("worker.result.type=OK"));
    eprintln!("d: loopback /jkstatus: no credentials 401, wrong password 401, right password 200");
    match &fx.netns {
        Ok(ns) => {
            let host = IpAddr::V4(ns.host_addr);
            let creds = (
                fx.apache.status_user.as_str(),
                fx.apache.status_password.as_str(),
            );
            let status = ns
                .curl_status(&fx.apache.url_on(host, list), Some(creds))
                .unwrap();
            let stop_t2 = ns
                .curl_status(
                    &fx.apache.url_on(
                        host,
                        "/jkstatus?cmd=update&mime=prop&w=balancer&sw=tomcat2&vwa=s",
                    ),
                    Some(creds),
                )
                .unwrap();
            let anonymous_ns = ns.curl_status(&fx.apache.url_on(host, list), None).unwrap();
            let health = ns
                .curl_status(&fx.apache.url_on(host, "/app/health"), None)
                .unwrap();
            eprintln!(
                "d: from netns {} ({} -> {}): /jkstatus list with the right password {status}, \
                 update with the right password {stop_t2}, without credentials {anonymous_ns}; \
                 /app/health {health}",
                ns.name, ns.ns_addr, ns.host_addr
            );
            assert_eq!(status, 403, "d: jkstatus from outside loopback");
            assert_eq!(stop_t2, 403, "d: jkstatus update from outside loopback");
            assert_eq!(health, 200, "d: the app is reachable from the namespace");
            assert_eq!(
                member(&jk, T2).await.state,
                LbState::Active,
                "d: nothing changed"
            );
        }
        Err(e) if std::env::var_os("NONSTOP_TEST_NO_NETNS").is_some() => {
            eprintln!("d: network-namespace check skipped (NONSTOP_TEST_NO_NETNS): {e}")
        }
        Err(e) => panic!(
            "d: cannot create a network namespace ({e}); it needs root/CAP_NET_ADMIN and iproute2; \
             set NONSTOP_TEST_NO_NETNS=1 to skip only this check"
        ),
    }

    let errors = fx.apache.jk_log_lines("[error]");
    eprintln!(
        "mod_jk log: {} error lines {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );

    let apache_pid = fx.apache.pid;
    for node in [T1, T2] {
        fx.stop_node(node).await;
    }
    let Fixture { apache, .. } = fx;
    apache.stop().await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{apache_pid}")).exists(),
        "apache2 exited and was reaped"
    );
    eprintln!(
        "total: setup {setup:?}, whole test {:?}; a: {} requests, b: {}, c: {c_requests}; \
         {} requests overall, 0 failed",
        test_started.elapsed(),
        a.requests,
        b.requests,
        report.sent()
    );
}
