//! nginx in front of `nonstop deploy`, in both of its modes, under 8 keep-alive users that never
//! resend (testkit's client): the reload mode (nonstop rewrites an upstream include and reloads
//! nginx) and the reload-free mode (nginx proxies once to a local `nonstop proxy`).

mod support;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad};
use nonstop_testkit::nginx::Nginx;
use support::{KillUnder, Proxy, free_port, hello_bin, nonstop_bin, text, write};

const USERS: usize = 8;

/// One `[services.NAME]` of the sample app; `balancer` is its whole `balancer = …` value.
fn service(base: &Path, name: &str, strategy: &str, balancer: &str) -> String {
    let mut text = format!(
        r#"
[services.{name}]
strategy = "{strategy}"
balancer = {balancer}
runtime = {{ kind = "process", start = ["{hello}", "--port", "{{port}}", "--version", "{{version}}", "--node", "{{node}}"], stop_grace = "5s" }}
releases = {{ dir = "{base}/{name}", keep = 3 }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "5s" }}
verify = "300ms"
keep_warm = "0s"
"#,
        hello = hello_bin().display(),
        base = base.display(),
    );
    let nodes = match strategy {
        "rolling" => ["n1", "n2"],
        _ => ["blue", "green"],
    };
    for node in nodes {
        text.push_str(&format!(
            "[[services.{name}.nodes]]\nname = \"{node}\"\nport = {}\n",
            free_port()
        ));
    }
    text
}

/// An nginx `server` on `port` proxying to upstream `upstream` over kept-alive connections.
fn server(port: u16, upstream: &str) -> String {
    server_with(port, upstream, "")
}

/// [`server`] with more directives in its `location`.
fn server_with(port: u16, upstream: &str, extra: &str) -> String {
    format!(
        "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{upstream}; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; {extra} }} }}\n"
    )
}

