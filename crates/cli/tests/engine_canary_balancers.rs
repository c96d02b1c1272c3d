//! Two-step canaries judged on each real balancer's own counters: HAProxy (`show stat`) and
//! nginx (nonstop's access log format). A release failing a share of requests is aborted at the
//! first analysis with its client-visible failures bounded; a good one goes through every step.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nonstop_testkit::haproxy::Haproxy;
use nonstop_testkit::nginx::Nginx;
use support::*;

/// The first step's share and window, the second step's share.
const FIRST: (u32, Duration) = (20, Duration::from_secs(2));
const SECOND: u32 = 50;
/// The bad release fails this share of its requests (nonstop-hello `--error-rate`).
const ERROR_SHARE: f64 = 0.5;

fn canary_toml() -> String {
    format!(
        "canary = {{ steps = [{{ weight = {}, for = \"{}s\" }}, {{ weight = {SECOND}, for = \"2s\" }}], min_requests = 20 }}",
        FIRST.0,
        FIRST.1.as_secs()
    )
}

/// A `[services.shop]` canary over the blue/green slots running nonstop-hello behind `balancer`.
struct Site {
    work: tempfile::TempDir,
    config: PathBuf,
    url: String,
    _instances: KillUnder,
}

impl Site {
    fn new(balancer: &str, nodes: &[(&str, u16)], url: String) -> Site {
        let work = tempfile::tempdir().unwrap();
        let mut text = format!(
            r#"[services.shop]
strategy = "canary"
balancer = {balancer}
runtime = {{ kind = "process", start = ["{hello}", "--port", "{{port}}", "--version", "{{version}}", "--node", "{{node}}"], stop_grace = "5s" }}
releases = {{ dir = "{base}", keep = 3 }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "5s" }}
verify = "300ms"
keep_warm = "0s"
{canary}
"#,
            hello = hello_bin().display(),
            base = work.path().join("shop").display(),
            canary = canary_toml(),
        );
        for (name, port) in nodes {
            text.push_str(&format!(
                "[[services.shop.nodes]]\nname = \"{name}\"\nport = {port}\n"
            ));
        }
        let config = work.path().join("nonstop.toml");
        write(&config, &text);
        Site {
            _instances: KillUnder(work.path().to_path_buf()),
            work,
            config,
            url,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(nonstop_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        let artifact = self.work.path().join(format!("shop-{version}.jar"));
        write(&artifact, &format!("release {version}"));
        let mut args = vec![
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            version,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Versions answering through the balancer, from `n` fresh requests.
    async fn versions_now(&self, n: usize) -> std::collections::BTreeSet<String> {
        let client = client();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let reply = get(&client, &self.url).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            seen.insert(reply.version().to_string());
        }
        seen
    }

    /// Release 1 serving, then `config check` and `--plan` of the canary.
    async fn first_release(&self) -> String {
        let out = self.deploy("1", &[]);
        assert_exit(&out, 0);
        wait_until("release 1 answers", DEADLINE, || async {
            let client = client();
            matches!(send(&client, "GET", &self.url, &[], "").await, Ok(r) if r.status == 200)
        })
        .await;
        let check = Command::new(nonstop_bin())
            .args(["config", "check"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", text(&check));
        let artifact = self.work.path().join("shop-1.jar");
        let plan = self.run(&[
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            "9",
            "--plan",
        ]);
        assert_exit(&plan, 0);
        format!("{}\n{}", text(&check), text(&plan))
    }

    /// A release failing `ERROR_SHARE` of its requests: aborted after the first step, release
    /// 1 serving, the failures clients saw within the bound.
    async fn bad_release_is_aborted(&self, what: &str, load: Load) {
        load.wait_for_requests(100).await;
        let before = load.sent();
        let started = Instant::now();
        let out = self.deploy("2", &["--env", &format!("HELLO_ERROR_RATE={ERROR_SHARE}")]);
        let took = started.elapsed();
        assert_exit(&out, 2);
        let output = text(&out);
        assert!(
            output.contains(&format!("takes {}%", FIRST.0))
                && !output.contains(&format!("takes {SECOND}%")),
            "aborted at the first analysis: {output}"
        );
        assert!(output.contains("error rate"), "{output}");
        let report = load.stop().await;
        // Counted up to the load's stop, as its failures are: an nginx reload returns before the
        // old workers (with the canary's weights) are gone, and on a busy machine they serve on
        // for a moment after the deploy's end.
        let during = report.sent - before;
        // The canary never gets more than its share of what is sent while the deploy runs (the
        // window, and until the undo has reached the balancer: an nginx reload takes a moment),
        // and fails its error share of that: +10 % and 5 for the weighted round-robin's steps.
        // Printed beside it: rate × window × share × error share, the window alone.
        let rate = during as f64 / took.as_secs_f64();
        let expected = rate * FIRST.1.as_secs_f64() * f64::from(FIRST.0) / 100.0 * ERROR_SHARE;
        let bound =
            (during as f64 * f64::from(FIRST.0) / 100.0 * ERROR_SHARE * 1.1).ceil() as u64 + 5;
        eprintln!(
            "{what}: bad release aborted after {took:?}: {} failed of {during} requests during the deploy ({rate:.0} req/s; weight × window × error share × rate = {expected:.0}, bound {bound}); verdict: {}",
            report.failed,
            output
                .lines()
                .find(|l| l.contains("error rate"))
                .unwrap_or("")
                .trim()
        );
        assert!(report.failed > 0, "the canary's errors were real");
        assert!(report.failed <= bound, "{} > {bound}", report.failed);
        assert_eq!(self.versions_now(20).await, ["1".to_string()].into());
    }

    /// A good release: both steps pass on real counts, it is promoted, no request fails.
    async fn good_release_is_promoted(&self, what: &str, load: Load) {
        load.wait_for_requests(100).await;
        let out = self.deploy("3", &[]);
        assert_exit(&out, 0);
        let output = text(&out);
        for share in [FIRST.0, SECOND] {
            assert!(output.contains(&format!("takes {share}%")), "{output}");
        }
        let verdicts: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("passed: canary:"))
            .collect();
        assert_eq!(verdicts.len(), 2, "{output}");
        let report = load.stop().await;
        eprintln!(
            "{what}: good release promoted: {} requests, {} failed, {} resent after an idle close; verdicts: {verdicts:#?}",
            report.sent, report.failed, report.resent
        );
        assert_eq!(
            report.failed,
            0,
            "{:?}",
            &report.failures[..report.failures.len().min(5)]
        );
        assert_eq!(self.versions_now(10).await, ["3".to_string()].into());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_canary_is_judged_on_show_stat() {
    let nodes = [("blue", free_port()), ("green", free_port())];
    let haproxy = Haproxy::start(&nodes).await;
    let site = Site::new(&haproxy.balancer_toml(), &nodes, haproxy.url("/"));
    let said = site.first_release().await;
    assert!(said.contains("HAProxy `show stat`"), "{said}");
    site.bad_release_is_aborted("haproxy", Load::start(site.url.clone(), 4, 10_000_000))
        .await;
    site.good_release_is_promoted("haproxy", Load::start(site.url.clone(), 4, 10_000_000))
        .await;
}

/// nginx with `upstream shop` in nonstop's include and the service's server logging in
/// nonstop's format.
async fn nginx_with_access_log() -> (Nginx, u16, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port();
    let log = dir.path().join("shop-nonstop.log");
    let http = format!(
        "{format}\n  include {d}/shop.conf;\n  server {{ listen 127.0.0.1:{port}; access_log {log} nonstop; \
         location / {{ proxy_pass http://shop; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n",
        format = nonstop_balancer_nginx::LOG_FORMAT,
        log = log.display(),
    );
    let conf = Nginx::conf(dir.path(), &http);
    let bootstrap = "upstream shop { server 127.0.0.1:9 down; }\n".to_string();
    let nginx = Nginx::start_in(dir, &[("nginx.conf", conf), ("shop.conf", bootstrap)]).await;
    (nginx, port, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_canary_is_judged_on_its_access_log() {
    let (nginx, port, log) = nginx_with_access_log().await;
    let argv: Vec<String> = Nginx::argv(nginx.dir.path())
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let balancer = format!(
        "{{ kind = \"nginx\", include = \"{}\", upstream = \"shop\", nginx = [{}], access_log = \"{}\" }}",
        nginx.path("shop.conf").display(),
        argv.join(", "),
        log.display()
    );
    let nodes = [("blue", free_port()), ("green", free_port())];
    let site = Site::new(&balancer, &nodes, format!("http://127.0.0.1:{port}/"));
    let said = site.first_release().await;
    assert!(
        said.contains(&log.display().to_string()) && said.contains("log_format nonstop"),
        "config check and --plan name the log and its format: {said}"
    );
    // Every reload closes the old workers' idle keep-alive connections; the client resends
    // a GET whose connection closed as it went out, as browsers do (docs/balancers/nginx.md).
    site.bad_release_is_aborted(
        "nginx",
        Load::start_resending(site.url.clone(), 4, 10_000_000),
    )
    .await;
    site.good_release_is_promoted(
        "nginx",
        Load::start_resending(site.url.clone(), 4, 10_000_000),
    )
    .await;
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    eprintln!("nginx: {lines} lines in {}", log.display());
}

/// Without `access_log`, nginx counts nothing per member: `config check` refuses the canary at
/// its `strategy` line.
#[test]
fn nginx_canary_without_an_access_log_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let site = Site::new(
        &format!(
            "{{ kind = \"nginx\", include = \"{}\", upstream = \"shop\", nginx = [\"nginx\"] }}",
            dir.path().join("shop.conf").display()
        ),
        &[("blue", free_port()), ("green", free_port())],
        String::new(),
    );
    let out = Command::new(nonstop_bin())
        .args(["config", "check"])
        .arg(&site.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    let at = format!("{}:2", site.config.display());
    assert!(said.contains(&at), "names {at}: {said}");
    assert!(
        said.contains("access_log") && said.contains("log_format nonstop"),
        "{said}"
    );
}
