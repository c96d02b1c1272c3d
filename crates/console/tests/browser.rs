//! The console in a real browser: starts `nonstop proxy` and `nonstop console` as processes, then
//! runs tests/browser/console.mjs (playwright-core + Debian Chromium), which saves screenshots
//! (to docs/screenshots/ with `NONSTOP_SCREENSHOTS=docs/screenshots`). Needs `node`, `npm` and
//! `/usr/bin/chromium` (scripts/test installs them); fails naming the Debian package without.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nonstop_testkit::client::{LoadOptions, StickyLoad, request_once};
use support::{Instances, binaries, free_port, proxy_url, start_proxy, write_config};

const CHROMIUM: &str = "/usr/bin/chromium";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `npm ci` once, from the committed lockfile, if node_modules is missing.
fn node_modules() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core").exists() {
        return;
    }
    let out = nonstop_testkit::peer::command("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads the console's stdout until it prints the one-time secret.
fn bootstrap_secret(console: &mut Child) -> String {
    let stdout = console.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, secret)) = line.split_once("one-time secret: ") {
                let _ = tx.send(secret.trim().to_string());
            }
        }
    });
    let until = Instant::now() + support::DEADLINE;
    rx.recv_timeout(until.saturating_duration_since(Instant::now()))
        .expect("the console prints a one-time secret on its first run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    nonstop_testkit::peer::require(CHROMIUM);
    let node = nonstop_testkit::peer::require("node");
    node_modules();
    let (nonstop, hello) = binaries();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &hello);
    let drop = dir.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::write(drop.join("hello-v1.jar"), b"release one").unwrap();
    std::fs::write(drop.join("hello-v2.jar"), b"release two").unwrap();
    let _proxy = start_proxy(&config).await;
    let _instances = Instances(config.clone());
    let port = free_port();
    let mut console = Command::new(&nonstop)
        .arg("console")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--artifacts")
        .arg(&drop)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let secret = bootstrap_secret(&mut console);
    let _console = Killed(console);
    // The docs' screenshots are refreshed on request only, so a test run leaves the tree clean:
    // `NONSTOP_SCREENSHOTS=docs/screenshots cargo test -p nonstop-console --test browser`.
    let screenshots = match std::env::var_os("NONSTOP_SCREENSHOTS") {
        Some(dir) => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(dir),
        None => {
            let shots = dir.path().join("screenshots");
            std::fs::create_dir_all(&shots).unwrap();
            shots
        }
    };
    // Users of the shop from the moment the browser's first deploy serves: the canary is judged
    // on their requests, and none of them may fail through the deploys, the rollback and the canary.
    let users = tokio::spawn({
        let url = proxy_url(&config);
        async move {
            let parsed = nonstop_http_client::Url::parse(&url).unwrap();
            nonstop_testkit::try_wait_until("v1 serves", Duration::from_secs(240), || {
                let parsed = parsed.clone();
                async move {
                    request_once(&parsed, "JSESSIONID", None, Duration::from_secs(2))
                        .await
                        .ok
                }
            })
            .await
            .ok()?;
            Some(StickyLoad::start(&url, 2, LoadOptions::keep_alive()))
        }
    });
    let node = tokio::process::Command::new(node)
        .arg("console.mjs")
        .current_dir(browser_dir())
        .env("CONSOLE_URL", format!("https://127.0.0.1:{port}"))
        .env("BOOTSTRAP_SECRET", &secret)
        .env("SCREENSHOTS", &screenshots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), node)
        .await
        .expect("the browser scenario within 4 minutes")
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the browser scenario failed:\n{text}");
    let users = users
        .await
        .unwrap()
        .expect("the browser's first deploy served")
        .stop()
        .await;
    println!(
        "users during the scenario: {} requests, {} failed",
        users.sent(),
        users.failures().len()
    );
    assert!(users.failures().is_empty(), "{:?}", &users.failures()[..1]);
    assert!(
        text.contains("browser scenario: all checks passed"),
        "{text}"
    );
}