fn deploy(config: &Path, service: &str, version: &str) -> Output {
    let artifact = config.with_file_name(format!("{service}-{version}.jar"));
    write(&artifact, &format!("release {version}"));
    Command::new(nonstop_bin())
        .args(["deploy", service, artifact.to_str().unwrap()])
        .args(["--version", version, "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// What one scenario measured.
struct Measured {
    what: String,
    deploys: usize,
    requests: usize,
    failed: usize,
    reloads: usize,
    /// Failed requests and reloads of each deploy.
    per_deploy: Vec<(usize, usize)>,
}

impl Measured {
    fn print(&self) {
        eprintln!(
            "{}: {} deploys, requests {}, failed {}, nginx reloads {} (per deploy failed/reloads: {:?})",
            self.what, self.deploys, self.requests, self.failed, self.reloads, self.per_deploy
        );
    }
}

/// Deploys `service` at each version of `versions` under the users' load through `url`.
async fn deploys_under_load(
    what: &str,
    nginx: &Nginx,
    url: &str,
    config: &Path,
    service: &str,
    versions: Range<u32>,
) -> Measured {
    let load = StickyLoad::start(url, USERS, LoadOptions::keep_alive());
    let users: Vec<usize> = (0..USERS).collect();
    load.wait_progress(&users, 20, Duration::from_secs(20))
        .await;
    let reloads_before = nginx.reloads();
    let mut windows = Vec::new();
    for v in versions.clone() {
        let (start, reloads) = (load.elapsed(), nginx.reloads());
        let out = tokio::task::block_in_place(|| deploy(config, service, &v.to_string()));
        assert!(out.status.success(), "{what} deploy {v}: {}", text(&out));
        load.wait_progress(&users, 20, Duration::from_secs(20))
            .await;
        windows.push((start, load.elapsed(), nginx.reloads() - reloads));
    }
    let report = load.stop().await;
    let last = versions.end - 1;
    assert!(
        report.by_version().contains_key(&last.to_string()),
        "{what}: {}",
        report.summary()
    );
    let per_deploy = windows
        .iter()
        .map(|(from, to, reloads)| {
            let failed = report
                .failures()
                .iter()
                .filter(|s| s.at >= *from && s.at < *to)
                .count();
            (failed, *reloads)
        })
        .collect();
    let measured = Measured {
        what: what.to_string(),
        deploys: versions.len(),
        requests: report.sent(),
        failed: report.failures().len(),
        reloads: nginx.reloads() - reloads_before,
        per_deploy,
    };
    measured.print();
    for failure in report.failures().iter().take(3) {
        eprintln!("  e.g. at {:?}: {:?}", failure.at, failure.error);
    }
    measured
}

/// Latency of 8 users through `url` while nothing changes.
async fn steady_latency(what: &str, url: &str) -> LoadReport {
    let load = StickyLoad::start(url, USERS, LoadOptions::keep_alive());
    let users: Vec<usize> = (0..USERS).collect();
    load.wait_progress(&users, 400, Duration::from_secs(60))
        .await;
    let report = load.stop().await;
    report.assert_none_failed(what);
    eprintln!(
        "{what}: {} requests, latency mean {:?} p50 {:?} p99 {:?}",
        report.sent(),
        report.mean_latency(),
        report.latency_percentile(50.0),
        report.latency_percentile(99.0)
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reload_mode_and_reload_free_mode_under_users_that_never_resend() {
    // Reload mode: nonstop owns the upstream includes of `shop` (blue-green) and `roll` (rolling).
    let work = tempfile::tempdir().unwrap();
    let _instances = KillUnder(work.path().to_path_buf());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (shop_port, roll_port) = (free_port(), free_port());
    let http = format!(
        "include {d}/shop.conf;\ninclude {d}/roll.conf;\n{}{}",
        server(shop_port, "shop"),
        server(roll_port, "roll")
    );
    let bootstrap = |name: &str| format!("upstream {name} {{ server 127.0.0.1:9 down; }}\n");
    let nginx = Nginx::start_in(
        dir,
        &[
            ("nginx.conf", Nginx::conf(Path::new(&d), &http)),
            ("shop.conf", bootstrap("shop")),
            ("roll.conf", bootstrap("roll")),
        ],
    )
    .await;
    let argv: Vec<String> = Nginx::argv(nginx.dir.path())
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let balancer = |name: &str| {
        format!(
            "{{ kind = \"nginx\", include = \"{d}/{name}.conf\", upstream = \"{name}\", keepalive = 8, nginx = [{}] }}",
            argv.join(", ")
        )
    };
    let config: PathBuf = work.path().join("nonstop.toml");
    write(
        &config,
        &(service(work.path(), "shop", "blue-green", &balancer("shop"))
            + &service(work.path(), "roll", "rolling", &balancer("roll"))),
    );
    for name in ["shop", "roll"] {
        let out = deploy(&config, name, "1");
        assert!(
            out.status.success(),
            "first deploy of {name}: {}",
            text(&out)
        );
    }
    let shop_url = format!("http://127.0.0.1:{shop_port}/session");
    let roll_url = format!("http://127.0.0.1:{roll_port}/session");
    let direct = steady_latency("nginx -> app (reload mode), no deploy", &shop_url).await;
    let blue_green = deploys_under_load(
        "reload mode, blue-green",
        &nginx,
        &shop_url,
        &config,
        "shop",
        2..5,
    )
    .await;
    let rolling = deploys_under_load(
        "reload mode, rolling (2 nodes)",
        &nginx,
        &roll_url,
        &config,
        "roll",
        2..5,
    )
    .await;
    // The fewest reloads each strategy needs: one switch; each node out and back in.
    assert!(
        blue_green.per_deploy.iter().all(|(_, r)| *r == 1),
        "blue-green reloads once per deploy: {:?}",
        blue_green.per_deploy
    );
    assert!(
        rolling.per_deploy.iter().all(|(_, r)| *r == 4),
        "rolling over 2 nodes reloads 4 times per deploy: {:?}",
        rolling.per_deploy
    );
    drop(nginx);

    // Reload-free mode: nginx proxies once to a local `nonstop proxy`, whose pools the deploys
    // switch (`roll` chosen by the Host nginx sets); nginx's config never changes.
    let proxy_dir = tempfile::tempdir().unwrap();
    let pd = proxy_dir.path().display().to_string();
    let _proxy_instances = KillUnder(proxy_dir.path().to_path_buf());
    write(
        &proxy_dir.path().join("nonstop.toml"),
        &(format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"unix:{pd}/admin.sock\"\n\
             routes = [{{ host = \"roll.test\", pool = \"roll\" }}, {{ pool = \"shop\" }}]\n\n\
             [pools.shop]\n[pools.roll]\n"
        ) + &service(
            proxy_dir.path(),
            "shop",
            "blue-green",
            "{ kind = \"builtin\", pool = \"shop\" }",
        ) + &service(
            proxy_dir.path(),
            "roll",
            "rolling",
            "{ kind = \"builtin\", pool = \"roll\" }",
        )),
    );
    let proxy = Proxy::start_in(proxy_dir);
    let config = proxy.config_path();
    let (front, front_roll) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let http = format!(
        "upstream nonstop {{ server 127.0.0.1:{}; keepalive 16; }}\n{}{}",
        proxy.port,
        server(front, "nonstop"),
        server_with(front_roll, "nonstop", "proxy_set_header Host roll.test;")
    );
    let nginx = Nginx::start_in(dir, &[("nginx.conf", Nginx::conf(Path::new(&d), &http))]).await;
    for name in ["shop", "roll"] {
        let out = deploy(&config, name, "1");
        assert!(
            out.status.success(),
            "first deploy of {name} behind the proxy: {}",
            text(&out)
        );
    }
    let url = format!("http://127.0.0.1:{front}/session");
    let hop = steady_latency("nginx -> nonstop proxy -> app, no deploy", &url).await;
    let free = deploys_under_load(
        "reload-free mode, blue-green",
        &nginx,
        &url,
        &config,
        "shop",
        2..12,
    )
    .await;
    assert_eq!(free.failed, 0, "the reload-free mode loses nothing");
    assert_eq!(free.reloads, 0, "nginx's config never changed");
    assert!(free.deploys >= 10);
    let free_rolling = deploys_under_load(
        "reload-free mode, rolling (2 nodes)",
        &nginx,
        &format!("http://127.0.0.1:{front_roll}/session"),
        &config,
        "roll",
        2..5,
    )
    .await;
    assert_eq!(free_rolling.failed, 0, "the reload-free mode loses nothing");
    assert_eq!(free_rolling.reloads, 0, "nginx's config never changed");

    // Signed: on a busy machine the tail of either run can be the slower one.
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let added = |p: f64| ms(hop.latency_percentile(p)) - ms(direct.latency_percentile(p));
    eprintln!(
        "added by the nonstop proxy hop: mean {:+.3}ms p50 {:+.3}ms p99 {:+.3}ms",
        ms(hop.mean_latency()) - ms(direct.mean_latency()),
        added(50.0),
        added(99.0)
    );
    for m in [&blue_green, &rolling, &free, &free_rolling] {
        m.print();
    }
}
