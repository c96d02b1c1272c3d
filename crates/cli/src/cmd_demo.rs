//! `nonstop demo`: the quickstart. Starts `nonstop proxy` and the sample app v1, drives a request
//! stream through the proxy, deploys v2 blue-green, then a release that fails health, and counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nonstop_admin_client::{AdminClient, Endpoint};
use nonstop_engine::{DeployError, DeployRequest};
use nonstop_ports::{Runtime, Version};

#[derive(clap::Args)]
pub struct Args {
    /// Work directory (config, releases, logs); default a new one under the temp dir, removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Concurrent clients in the request stream.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

#[derive(Default)]
struct Stream {
    sent: u64,
    failed: u64,
    failures: Vec<String>,
    versions: BTreeMap<String, u64>,
    last_version: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The sample app sits next to this binary when built with `cargo build --release`.
fn hello_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|d| d.join("nonstop-hello"))
        .context("no directory for the nonstop binary")?;
    if !path.exists() {
        bail!(
            "the sample app {} is missing; build the workspace first: `cargo build --release` (then run target/release/nonstop demo)",
            path.display()
        );
    }
    Ok(path)
}

struct Cleanup {
    proxy: Option<Child>,
    dir: PathBuf,
    remove: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let hello = hello_binary()?;
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("nonstop-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let mut cleanup = Cleanup {
        proxy: None,
        dir: dir.clone(),
        remove,
    };
    let (listen, blue, green) = (free_port()?, free_port()?, free_port()?);
    let socket = dir.join("admin.sock");
    let config_path = dir.join("nonstop.toml");
    std::fs::write(
        &config_path,
        demo_config(&hello, &dir, &socket, listen, blue, green),
    )?;
    println!("nonstop demo: everything lives in {}", dir.display());
    println!("  config: {}", config_path.display());

