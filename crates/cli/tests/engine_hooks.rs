//! Lifecycle hooks as plan steps, end to end: real proxy, real sample app, a load client that
//! does not resend. A hook that writes what it saw proves order and environment; a failing
//! hook at each aborting point rolls back with no failed request.

mod support;

use std::path::{Path, PathBuf};

use support::*;

/// A hook program that appends `POINT NODE VERSION OLD PORT` to `seen`, then exits with `code`.
fn recorder(dir: &Path, seen: &Path, code: i32) -> PathBuf {
    let path = dir.join(format!("hook-{code}.sh"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$NONSTOP_HOOK ${{NONSTOP_NODE:--}} $NONSTOP_VERSION ${{NONSTOP_OLD_VERSION:--}} ${{NONSTOP_PORT:--}} $1\" >> {}\necho \"hook $NONSTOP_HOOK says hello\"\nexit {code}\n",
            seen.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn hooks(ok: &Path, failing: Option<(&str, &Path)>, extra: &str) -> String {
    let points = [
        "before_deploy",
        "after_install",
        "before_traffic",
        "after_traffic",
        "after_deploy",
        "on_rollback",
        "on_failure",
    ];
    let entries: Vec<String> = points
        .iter()
        .map(|p| {
            let program = match failing {
                Some((f, bad)) if f == *p => bad,
                _ => ok,
            };
            format!(
                "{p} = {{ run = [\"{}\", \"{{version}}@{{node}}\"], timeout = \"10s\"{} }}",
                program.display(),
                if *p == "after_deploy" { extra } else { "" }
            )
        })
        .collect();
    format!("hooks = {{ {} }}", entries.join(", "))
}

fn lines(seen: &Path) -> Vec<String> {
    std::fs::read_to_string(seen)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_with_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let ok = recorder(dir.path(), &seen, 0);
    let shop = Shop::start("rolling", &["n1", "n2"], &hooks(&ok, None, ""));
    assert_exit(&shop.deploy("1", &[]), 0);
    std::fs::remove_file(&seen).unwrap();
    let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
    load.wait_for_requests(50).await;
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("hook after_install says hello"),
        "output reaches the deploy: {}",
        text(&out)
    );
    let report = load.stop().await;
    assert_eq!(
        report.failed,
        0,
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    let status = shop.status();
    let port = |i: usize| status["nodes"][i]["port"].to_string();
    let expected = vec![
        "before_deploy - 2 1 - 2@".to_string(),
        format!("after_install n1 2 1 {} 2@n1", port(0)),
        format!("before_traffic n1 2 1 {} 2@n1", port(0)),
        format!("after_traffic n1 2 1 {} 2@n1", port(0)),
        format!("after_install n2 2 1 {} 2@n2", port(1)),
        format!("before_traffic n2 2 1 {} 2@n2", port(1)),
        format!("after_traffic n2 2 1 {} 2@n2", port(1)),
        "after_deploy - 2 1 - 2@".to_string(),
    ];
    assert_eq!(lines(&seen), expected);
    // The plan shows the hooks as steps.
    let plan = String::from_utf8_lossy(&shop.deploy("3", &["--plan"]).stdout).to_string();
    assert!(plan.contains("hook before_traffic for n1"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_before_traffic_rolls_back_without_failed_requests() {
    for point in ["before_deploy", "after_install", "before_traffic"] {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let ok = recorder(dir.path(), &seen, 0);
        let bad = recorder(dir.path(), &seen, 3);
        let shop = Shop::start(
            "blue-green",
            &["blue", "green"],
            &hooks(&ok, Some((point, &bad)), ""),
        );
        // v1 has nothing to compare with: use a hook set that passes for it.
        std::fs::write(
            shop.proxy.config_path(),
            std::fs::read_to_string(shop.proxy.config_path())
                .unwrap()
                .replace(&bad.display().to_string(), &ok.display().to_string()),
        )
        .unwrap();
        assert_exit(&shop.deploy("1", &[]), 0);
        std::fs::write(
            shop.proxy.config_path(),
            std::fs::read_to_string(shop.proxy.config_path())
                .unwrap()
                .replacen(
                    &format!("{point} = {{ run = [\"{}\"", ok.display()),
                    &format!("{point} = {{ run = [\"{}\"", bad.display()),
                    1,
                ),
        )
        .unwrap();
        std::fs::remove_file(&seen).unwrap();
        let load = Load::start(shop.proxy.url("/"), 4, 10_000_000);
        load.wait_for_requests(50).await;
        let out = shop.deploy("2", &[]);
        assert_exit(&out, 2);
        assert!(
            text(&out).contains(&format!("hook {point} failed: exit status: 3")),
            "{}",
            text(&out)
        );
        let report = load.stop().await;
        eprintln!(
            "failing {point}: {} requests, {} failed",
            report.sent, report.failed
        );
        assert_eq!(
            report.failed,
            0,
            "{point}: {:?}",
            &report.failures[..report.failures.len().min(5)]
        );
        assert_eq!(shop.versions_now(5).await, ["1".to_string()].into());
        let seen = lines(&seen);
        assert!(
            seen.iter().any(|l| l.starts_with("on_rollback")),
            "{point}: {seen:?}"
        );
        assert!(
            !seen.iter().any(|l| l.starts_with("after_traffic")),
            "{point}: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_after_deploy_hook_is_reported_or_rolls_back_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let ok = recorder(dir.path(), &seen, 0);
    let bad = recorder(dir.path(), &seen, 4);
    let shop = Shop::start(
        "blue-green",
        &["blue", "green"],
        &hooks(&ok, Some(("after_deploy", &bad)), ""),
    );
    let out = shop.deploy("1", &[]);
    assert_exit(&out, 0);
    assert!(text(&out).contains("reported only"), "{}", text(&out));
    let config = std::fs::read_to_string(shop.proxy.config_path()).unwrap();
    std::fs::write(
        shop.proxy.config_path(),
        config.replace(
            "timeout = \"10s\" }, on_rollback",
            "timeout = \"10s\", rollback = true }, on_rollback",
        ),
    )
    .unwrap();
    let out = shop.deploy("2", &[]);
    assert_exit(&out, 2);
    assert_eq!(shop.versions_now(5).await, ["1".to_string()].into());
}
