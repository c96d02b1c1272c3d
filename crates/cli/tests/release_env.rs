//! The release environment end to end: an instance started by the real `nonstop deploy` sees
//! the documented baseline, the service's `env`, `inherit_env`, `--env` and `NONSTOP_*`, and
//! nothing else of the deploying shell (the sample app reports its environment on `/env`).

mod support;

use std::collections::BTreeMap;

use support::*;

fn env_of(body: &str) -> BTreeMap<String, String> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_gets_only_the_documented_and_configured_variables() {
    let runtime = format!(
        "runtime = {{ kind = \"process\", start = [\"{}\", \"--port\", \"{{port}}\", \"--version\", \"{{version}}\", \"--node\", \"{{node}}\"], stop_grace = \"5s\", env = {{ GREETING = \"from env\", SHARED = \"service\" }}, inherit_env = [\"NONSTOP_TEST_LISTED\"] }}",
        hello_bin().display()
    );
    let shop = Shop::start("blue-green", &["blue", "green"], &runtime);
    let artifact = shop.artifact("1");
    let out = shop
        .command(&[
            "deploy",
            "shop",
            artifact.to_str().unwrap(),
            "--version",
            "1",
            "--env",
            "EXTRA=from --env",
            "--env",
            "SHARED=release",
        ])
        .env("NONSTOP_TEST_LISTED", "listed")
        .env("NONSTOP_TEST_SECRET", "from the shell")
        .env("LC_TIME", "C.UTF-8")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let reply = get(&client(), &shop.proxy.url("/env")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let env = env_of(&reply.body);
    let configured = ["GREETING", "SHARED", "EXTRA", "NONSTOP_TEST_LISTED"];
    let unexpected: Vec<&String> = env
        .keys()
        .filter(|k| {
            !(nonstop_ports::env::BASELINE.contains(&k.as_str())
                || k.starts_with(nonstop_ports::env::BASELINE_PREFIX)
                || k.starts_with("NONSTOP_") && k.as_str() != "NONSTOP_TEST_SECRET"
                || configured.contains(&k.as_str()))
        })
        .collect();
    println!("instance environment: {:?}", env.keys().collect::<Vec<_>>());
    assert!(
        unexpected.is_empty(),
        "not documented: {unexpected:?} in {env:?}"
    );
    assert!(!env.contains_key("NONSTOP_TEST_SECRET"), "{env:?}");
    assert_eq!(env["GREETING"], "from env");
    assert_eq!(
        env["SHARED"], "release",
        "--env wins over the service's env"
    );
    assert_eq!(env["EXTRA"], "from --env");
    assert_eq!(env["NONSTOP_TEST_LISTED"], "listed");
    assert_eq!(env["LC_TIME"], "C.UTF-8");
    assert_eq!(env["TZ"], "UTC");
    assert_eq!(env["NONSTOP_VERSION"], "1");
    assert!(["blue", "green"].contains(&env["NONSTOP_NODE"].as_str()));
    assert!(env["NONSTOP_RELEASE_DIR"].ends_with("/1"), "{env:?}");
    assert!(env.contains_key("PATH") && env.contains_key("NONSTOP_PORT"));
}
