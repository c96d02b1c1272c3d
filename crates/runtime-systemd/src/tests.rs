use super::*;
use nonstop_ports::{NodeName, Version};
use nonstop_testkit::systemd::UserManager;

fn config(unit: &str) -> SystemdConfig {
    SystemdConfig {
        unit: unit.into(),
        scope: Scope::User,
        timeout: "20s".into(),
    }
}

fn spec(base: &Path, node: &str, version: &str, port: u16) -> InstanceSpec {
    let release_dir = base.join("releases").join(version);
    InstanceSpec {
        node: NodeName::from(node),
        port,
        version: Version::from(version),
        artifact: release_dir.join("run"),
        log: release_dir.join("logs").join(format!("{node}.log")),
        release_dir,
        env: BTreeMap::new(),
    }
}

#[test]
fn environment_values_are_quoted_and_control_characters_refused() {
    assert_eq!(
        environment_line("A", r#"x "y" 100% \z $HOME"#).unwrap(),
        r#"Environment="A=x \"y\" 100%% \\z $HOME""#
    );
    assert!(
        environment_line("A", "one\ntwo")
            .unwrap_err()
            .contains("newline")
    );
    assert!(environment_line("A", "tab\there").is_err());
    assert!(environment_line("1A", "v").is_err());
    assert!(environment_line("A-B", "v").is_err());
}

#[test]
fn unit_names_and_templates_are_checked() {
    for good in ["shop@n1.service", "shop.service", "a:b_c-d.e@f.service"] {
        check_unit_name(good).unwrap();
    }
    for bad in [
        "shop@.service",
        "shop@n1",
        ".service",
        "-shop.service",
        "shop n1.service",
        "shop/../x.service",
        "shop;rm.service",
    ] {
        assert!(check_unit_name(bad).is_err(), "{bad}");
    }
    let grace = Duration::from_secs(1);
    let err = SystemdRuntime::new(config("shop.service"), &["a", "b"], [], grace).unwrap_err();
    assert!(err.to_string().contains("{node}"), "{err}");
    SystemdRuntime::new(config("shop.service"), &["a"], [], grace).unwrap();
    let err = SystemdRuntime::new(config("shop@{nod}.service"), &["a"], [], grace).unwrap_err();
    assert!(err.to_string().contains("{nod}"), "{err}");
    let err = SystemdRuntime::new(config("shop@{node}"), &["a"], [], grace).unwrap_err();
    assert!(err.to_string().contains(".service"), "{err}");
    let env = [("X".to_string(), "a\nb".to_string())];
    assert!(SystemdRuntime::new(config("s@{node}.service"), &["a"], env, grace).is_err());
    let toml_err = toml_config("unit = \"s@{node}.service\"\nscope = \"session\"").unwrap_err();
    assert!(toml_err.contains("session"), "{toml_err}");
    let c = toml_config("unit = \"s@{node}.service\"").unwrap();
    assert_eq!((c.scope, c.timeout.as_str()), (Scope::System, "60s"));
}

fn toml_config(text: &str) -> Result<SystemdConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[test]
fn the_drop_in_carries_the_instance_its_log_and_the_grace() {
    let base = Path::new("/srv/shop");
    let mut s = spec(base, "n1", "7", 8081);
    s.env.insert("GREETING".into(), "hi".into());
    let shared = BTreeMap::from([("GREETING".to_string(), "shared".to_string())]);
    let text = drop_in(&s, &shared, &s.release_dir, &s.log, Duration::from_secs(5)).unwrap();
    for line in [
        "[Service]",
        "Environment=\"NONSTOP_PORT=8081\"",
        "Environment=\"PORT=8081\"",
        "Environment=\"NONSTOP_VERSION=7\"",
        "Environment=\"NONSTOP_NODE=n1\"",
        "Environment=\"NONSTOP_RELEASE_DIR=/srv/shop/releases/7\"",
        "Environment=\"NONSTOP_ARTIFACT=/srv/shop/releases/7/run\"",
        "Environment=\"GREETING=hi\"",
        "StandardOutput=append:/srv/shop/releases/7/logs/n1.log",
        "StandardError=inherit",
        "TimeoutStopSec=5000ms",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert_eq!(
        current_link(&s.release_dir, "n1").unwrap(),
        Path::new("/srv/shop/current/n1")
    );
    assert!(current_link(Path::new("/srv/7"), "n1").is_err());
}

#[test]
fn state_is_read_from_systemctl_show() {
    let state = UnitState::parse(
        "MainPID=42\nActiveState=active\nSubState=running\nResult=success\nLoadState=loaded\n",
    );
    assert!(state.running() && !state.down());
    let state =
        UnitState::parse("MainPID=0\nActiveState=failed\nSubState=failed\nResult=exit-code");
    assert!(!state.running() && state.down());
    assert_eq!(
        state.to_string(),
        "failed/failed (Result=exit-code, MainPID=0)"
    );
    let state = UnitState::parse("MainPID=0\nActiveState=activating\nSubState=auto-restart");
    assert!(state.down());
}

/// A release as the test deploys it: a script that runs the sample app with its arguments.
fn release(base: &Path, version: &str) {
    let dir = base.join("releases").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("run");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec \"{}\" \"$@\"\n",
            nonstop_testkit::hello::hello_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn hello_unit(base: &Path, pre: &str) -> String {
    let b = base.display();
    format!(
        "[Unit]\nDescription=sample app %i\n\n[Service]\n{pre}WorkingDirectory={b}/current/%i\n\
         ExecStart={b}/current/%i/run --port ${{NONSTOP_PORT}} --version ${{NONSTOP_VERSION}} --node ${{NONSTOP_NODE}}\n"
    )
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_user_manager_restarts_reports_and_stops_the_nodes_unit() {
    if let Some(why) = UserManager::unavailable() {
        eprintln!("SKIPPED: no real systemd user manager here: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut manager = UserManager::start(&dir.path().join("manager")).unwrap();
    let base = dir.path().join("shop");
    release(&base, "1");
    release(&base, "2");
    manager
        .install_unit("hello@.service", &hello_unit(&base, ""))
        .unwrap();
    let greeting = r#"a "b" 100% \c $HOME"#;
    let runtime = SystemdRuntime::new(
        config("hello@{node}.service"),
        &["n1"],
        [("GREETING".to_string(), greeting.to_string())],
        Duration::from_secs(5),
    )
    .unwrap()
    .with_user_env(manager.env());
    let port = nonstop_testkit::free_port();

    let started = Instant::now();
    let v1 = runtime.start(&spec(&base, "n1", "1", port)).await.unwrap();
    eprintln!("v1 pid {} running after {:?}", v1.pid, started.elapsed());
    assert!(runtime.is_running(&v1).await);
    nonstop_testkit::wait_until("v1 listening", Duration::from_secs(15), || async {
        log_has(&v1.log, "listening on 127.0.0.1:")
    })
    .await;
    let environ = std::fs::read(format!("/proc/{}/environ", v1.pid)).unwrap();
    let environ: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        environ.contains(&format!("GREETING={greeting}").as_bytes()),
        "the value arrives as written"
    );
    assert!(environ.contains(&format!("NONSTOP_PORT={port}").as_bytes()));
    let config_home = manager
        .env()
        .into_iter()
        .find_map(|(k, v)| (k == "XDG_CONFIG_HOME").then_some(v))
        .unwrap();
    let drop_in = config_home
        .join("systemd/user/hello@n1.service.d")
        .join(DROP_IN);
    assert_eq!(runtime.drop_in_path("hello@n1.service").unwrap(), drop_in);
    assert!(
        std::fs::read_to_string(&drop_in)
            .unwrap()
            .contains(&format!("Environment=\"NONSTOP_PORT={port}\"")),
        "the drop-in sits in the manager's persistent config dir, where it outlives a reboot"
    );
    let link = base.join("current/n1");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::fs::canonicalize(base.join("releases/1")).unwrap()
    );

    // v2 on the same node: the link moves, the unit restarts, the old instance is gone.
    let v2 = runtime.start(&spec(&base, "n1", "2", port)).await.unwrap();
    assert_ne!(v1.pid, v2.pid);
    assert!(!runtime.is_running(&v1).await);
    assert!(runtime.is_running(&v2).await);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", v2.pid)).unwrap();
    assert!(cmdline.contains("--version\x002\x00"), "{cmdline:?}");
    assert!(std::fs::read_link(&link).unwrap().ends_with("releases/2"));

    // Stopping the stale v1 record leaves the newer instance alone.
    runtime.stop(&v1, Duration::from_secs(2)).await.unwrap();
    assert!(
        runtime.is_running(&v2).await,
        "v2 must survive a stop of v1"
    );
    runtime.stop(&v2, Duration::from_secs(2)).await.unwrap();
    assert!(!runtime.is_running(&v2).await);
    let state = runtime.state("hello@n1.service").await.unwrap();
    assert_eq!(state.active, "inactive", "{state}");
    assert!(nonstop_runtime_process::start_ticks(v2.pid).is_none());

    // systemd restarts a crashed instance (`Restart=`): still this release, so still running,
    // and a stop stops it.
    manager
        .install_unit(
            "always@.service",
            &hello_unit(&base, "Restart=always\nRestartSec=100ms\n"),
        )
        .unwrap();
    let always = SystemdRuntime::new(
        config("always@{node}.service"),
        &["n1"],
        [],
        Duration::from_secs(5),
    )
    .unwrap()
    .with_user_env(manager.env());
    let first = always.start(&spec(&base, "n1", "2", port)).await.unwrap();
    let pid = rustix::process::Pid::from_raw(first.pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let again = nonstop_testkit::wait_for("systemd's restart", Duration::from_secs(15), || {
        let always = always.clone();
        async move {
            let s = always.state("always@n1.service").await.ok()?;
            (s.running() && s.main_pid != first.pid).then_some(s.main_pid)
        }
    })
    .await;
    assert!(always.is_running(&first).await, "restarted as {again}");
    always.stop(&first, Duration::from_secs(2)).await.unwrap();
    let state = always.state("always@n1.service").await.unwrap();
    assert_eq!(state.active, "inactive", "{state}");

    // A unit that fails to start: the error quotes the state and the log's last lines.
    manager
        .install_unit(
            "broken@.service",
            &hello_unit(
                &base,
                "ExecStartPre=/bin/sh -c 'echo config error: no database >&2; exit 3'\n",
            ),
        )
        .unwrap();
    let broken = SystemdRuntime::new(
        config("broken@{node}.service"),
        &["n1"],
        [],
        Duration::from_secs(5),
    )
    .unwrap()
    .with_user_env(manager.env());
    let err = broken
        .start(&spec(&base, "n1", "2", port))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken@n1.service did not start"), "{err}");
    assert!(err.contains("config error: no database"), "{err}");
    assert!(err.contains("failed"), "{err}");

    // A unit nobody installed is named as such.
    let missing = SystemdRuntime::new(
        config("nope@{node}.service"),
        &["n1"],
        [],
        Duration::from_secs(1),
    )
    .unwrap()
    .with_user_env(manager.env());
    let err = missing
        .start(&spec(&base, "n1", "2", port))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not-found"), "{err}");

    let report = manager.shutdown();
    assert_eq!(report.processes_left, 0, "{report:?}");
}
