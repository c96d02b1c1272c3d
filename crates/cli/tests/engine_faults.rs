//! The faults of issue 10 as end-to-end regressions: real `nonstop proxy`, real `nonstop
//! deploy` processes and the sample app, a keep-alive load client that does not resend, and
//! every failed request counted. Each test names the item it proves gone.

mod support;

use std::time::{Duration, Instant};

use nonstop_ports::{Instance, InstanceSpec, PortResult, Runtime};
use support::*;

const POOL_HEALTH: &str =
    "health = { path = \"/health\", interval = \"2s\", timeout = \"1s\", rise = 2, fall = 3 }";

fn report_line(what: &str, report: &LoadCounts) {
    eprintln!(
        "{what}: {} requests, {} failed (no resend), by version {:?}",
        report.sent, report.failed, report.by_version
    );
}

fn assert_none_failed(what: &str, report: &LoadCounts) {
    report_line(what, report);
    assert_eq!(
        report.failed,
        0,
        "{what}: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
}

/// Item 1: the stopped slot is `down` in the proxy's own view when the next deploy starts it;
/// traffic moves only once the proxy itself considers it healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_onto_a_pool_with_health_checks_fails_nothing() {
    let shop = Shop::start_with_pool("blue-green", &["blue", "green"], POOL_HEALTH, "");
    assert_exit(&shop.deploy("1", &[]), 0);
    assert_exit(&shop.deploy("2", &[]), 0);
    wait_until(
        "the stopped slot is down in the proxy's view",
        Duration::from_secs(30),
        || async {
            shop.status()["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["balancer_healthy"] == false)
        },
    )
    .await;
    let load = Load::start(shop.proxy.url("/"), 8, 10_000_000);
    load.wait_for_requests(100).await;
    let out = shop.deploy("3", &[]);
    assert_exit(&out, 0);
    let report = load.stop().await;
    assert_none_failed("blue-green v2→v3 onto a down slot", &report);
    assert_eq!(shop.versions_now(10).await, ["3".to_string()].into());
}

/// Item 3 (and the kill rerun with pool health on): a rolling deploy killed in `verify` is
/// undone by the next deploy one node at a time; never are all nodes out.
async fn killed_rolling_deploy_recovers(pool: &str) {
    let shop = Shop::start_with_pool(
        "rolling",
        &["n1", "n2", "n3"],
        pool,
        "verify = \"30s\"\nrolling = { max_unavailable = 1 }",
    );
    assert_exit(&shop.deploy("1", &["--env", "X=1"]), 0);
    let load = Load::start(shop.proxy.url("/"), 8, 10_000_000);
    load.wait_for_requests(100).await;
    let mut deploy = shop.spawn_deploy("2", &[]);
    shop.wait_for_step(2, "verify", Duration::from_secs(60))
        .await;
    deploy.signal("KILL");
    deploy.wait_exit(DEADLINE);
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("did not finish"), "{}", text(&out));
    let report = load.stop().await;
    assert_none_failed(
        &format!("rolling killed in verify, recovered ({pool:?})"),
        &report,
    );
    assert_eq!(shop.history()[1]["outcome"], "rolled-back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_killed_in_verify_is_recovered_without_failures() {
    killed_rolling_deploy_recovers("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_killed_in_verify_is_recovered_with_pool_health_on() {
    killed_rolling_deploy_recovers(POOL_HEALTH).await;
}

/// A runtime that spawns for real and then never returns: the deploy dies between the spawn
/// and the store's record of the instance, as a SIGKILL at that moment leaves it.
struct DiesAfterSpawn<R>(R);

impl<R: Runtime> Runtime for DiesAfterSpawn<R> {
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        self.0.start(spec).await?;
        std::future::pending().await
    }
    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        self.0.stop(instance, grace).await
    }
    async fn is_running(&self, instance: &Instance) -> bool {
        self.0.is_running(instance).await
    }
}

