//! `nonstop deploy` behind a real nginx (own prefix dir, 127.0.0.1, ephemeral ports): blue-green
//! and rolling deploys under a continuous request stream, an edit `nginx -t` rejects, and the
//! `set $service_url` include style of existing blue-green scripts, taken over on day one.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nonstop_testkit::nginx::Nginx;

use support::*;

/// A real nginx (testkit's) with two upstreams, `shop` and `roll`, each on its own port and
/// include file, or one `set $service_url` server (`shop_port`); every path is in its temp dir.
struct Front {
    nginx: Nginx,
    shop_port: u16,
    roll_port: u16,
}

impl Front {
    fn conf(dir: &Path, shop_port: u16, roll_port: u16, extra: &str) -> String {
        let d = dir.display();
        let server = |port: u16, upstream: &str| {
            format!(
                "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{upstream}; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n"
            )
        };
        let http = format!(
            "include {d}/shop.conf;\n  include {d}/roll.conf;\n  {extra}\n{}{}",
            server(shop_port, "shop"),
            server(roll_port, "roll"),
        );
        Nginx::conf(dir, &http)
    }

    async fn start() -> Front {
        let dir = tempfile::tempdir().unwrap();
        let (shop_port, roll_port) = (free_port(), free_port());
        let conf = Self::conf(dir.path(), shop_port, roll_port, "");
        // Until nonstop owns them, each upstream points at a closed port, marked down.
        let bootstrap = |name: &str| format!("upstream {name} {{ server 127.0.0.1:9 down; }}\n");
        let nginx = Nginx::start_in(
            dir,
            &[
                ("nginx.conf", conf),
                ("shop.conf", bootstrap("shop")),
                ("roll.conf", bootstrap("roll")),
            ],
        )
        .await;
        Front {
            nginx,
            shop_port,
            roll_port,
        }
    }

    /// An nginx.conf in the field's blue-green style: one server whose `proxy_pass $service_url;`
    /// takes its target from `service-url.inc`, which holds what `inc` says (the operator's line).
    async fn start_service_url(inc: &str) -> Front {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let http = format!(
            "server {{\n    listen 127.0.0.1:{port};\n    include {d}/service-url.inc;\n\
             location / {{\n      proxy_pass $service_url;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n    }}\n  }}\n"
        );
        let conf = Nginx::conf(dir.path(), &http);
        let nginx = Nginx::start_in(
            dir,
            &[("nginx.conf", conf), ("service-url.inc", inc.to_string())],
        )
        .await;
        Front {
            nginx,
            shop_port: port,
            roll_port: 0,
        }
    }

    fn dir(&self) -> &Path {
        self.nginx.dir.path()
    }

    fn url(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}/")
    }

    /// Breaks (or with `extra = ""` repairs) the operator's nginx.conf outside nonstop's includes.
    fn set_extra(&self, extra: &str) {
        write(
            &self.nginx.path("nginx.conf"),
            &Self::conf(self.dir(), self.shop_port, self.roll_port, extra),
        );
    }
}

/// One `[services.NAME]` running the sample app behind this nginx; `target` is the balancer's
/// `upstream = …` or `variable = …` and the rest of its settings.
fn service(
    nginx: &Front,
    base: &Path,
    name: &str,
    strategy: &str,
    target: &str,
    nodes: &[(&str, u16)],
) -> String {
    let argv: Vec<String> = Nginx::argv(nginx.dir())
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let mut text = format!(
        r#"
[services.{name}]
strategy = "{strategy}"
balancer = {{ kind = "nginx", {target}, nginx = [{argv}] }}
runtime = {{ kind = "process", start = ["{hello}", "--port", "{{port}}", "--version", "{{version}}", "--node", "{{node}}"], stop_grace = "5s" }}
releases = {{ dir = "{base}/{name}", keep = 3 }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "5s" }}
verify = "300ms"
keep_warm = "0s"
"#,
        argv = argv.join(", "),
        hello = hello_bin().display(),
        base = base.display(),
    );
    for (node, port) in nodes {
        text.push_str(&format!(
            "[[services.{name}.nodes]]\nname = \"{node}\"\nport = {port}\n"
        ));
    }
    text
}

