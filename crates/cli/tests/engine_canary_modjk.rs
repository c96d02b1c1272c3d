//! Canaries of WARs on two real Tomcat 10 slots behind real Apache + mod_jk (jkstatus mode): a WAR
//! failing 20 % is aborted at the first analysis, a good one promoted; and what `retries` changes.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nonstop_balancer_modjk::{StatusClient, StatusMember};
use nonstop_testkit::apache::{Apache, ApacheOptions, JkMember, LB_WORKER};
use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad};
use nonstop_testkit::tomcat::{TomcatBase, Variant, build_war, java_opts};
use support::{KillUnder, assert_exit, nonstop_bin, text, write};

const SECRET: &str = "ajp-secret-for-tests";
/// The first step's share and window, the second step's share.
const FIRST: (u32, Duration) = (20, Duration::from_secs(3));
const SECOND: u32 = 50;
/// The bad WAR answers 500 on this share of `/count` (every 5th request).
const ERROR_PERCENT: u8 = 20;

/// `min_requests = 5`: every 5 requests the bad WAR serves hold one 500, so no window it passes
/// with can be all good; mod_jk takes a failing member out, so more would be inconclusive.
fn canary_toml() -> String {
    format!(
        "canary = {{ steps = [{{ weight = {}, for = \"{}s\" }}, {{ weight = {SECOND}, for = \"3s\" }}], min_requests = 5 }}",
        FIRST.0,
        FIRST.1.as_secs()
    )
}

/// Apache + mod_jk over tomcat1/tomcat2 (each member `fail_on_status=500`), the WARs, the config.
struct Site {
    work: tempfile::TempDir,
    apache: Apache,
    wars: BTreeMap<&'static str, PathBuf>,
    config: PathBuf,
}

impl Site {
    /// `retries` is each member's mod_jk `retries` (attempts on the same Tomcat; default 2).
    async fn start(retries: Option<u32>) -> Site {
        let work = tempfile::tempdir().unwrap();
        let mut wars = BTreeMap::new();
        for (name, variant) in [
            ("v1", Variant::Good),
            (
                "v2",
                Variant::Erroring {
                    percent: ERROR_PERCENT,
                },
            ),
            ("v3", Variant::Good),
        ] {
            let war = build_war(&work.path().join("wars").join(name), name, variant).unwrap();
            wars.insert(name, war);
        }
        let bases: Vec<TomcatBase> = ["tomcat1", "tomcat2"]
            .iter()
            .map(|name| {
                let port = nonstop_testkit::free_port;
                TomcatBase::create(&work.path().join(name), port(), port(), -1, name, SECRET)
                    .unwrap()
            })
            .collect();
        let members = bases
            .iter()
            .map(|b| JkMember {
                name: b.jvm_route.clone(),
                route: b.jvm_route.clone(),
                ajp_port: b.ajp_port,
                secret: SECRET.into(),
            })
            .collect();
        let mut options = ApacheOptions::new(members);
        options
            .member_settings
            .push(("fail_on_status".into(), "500".into()));
        // mod_jk takes a member that failed out until `recover_time` has passed at a global
        // maintenance (defaults 60 s each): 1 s each gives the canary back within its window.
        options
            .lb_settings
            .push(("recover_time".into(), "1".into()));
        options
            .global_settings
            .push(("maintain".into(), "1".into()));
        if let Some(n) = retries {
            options
                .member_settings
                .push(("retries".into(), n.to_string()));
        }
        let apache = Apache::start(&work.path().join("apache"), options)
            .await
            .unwrap();
        let config = work.path().join("nonstop.toml");
        write(&config, &config_toml(&apache, &bases, &work));
        Site {
            work,
            apache,
            wars,
            config,
        }
    }