/// Item 4: an instance started but never recorded is found by recovery and stopped; the
/// next deploy to that slot is not refused for a "foreign" port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_but_never_recorded_is_stopped_by_recovery() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let config = shop.proxy.config_path();
    let open = nonstop_drivers::open_engine(&config, "shop", Box::new(|_| {})).unwrap();
    let mut engine = nonstop_engine::Engine::new(
        "shop",
        open.config.clone(),
        open.base.clone(),
        open.balancer,
        DiesAfterSpawn(open.runtime),
        open.probe,
        Box::new(|_| {}),
    )
    .unwrap();
    // The lock then names a process that cannot be alive, as a killed deploy's does.
    engine.holder_pid(i32::MAX - 1);
    let request = nonstop_engine::DeployRequest {
        artifact: shop.artifact("2"),
        version: Some(nonstop_ports::Version::from("2")),
        strategy: None,
        env: Default::default(),
        pause_before_switch: false,
    };
    let killed = tokio::time::timeout(Duration::from_secs(10), engine.deploy(request)).await;
    assert!(killed.is_err(), "the deploy hung after its spawn");
    drop(engine);
    let spec_dir = shop.base.join("releases").join("2");
    let orphan = nonstop_runtime_process::find(&InstanceSpec {
        node: nonstop_ports::NodeName::from("green"),
        port: 0,
        version: nonstop_ports::Version::from("2"),
        release_dir: spec_dir.clone(),
        artifact: spec_dir.join("x"),
        env: Default::default(),
        log: spec_dir.join("x.log"),
    })
    .expect("the spawned instance runs, unrecorded");
    assert_eq!(
        shop.status()["nodes"][1]["process"],
        "foreign",
        "the store never recorded it: status says a process it does not know holds the port"
    );
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    assert!(
        !nonstop_runtime_process::is_running(&orphan) || shop.running_pids().contains(&orphan.pid),
        "the orphan was stopped or adopted: {}",
        text(&out)
    );
    let report = load.stop().await;
    assert_none_failed(
        "deploy killed between spawn and record, then deployed again",
        &report,
    );
    assert_eq!(shop.versions_now(10).await, ["2".to_string()].into());
}

/// Item 6: an operator's `lb disable` of the new node during verify wins — the deploy stops,
/// puts back the old slot it drained, leaves the operator's node disabled and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_disable_during_verify_wins() {
    let shop = Shop::start("blue-green", &["blue", "green"], "verify = \"20s\"");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let mut deploy = shop.spawn_deploy("2", &[]);
    shop.wait_for_step(2, "verify", DEADLINE).await;
    let started = Instant::now();
    let (ok, out) = shop.proxy.cli(&["lb", "disable", "shop/green"]);
    assert!(ok, "{out}");
    let status = deploy.wait_exit(DEADLINE);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(2), "stopped and undone");
    assert!(
        took < Duration::from_secs(10),
        "noticed in verify, not after it: {took:?}"
    );
    let history = shop.history();
    assert!(
        history[0]["reason"]
            .as_str()
            .unwrap()
            .contains("someone else changed"),
        "{history}"
    );
    let status = shop.status();
    let state = |node: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap()["balancer"]
            .clone()
    };
    assert_eq!(state("green"), "disabled", "the operator's change stays");
    assert_eq!(state("blue"), "active");
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
    let report = load.stop().await;
    report_line("operator disables the new node in verify", &report);
    // The old slot drains through verify, so the proxy had it to fall back on.
    assert_none_failed("operator disables the new node in verify", &report);
}

/// Item 7: a rollback after the live instance crashed switches to the warm slot (no cold
/// start), and a failed deploy leaves the warm previous release running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_crash_and_after_a_failed_deploy_uses_the_warm_slot() {
    let shop = Shop::start("blue-green", &["blue", "green"], "keep_warm = \"10m\"");
    assert_exit(&shop.deploy("1", &[]), 0);
    assert_exit(&shop.deploy("2", &[]), 0);
    // v3 fails its health gate on the warm slot: the deploy stops v1 there to start v3, and its
    // undo must start v1 again and keep it warm.
    let out = shop.deploy("3", &["--env", "HELLO_FAIL_HEALTH=1"]);
    assert_exit(&out, 2);
    assert_eq!(
        shop.running_pids().len(),
        2,
        "v1 is warm again: {}",
        text(&out)
    );
    // The live v2 dies.
    let status = shop.status();
    let live = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["version"] == "2")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    kill9(live as i32);
    let started = Instant::now();
    let out = shop.run(&["rollback", "shop"]);
    let took = started.elapsed();
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("still runs 1 (kept warm)"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("start blue 1") && !text(&out).contains("start green 1"),
        "{}",
        text(&out)
    );
    eprintln!("rollback after the crash took {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "instant, not a cold start: {took:?}"
    );
    let load = Load::start(shop.proxy.url("/"), 4, 2_000);
    load.wait_for_requests(1_000).await;
    let report = load.stop().await;
    assert_none_failed("after the rollback", &report);
    assert_eq!(shop.versions_now(10).await, ["1".to_string()].into());
}