/// A config with service `shop` (blue-green on blue/green) and `roll` (rolling on n1/n2).
fn config(nginx: &Front, base: &Path) -> String {
    let d = nginx.dir().display();
    let upstream =
        |name: &str| format!("include = \"{d}/{name}.conf\", upstream = \"{name}\", keepalive = 8");
    let nodes = |a: &'static str, b: &'static str| [(a, free_port()), (b, free_port())];
    service(
        nginx,
        base,
        "shop",
        "blue-green",
        &upstream("shop"),
        &nodes("blue", "green"),
    ) + &service(
        nginx,
        base,
        "roll",
        "rolling",
        &upstream("roll"),
        &nodes("n1", "n2"),
    )
}

fn deploy(config: &Path, service: &str, version: &str) -> Output {
    let artifact = config.with_file_name(format!("{service}-{version}.jar"));
    write(&artifact, &format!("release {version}"));
    Command::new(nonstop_bin())
        .args([
            "deploy",
            service,
            artifact.to_str().unwrap(),
            "--version",
            version,
            "--config",
        ])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Prints what users that never resend would have seen (primary), then the count with one
/// resend of a GET whose idle keep-alive connection an old nginx worker closed at a reload: this
/// file proves the drivers' switch/drain/rollback with such clients (browsers, curl); users that
/// never resend are measured in engine_nginx_modes.rs, where the reload-free mode reaches 0.
fn report(what: &str, report: &LoadCounts) {
    eprintln!(
        "{what}: sent {} ok {}; failed without resend {} (closed idle keep-alives at reloads), with one resend {}; by version {:?} by node {:?}",
        report.sent,
        report.ok,
        report.failed + report.resent,
        report.failed,
        report.by_version,
        report.by_node
    );
    assert_eq!(
        report.failed,
        0,
        "{what}: failures {:?}",
        report.failures.iter().take(5).collect::<Vec<_>>()
    );
}

/// Versions answering through `url` right now, from a few fresh requests.
async fn versions(url: &str) -> std::collections::BTreeSet<String> {
    let client = client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        seen.insert(get(&client, url).await.version().to_string());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_and_rolling_behind_nginx_and_a_rejected_edit_changes_nothing() {
    let nginx = Front::start().await;
    let work = tempfile::tempdir().unwrap();
    let config_path: PathBuf = work.path().join("nonstop.toml");
    write(&config_path, &config(&nginx, work.path()));
    let _instances = KillUnder(work.path().to_path_buf());
    let (shop, roll) = (nginx.url(nginx.shop_port), nginx.url(nginx.roll_port));

    for service in ["shop", "roll"] {
        let out = deploy(&config_path, service, "1");
        assert!(
            out.status.success(),
            "first deploy of {service}: {}",
            text(&out)
        );
    }
    assert_eq!(versions(&shop).await, ["1".to_string()].into());
    assert_eq!(versions(&roll).await, ["1".to_string()].into());

    // Blue-green: start v2 on the idle slot, switch by rewriting the include, drain, stop v1.
    let load = Load::start_resending(shop.clone(), 8, 1_000_000);
    load.wait_for_requests(300).await;
    let out = deploy(&config_path, "shop", "2");
    assert!(out.status.success(), "blue-green deploy: {}", text(&out));
    let sent = load.sent();
    load.wait_for_requests(sent + 300).await;
    let blue_green = load.stop().await;
    report("nginx blue-green 1 -> 2", &blue_green);
    assert!(blue_green.by_version.contains_key("1") && blue_green.by_version.contains_key("2"));
    assert_eq!(versions(&shop).await, ["2".to_string()].into());
    let include = std::fs::read_to_string(nginx.dir().join("shop.conf")).unwrap();
    assert!(include.contains("Managed by nonstop"), "{include}");

    // Rolling: each node out of the upstream, restarted with v2, health-gated, back in.
    let load = Load::start_resending(roll.clone(), 8, 1_000_000);
    load.wait_for_requests(300).await;
    let out = deploy(&config_path, "roll", "2");
    assert!(out.status.success(), "rolling deploy: {}", text(&out));
    let sent = load.sent();
    load.wait_for_requests(sent + 300).await;
    let rolling = load.stop().await;
    report("nginx rolling 1 -> 2", &rolling);
    assert_eq!(versions(&roll).await, ["2".to_string()].into());

    // The operator's nginx.conf is broken outside nonstop's include: `nginx -t` fails, the include
    // is restored, the deploy stops with nginx's own message and v2 keeps serving.
    nginx.set_extra("bogus_directive on;");
    let before = std::fs::read_to_string(nginx.dir().join("shop.conf")).unwrap();
    let load = Load::start_resending(shop.clone(), 4, 1_000_000);
    load.wait_for_requests(200).await;
    let out = deploy(&config_path, "shop", "3");
    assert!(
        !out.status.success(),
        "a deploy nginx rejects must fail: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bogus_directive"),
        "nginx's message is shown: {}",
        text(&out)
    );
    // Told apart from a bad release (the engine maps the environment kind to its exit code).
    assert!(
        stderr.contains("broken outside nonstop's include"),
        "{}",
        text(&out)
    );
    eprintln!("broken nginx.conf: exit {:?}", out.status.code());
    assert_eq!(
        out.status.code(),
        Some(3),
        "an environment error (exit 3), not a rolled-back release (2): {}",
        text(&out)
    );
    let sent = load.sent();
    load.wait_for_requests(sent + 200).await;
    let rejected = load.stop().await;
    report("nginx rejected edit", &rejected);
    assert_eq!(rejected.by_version.keys().collect::<Vec<_>>(), ["2"]);
    assert_eq!(
        std::fs::read_to_string(nginx.dir().join("shop.conf")).unwrap(),
        before
    );

    // Repaired, the same deploy goes through.
    nginx.set_extra("");
    let out = deploy(&config_path, "shop", "3");
    assert!(
        out.status.success(),
        "deploy after the repair: {}",
        text(&out)
    );
    assert_eq!(versions(&shop).await, ["3".to_string()].into());
}

/// The address `service-url.inc` sends traffic to now.
fn service_url(nginx: &Front) -> String {
    let inc = std::fs::read_to_string(nginx.dir().join("service-url.inc")).unwrap();
    nonstop_balancer_nginx::parse_variable(&inc, "service_url")
        .unwrap_or_else(|| panic!("no `set $service_url` line in:\n{inc}"))
}

/// Runs `run` under 8 clients through `url` and returns what they saw, with how long `run` took.
async fn under_load(url: &str, what: &str, run: impl FnOnce() -> Output) -> LoadCounts {
    let load = Load::start_resending(url, 8, 1_000_000);
    load.wait_for_requests(300).await;
    let started = std::time::Instant::now();
    let out = tokio::task::block_in_place(run);
    let took = started.elapsed();
    assert!(out.status.success(), "{what}: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let switched = stdout
        .lines()
        .find(|l| l.contains("after healthy"))
        .unwrap_or("");
    eprintln!(
        "{what}: took {:.1}s; {}",
        took.as_secs_f64(),
        switched.trim()
    );
    let sent = load.sent();
    load.wait_for_requests(sent + 300).await;
    let seen = load.stop().await;
    report(what, &seen);
    seen
}

/// The field's hand-written blue-green setup (`proxy_pass $service_url;`, the include's line
/// pointing at the release the old script started on blue's port) taken over by nonstop: the
/// first deploy goes to green and switches the line, later deploys and a rollback switch it back
/// and forth, all under load with 0 failures; rolling with this style is refused by config check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_url_style_is_taken_over_on_day_one_and_deploys_and_rolls_back() {
    let (blue_port, green_port) = (free_port(), free_port());
    // The operator's world before nonstop: v1 on blue, started by their script, and its line.
    let operator_v1 = Hello::start_on(blue_port, "blue", "1", &[]);
    let nginx = Front::start_service_url(&format!(
        "# written by deploy.sh\nset $service_url http://127.0.0.1:{blue_port};\n"
    ))
    .await;
    let url = nginx.url(nginx.shop_port);
    wait_until("nginx serves the operator's v1", DEADLINE, || {
        let url = url.clone();
        async move { versions(&url).await == ["1".to_string()].into() }
    })
    .await;

    let work = tempfile::tempdir().unwrap();
    let config_path: PathBuf = work.path().join("nonstop.toml");
    let include = nginx.dir().join("service-url.inc");
    let service_url_target = format!(
        "include = \"{}\", variable = \"service_url\"",
        include.display()
    );
    let nodes = [("blue", blue_port), ("green", green_port)];
    write(
        &config_path,
        &service(
            &nginx,
            work.path(),
            "shop",
            "blue-green",
            &service_url_target,
            &nodes,
        ),
    );
    let _instances = KillUnder(work.path().to_path_buf());

    // Day one: blue's port is held by the operator's v1, so v2 starts on green; the line moves.
    // Taking over the operator's line (the same `set`) reloads nothing: only the switch does.
    let reloads = nginx.nginx.reloads();
    let day_one = under_load(&url, "nginx $service_url day one 1 -> 2", || {
        deploy(&config_path, "shop", "2")
    })
    .await;
    assert!(day_one.by_version.contains_key("1") && day_one.by_version.contains_key("2"));
    assert_eq!(nginx.nginx.reloads() - reloads, 1, "day one reloads once");
    assert_eq!(
        service_url(&nginx),
        format!("http://127.0.0.1:{green_port}")
    );
    assert_eq!(versions(&url).await, ["2".to_string()].into());
    let inc = std::fs::read_to_string(&include).unwrap();
    assert!(inc.starts_with("# Managed by nonstop"), "{inc}");
    let lines: Vec<&str> = inc.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [format!("set $service_url http://127.0.0.1:{green_port};")]
    );

    // nonstop did not start the old script's v1 and leaves it alone; the operator retires it.
    drop(operator_v1);

    let reloads = nginx.nginx.reloads();
    let v3 = under_load(&url, "nginx $service_url 2 -> 3", || {
        deploy(&config_path, "shop", "3")
    })
    .await;
    assert_eq!(
        nginx.nginx.reloads() - reloads,
        1,
        "a blue-green deploy reloads once"
    );
    assert!(v3.by_version.contains_key("3"));
    assert_eq!(service_url(&nginx), format!("http://127.0.0.1:{blue_port}"));
    assert_eq!(versions(&url).await, ["3".to_string()].into());

    let rollback = under_load(&url, "nginx $service_url rollback 3 -> 2", || {
        Command::new(nonstop_bin())
            .args(["rollback", "shop", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await;
    assert!(rollback.by_version.contains_key("2"));
    assert_eq!(
        service_url(&nginx),
        format!("http://127.0.0.1:{green_port}")
    );
    assert_eq!(versions(&url).await, ["2".to_string()].into());

    // One node takes everything in this style: rolling is refused, with the line and the fix.
    let rolling = service(
        &nginx,
        work.path(),
        "shop",
        "rolling",
        &service_url_target,
        &nodes,
    );
    let (ok, stderr) = nonstop_on_config(&["config", "check"], &rolling);
    eprintln!("config check, rolling + variable:\n{stderr}");
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("nonstop.toml:4:"), "{stderr}");
    assert!(stderr.contains("sends all traffic to one node"), "{stderr}");
    assert!(stderr.contains("use strategy = \"blue-green\""), "{stderr}");
}