    fn deploy(&self, war: &str) -> Output {
        Command::new(nonstop_bin())
            .args(["deploy", "shop"])
            .arg(&self.wars[war])
            .args(["--version", war, "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn url(&self) -> String {
        self.apache.url("/app/count")
    }

    /// What the status worker says about each member now.
    async fn members(&self) -> Vec<StatusMember> {
        StatusClient::new(
            &self.apache.status_url,
            Some(self.apache.status_user.clone()),
            Some(self.apache.password_file.clone()),
        )
        .unwrap()
        .list(LB_WORKER)
        .await
        .unwrap()
    }

    /// Versions of `n` fresh requests' answers through Apache (all must be 200).
    async fn versions_now(&self, n: usize) -> Vec<String> {
        let url = nonstop_testkit::client::Url::parse(&self.url()).unwrap();
        let mut seen = Vec::new();
        for _ in 0..n {
            let s = nonstop_testkit::client::request_once(&url, "JSESSIONID", None, DEADLINE).await;
            assert!(s.ok, "{s:?}");
            seen.push(s.version.unwrap_or_default());
        }
        seen.sort();
        seen.dedup();
        seen
    }
}

const DEADLINE: Duration = Duration::from_secs(10);

fn config_toml(apache: &Apache, bases: &[TomcatBase], work: &tempfile::TempDir) -> String {
    let homes: Vec<String> = bases
        .iter()
        .map(|b| format!("{} = \"{}\"", b.jvm_route, b.dir.display()))
        .collect();
    let opts: Vec<String> = java_opts().iter().map(|o| format!("\"{o}\"")).collect();
    let mut text = format!(
        r#"[services.shop]
strategy = "canary"
balancer = {{ kind = "modjk", lb_worker = "{LB_WORKER}", probe_url = "{probe}", mode = {{ kind = "jkstatus", url = "{status}", user = "{user}", password_file = "{password}" }} }}
runtime = {{ kind = "tomcat", catalina_home = "/usr/share/tomcat10", context = "app", health_path = "/app/health", bases = {{ {homes} }}, java_opts = [{opts}], startup_timeout = "90s", stop_grace = "20s" }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/app/health", interval = "100ms", deadline = "60s", successes = 2 }}
drain = {{ timeout = "5s" }}
verify = "500ms"
keep_warm = "0s"
pause_limit = "20s"
{canary}
"#,
        probe = apache.url("/app/count"),
        status = apache.status_url,
        user = apache.status_user,
        password = apache.password_file.display(),
        homes = homes.join(", "),
        opts = opts.join(", "),
        releases = work.path().join("releases").display(),
        canary = canary_toml(),
    );
    for b in bases {
        text.push_str(&format!(
            "[[services.shop.nodes]]\nname = \"{}\"\nport = {}\n",
            b.jvm_route, b.http_port
        ));
    }
    text
}

/// Keep-alive users without a session cookie, so mod_jk picks a member for every request by
/// its lbfactor (the canary's share); nothing is resent.
fn users(site: &Site) -> StickyLoad {
    StickyLoad::start(
        &site.url(),
        4,
        LoadOptions {
            sticky: false,
            max_duration: Duration::from_secs(240),
            ..LoadOptions::keep_alive()
        },
    )
}

/// Failed requests by what the client saw: status (or error) and the version that answered.
fn failures_by_kind(report: &LoadReport) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in report.failures() {
        let kind = match (s.status, &s.version) {
            (Some(code), Some(v)) => format!("HTTP {code} from {v}"),
            (Some(code), None) => format!("HTTP {code} from mod_jk/Apache"),
            (None, _) => s.error.clone().unwrap_or_default(),
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

/// The mod_jk log's lines containing `needle`, counted by their text after the source location.
fn log_kinds(apache: &Apache, needle: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in apache.jk_log_lines(needle) {
        let text = line.rsplit_once("): ").map_or(line.as_str(), |(_, t)| t);
        *out.entry(text.to_string()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modjk_canary_aborts_a_failing_war_at_the_first_analysis_and_promotes_a_good_one() {
    // One attempt per member: a 500 in fail_on_status is then counted in `errors`.
    let site = Site::start(Some(1)).await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    let check = Command::new(nonstop_bin())
        .args(["config", "check"])
        .arg(&site.config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    eprintln!("config check:\n{}", text(&check));
    let out = site.deploy("v1");
    assert_exit(&out, 0);
    assert_eq!(site.versions_now(10).await, ["v1"]);

    // a) 20 % of v2's answers are 500: aborted after the 20 % step, v1 serving.
    let load = users(&site);
    load.wait_progress(&[0, 1, 2, 3], 20, Duration::from_secs(30))
        .await;
    let before = load.sent();
    let started = Instant::now();
    let out = site.deploy("v2");
    let took = started.elapsed();
    let during = load.sent() - before;
    let after_abort = site.members().await;
    let report = load.stop().await;
    let output = text(&out);
    eprintln!("bad deploy:\n{output}");
    eprintln!("members after the abort: {after_abort:#?}");
    eprintln!(
        "failures: {:?}; ok by version {:?}",
        failures_by_kind(&report),
        report.by_version()
    );
    eprintln!(
        "mod_jk log about tomcat2: {:#?}",
        log_kinds(&site.apache, "(tomcat2)")
    );
    assert_exit(&out, 2);
    assert!(
        output.contains(&format!("takes {}%", FIRST.0))
            && !output.contains(&format!("takes {SECOND}%")),
        "aborted at the first analysis: {output}"
    );
    let verdict = output
        .lines()
        .find(|l| l.contains("canary error rate"))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(!verdict.is_empty(), "{output}");
    let failed = report.failures().len() as u64;
    let share = f64::from(FIRST.0) / 100.0 * f64::from(ERROR_PERCENT) / 100.0;
    let rate = during as f64 / took.as_secs_f64();
    let expected = rate * FIRST.1.as_secs_f64() * share;
    let bound = (during as f64 * share * 1.1).ceil() as u64 + 5;
    eprintln!(
        "mod_jk: bad WAR aborted after {took:?}: {failed} failed of {during} requests during the deploy ({rate:.0} req/s; weight × window × error share × rate = {expected:.0}, bound {bound}); verdict: {verdict}"
    );
    assert!(failed <= bound, "{failed} > {bound}");
    // mod_jk never passes a `fail_on_status` answer on: it fails the request over to tomcat1.
    let kinds = failures_by_kind(&report);
    assert!(
        !kinds.contains_key("HTTP 500 from v2"),
        "a 500 in fail_on_status reached a client: {kinds:?}"
    );
    assert_eq!(site.versions_now(20).await, ["v1"]);

    // b) a good WAR passes both steps and is promoted; nothing fails.
    let load = users(&site);
    load.wait_progress(&[0, 1, 2, 3], 20, Duration::from_secs(30))
        .await;
    let out = site.deploy("v3");
    let report = load.stop().await;
    let output = text(&out);
    eprintln!("good deploy:\n{output}");
    assert_exit(&out, 0);
    for share in [FIRST.0, SECOND] {
        assert!(output.contains(&format!("takes {share}%")), "{output}");
    }
    let verdicts: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("passed: canary:"))
        .collect();
    eprintln!(
        "mod_jk: good WAR promoted: {} requests, {} failed; verdicts: {verdicts:#?}",
        report.sent(),
        report.failures().len()
    );
    assert_eq!(verdicts.len(), 2, "{output}");
    report.assert_none_failed("good WAR");
    assert_eq!(site.versions_now(10).await, ["v3"]);
}

/// mod_jk's default `retries=2`: a 500 in `fail_on_status` is sent again to the same Tomcat, and
/// only a request whose every attempt fails counts in `errors`. Every 5th request failing, the
/// retry (the next request) succeeds: clients see no 500 and the canary counts almost no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_retries_mod_jk_hides_a_500_by_asking_the_same_tomcat_again() {
    let site = Site::start(None).await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    assert_exit(&site.deploy("v1"), 0);
    let load = users(&site);
    load.wait_progress(&[0, 1, 2, 3], 20, Duration::from_secs(30))
        .await;
    let out = site.deploy("v2");
    let report = load.stop().await;
    let output = text(&out);
    let first = output
        .lines()
        .find(|l| l.contains("canary: ") && l.contains("requests,") && l.contains("; old: "))
        .unwrap_or_default()
        .trim()
        .to_string();
    let retried = log_kinds(&site.apache, "(tomcat2)")
        .into_iter()
        .filter(|(k, _)| k.contains("because of response status (attempt=1)"))
        .map(|(_, n)| n)
        .sum::<usize>();
    eprintln!(
        "mod_jk retries=2: exit {:?}; first verdict: {first}; 500s retried on tomcat2: {retried}; clients: {} requests, failures {:?}, ok by version {:?}",
        out.status.code(),
        report.sent(),
        failures_by_kind(&report),
        report.by_version()
    );
    assert!(retried > 0, "tomcat2 answered 500s: {output}");
    assert!(
        !failures_by_kind(&report).contains_key("HTTP 500 from v2"),
        "{output}"
    );
    let rate: f64 = first
        .split("requests, ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no first verdict: {output}"));
    assert!(
        rate < f64::from(ERROR_PERCENT) / 2.0,
        "the canary counted {rate}% errors of a WAR failing {ERROR_PERCENT}%"
    );
}