/// Item 8: a port held by a process nonstop did not start is refused at plan time (exit 3),
/// before any balancer change; `status` shows the foreign listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_a_stranger_is_refused_before_anything_changes() {
    let shop = Shop::start("rolling", &["n1", "n2"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let before = shop.status();
    // n2's instance is stopped by hand and a stranger takes its port.
    let n2 = before["nodes"][1].clone();
    let pid = n2["pid"].as_i64().unwrap() as i32;
    kill9(pid);
    wait_until("n2 exited", DEADLINE, || async {
        shop.status()["nodes"][1]["process"] == "exited"
    })
    .await;
    let stranger =
        std::net::TcpListener::bind(("127.0.0.1", n2["port"].as_u64().unwrap() as u16)).unwrap();
    let started = Instant::now();
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at plan time"
    );
    assert!(
        text(&out).contains("taken by a process nonstop did not start"),
        "{}",
        text(&out)
    );
    let after = shop.status();
    for (b, a) in before["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["nodes"].as_array().unwrap())
    {
        assert_eq!(b["balancer"], a["balancer"], "no balancer change");
    }
    drop(stranger);
}

/// Item 8: a store file that exists but is empty is an error naming it; nothing is forgotten
/// or changed (the running instance keeps serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_file_is_an_error_naming_it() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    assert_exit(&shop.deploy("1", &[]), 0);
    let db = shop.base.join("nonstop.db");
    let _ = std::fs::remove_file(shop.base.join("nonstop.db-wal"));
    let _ = std::fs::remove_file(shop.base.join("nonstop.db-shm"));
    std::fs::write(&db, b"").unwrap();
    for args in [vec!["status", "shop"], vec!["rollback", "shop"]] {
        let out = shop.run(&args);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("nonstop.db") && text(&out).contains("empty"),
            "{}",
            text(&out)
        );
    }
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 3);
    assert_eq!(shop.versions_now(5).await, ["1".to_string()].into());
}

/// A tmpfs of `size` mounted on `dir` for one test (unmounted on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        assert!(
            rustix_uid_is_root(),
            "this test mounts a small tmpfs to fill: run it as root (CI does)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn rustix_uid_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Fills the file system holding `dir` until a write fails.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    path
}

/// Item 5: the disk fills during a deploy. The journal cannot be written, so the deploy
/// stops before its next step (exit 3) with the old release serving; once space is back, the
/// next deploy undoes it from the journal and deploys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_deploy_and_the_next_one_recovers() {
    let shop = Shop::start("blue-green", &["blue", "green"], "");
    let _tmpfs = Tmpfs::mount(&shop.base, "600k");
    assert_exit(&shop.deploy("1", &[]), 0);
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let mut deploy = shop.spawn_deploy("2", &["--env", "HELLO_START_DELAY=1500ms"]);
    shop.wait_for_step(2, "health", DEADLINE).await;
    let filler = fill(&shop.base);
    let status = deploy.wait_exit(DEADLINE);
    let mut output = String::new();
    use std::io::Read;
    let _ = deploy
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output);
    assert_eq!(
        status.code(),
        Some(3),
        "stopped on the environment: {output}"
    );
    assert!(
        output.contains("journal") && output.contains("full"),
        "{output}"
    );
    assert_eq!(
        shop.versions_now(10).await,
        ["1".to_string()].into(),
        "v1 serves throughout"
    );
    std::fs::remove_file(filler).unwrap();
    let out = shop.deploy("2", &["--env", "HELLO_START_DELAY=1500ms"]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("did not finish"), "{}", text(&out));
    let report = load.stop().await;
    assert_none_failed("disk full mid-deploy, then recovered", &report);
    assert_eq!(shop.versions_now(10).await, ["2".to_string()].into());
}
