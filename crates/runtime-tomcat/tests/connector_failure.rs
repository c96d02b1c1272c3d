//! A real Tomcat 10 whose AJP port is already taken: Tomcat logs the connector failure and keeps
//! running, and its HTTP health path answers 200; behind mod_jk that node would get no traffic.
//! TomcatRuntime must report the start as failed (from the log) and stop that Tomcat again.

use std::time::{Duration, Instant};

use nonstop_ports::{InstanceSpec, NodeName, Runtime, Version};
use nonstop_runtime_tomcat::{TomcatConfig, TomcatRuntime};
use nonstop_testkit::tomcat::{self, TomcatBase, Variant};
use nonstop_testkit::{ProcessGuard, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_cannot_bind_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let war = tomcat::build_war(&root.join("wars"), "v1", Variant::Good).unwrap();
    // Held in both address families: the JVM binds an AF_INET6 socket to ::ffff:127.0.0.1, and
    // whether a kernel sees that clash with an AF_INET listener has changed between versions
    // (6.2 missed some); the AF_INET6 holder clashes within one family.
    let ajp_port = free_port();
    let taken = [
        std::net::TcpListener::bind(("::ffff:127.0.0.1", ajp_port)).ok(),
        std::net::TcpListener::bind(("127.0.0.1", ajp_port)).ok(),
    ];
    assert!(taken.iter().any(Option::is_some), "port {ajp_port} held");
    let base = TomcatBase::create(
        &root.join("tomcat1"),
        free_port(),
        ajp_port,
        -1,
        "tomcat1",
        "secret1",
    )
    .unwrap();
    let runtime = TomcatRuntime::new(TomcatConfig {
        catalina_home: tomcat::CATALINA_HOME.into(),
        bases: [("tomcat1".to_string(), base.dir.clone())].into(),
        context: "app".into(),
        health_path: Some("/app/health".into()),
        java_opts: tomcat::java_opts(),
        startup_timeout: "60s".into(),
        ..Default::default()
    })
    .unwrap();
    let spec = InstanceSpec {
        node: NodeName::from("tomcat1"),
        port: base.http_port,
        version: Version::from("v1"),
        release_dir: root.join("release"),
        artifact: war,
        env: Default::default(),
        log: root.join("tomcat1.log"),
    };
    let guard = ProcessGuard::new();
    let started = Instant::now();
    let result = runtime.start(&spec).await;
    let took = started.elapsed();
    if let Ok(instance) = &result {
        guard.track(instance.pid);
        let listeners = std::process::Command::new("ss")
            .args(["-ltnp", &format!("sport = :{ajp_port}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        eprintln!(
            "started anyway after {took:?}; listening on the AJP port:\n{listeners}\nits log:\n{}",
            std::fs::read_to_string(&instance.log).unwrap_or_default()
        );
    }
    let error = result
        .expect_err("a Tomcat whose AJP connector cannot bind is not started")
        .to_string();
    eprintln!(
        "start with AJP port {ajp_port} taken: error after {took:?}: {}",
        error.lines().next().unwrap_or_default()
    );
    assert!(
        error.contains(&format!("Connector[\"ajp-nio-127.0.0.1-{ajp_port}\"]"))
            || error.contains(&format!("connector on port [{ajp_port}]")),
        "the error names the connector: {error}"
    );
    assert!(
        took < Duration::from_secs(20),
        "read from the log, not a timeout: {took:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", base.http_port)).is_err(),
        "the half-started Tomcat was stopped again"
    );
    drop(taken);
}