    let proxy_log = std::fs::File::create(dir.join("proxy.log"))?;
    let proxy = Command::new(std::env::current_exe()?)
        .args(["proxy", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(proxy_log.try_clone()?)
        .stderr(proxy_log)
        .spawn()
        .context("cannot start `nonstop proxy`")?;
    cleanup.proxy = Some(proxy);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = rt.block_on(async {
        let admin = AdminClient::new(Endpoint::Unix(socket.clone()), None);
        let until = Instant::now() + Duration::from_secs(10);
        while admin.pools().await.is_err() {
            if Instant::now() > until {
                bail!(
                    "the proxy did not come up; see {}",
                    dir.join("proxy.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "  proxy: http://127.0.0.1:{listen}/  (admin {})",
            socket.display()
        );
        scenario(&config_path, &dir, listen, args.clients).await
    });
    // Stop the app instances this demo started, then the proxy (in Cleanup).
    if let Ok(engine) = crate::cmd_deploy::engine(&config_path, "hello", Box::new(|_| {})) {
        rt.block_on(async {
            for record in engine.store.instances().unwrap_or_default() {
                let _ = engine
                    .runtime
                    .stop(&record.instance, Duration::from_secs(5))
                    .await;
            }
        });
    }
    drop(cleanup);
    match ok {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::from(1)),
        Err(e) => Err(e),
    }
}

fn demo_config(
    hello: &Path,
    dir: &Path,
    socket: &Path,
    listen: u16,
    blue: u16,
    green: u16,
) -> String {
    format!(
        r#"# Written by `nonstop demo`.
[proxy]
listen = "127.0.0.1:{listen}"
admin = "unix:{socket}"

[pools.hello]

[services.hello]
strategy = "blue-green"
balancer = {{ kind = "builtin", pool = "hello" }}
runtime = {{ kind = "process", start = ["{hello}", "--port", "{{port}}", "--version", "{{version}}", "--node", "{{node}}"] }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/health", expect_body = "UP", interval = "100ms", deadline = "5s", successes = 2 }}
drain = {{ timeout = "5s" }}
keep_warm = "0s"
verify = "1s"

[[services.hello.nodes]]
name = "blue"
port = {blue}

[[services.hello.nodes]]
name = "green"
port = {green}
"#,
        socket = socket.display(),
        hello = hello.display(),
        releases = dir.join("hello").display(),
    )
}

async fn deploy(
    config: &Path,
    artifact: &Path,
    version: &str,
    env: &[(&str, &str)],
) -> Result<nonstop_engine::DeployReport, DeployError> {
    let started = Instant::now();
    let emit = Box::new(move |event: &nonstop_engine::Event| {
        println!(
            "    [{:>5.1}s] {}",
            started.elapsed().as_secs_f64(),
            event.message
        );
    });
    let mut engine = crate::cmd_deploy::engine(config, "hello", emit)?;
    engine
        .deploy(DeployRequest {
            artifact: artifact.to_path_buf(),
            version: Some(Version(version.into())),
            strategy: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pause_before_switch: false,
        })
        .await
}

fn start_stream(
    port: u16,
    clients: usize,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Stream>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stream::default()));
    let url: hyper::Uri = format!("http://127.0.0.1:{port}/")
        .parse()
        .expect("valid uri");
    let tasks = (0..clients)
        .map(|_| {
            let (stop, stats, url) = (stop.clone(), stats.clone(), url.clone());
            tokio::spawn(async move {
                let client: Client<_, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                while !stop.load(Ordering::Relaxed) {
                    let result = client.get(url.clone()).await;
                    let outcome = match result {
                        Ok(response) => {
                            let status = response.status();
                            let version = response
                                .headers()
                                .get("x-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_string();
                            let body = response.into_body().collect().await;
                            match body {
                                Ok(_) if status.is_success() => Ok(version),
                                Ok(_) => Err(format!("HTTP {status}")),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    let mut s = stats.lock().expect("not poisoned");
                    s.sent += 1;
                    match outcome {
                        Ok(version) => {
                            *s.versions.entry(version.clone()).or_default() += 1;
                            s.last_version = version;
                        }
                        Err(e) => {
                            s.failed += 1;
                            if s.failures.len() < 5 {
                                s.failures.push(e);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    (stop, stats, tasks)
}

fn snapshot(stats: &Mutex<Stream>) -> (u64, u64, BTreeMap<String, u64>) {
    let s = stats.lock().expect("not poisoned");
    (s.sent, s.failed, s.versions.clone())
}

fn versions_text(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .map(|(v, n)| format!("v{v}: {}", n - before.get(v).copied().unwrap_or(0)))
        .filter(|s| !s.ends_with(": 0"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn scenario(config: &Path, dir: &Path, port: u16, clients: usize) -> anyhow::Result<bool> {
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let mut paths = Vec::new();
    for v in ["1", "2", "3"] {
        // The sample app is one binary for all versions; the artifact stands in for a jar.
        let path = artifacts.join(format!("hello-{v}.jar"));
        std::fs::write(&path, format!("hello release {v}\n"))?;
        paths.push(path);
    }

    println!("\n1. deploy v1 (nothing runs yet)");
    deploy(config, &paths[0], "1", &[]).await?;

    println!(
        "\n2. {clients} clients send requests through the proxy without pause; deploy v2 blue-green"
    );
    let (stop, stats, tasks) = start_stream(port, clients);
    let until = Instant::now() + Duration::from_secs(5);
    while snapshot(&stats).0 < 200 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = snapshot(&stats);
    let report = deploy(config, &paths[1], "2", &[]).await?;
    let until = Instant::now() + Duration::from_secs(5);
    while stats.lock().expect("not poisoned").last_version != "2" && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = snapshot(&stats);
    let failed_one = after.1 - before.1;
    println!(
        "\n   requests sent: {}   failed: {failed_one}   time to switch: {}ms after v2 was healthy   versions seen: {}",
        after.0 - before.0,
        report.switch_ms,
        versions_text(&before.2, &after.2)
    );

    println!(
        "\n3. deploy v3, a bad release whose health check fails, with the stream still running"
    );
    let before = snapshot(&stats);
    let bad = deploy(config, &paths[2], "3", &[("HELLO_FAIL_HEALTH", "true")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = snapshot(&stats);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let failed_two = after.1 - before.1;
    let rolled_back = matches!(bad, Err(DeployError::RolledBack(_)));
    println!(
        "\n   deploy v3: {}",
        match &bad {
            Ok(_) => "succeeded (unexpected!)".to_string(),
            Err(e) => format!("{} (exit code {})", e, e.exit_code()),
        }
    );
    println!(
        "   requests sent: {}   failed: {failed_two}   versions seen: {}",
        after.0 - before.0,
        versions_text(&before.2, &after.2)
    );
    let failures = stats.lock().expect("not poisoned").failures.clone();
    if !failures.is_empty() {
        println!("   first failures: {failures:?}");
    }
    let ok = failed_one == 0 && failed_two == 0 && rolled_back;
    println!(
        "\n{}",
        if ok {
            "zero failed requests through a deploy and a rollback. Try it on your service: see README.md."
        } else {
            "something went wrong: see the lines above."
        }
    );
    Ok(ok)
}
