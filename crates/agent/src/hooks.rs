//! The node's lifecycle hooks, run on this host: the argv and timeout are this agent's own
//! config's, the caller only names the point and sends the deploy's values (never a command).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use nonstop_agent_client::protocol;
use nonstop_ports::HookOutput;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::routes::{ApiError, Result, Shared, check_plain, node};

/// The hook points that belong to one node; the service-wide ones run where the deploy runs.
const PER_NODE: &[&str] = &["after_install", "before_traffic", "after_traffic"];
/// The most output lines kept (the last ones), and the longest line.
const MAX_LINES: usize = 200;
const MAX_LINE: usize = 4096;

pub(crate) async fn run_hook(
    State(state): State<Shared>,
    Path((service_name, node_name, point)): Path<(String, String, String)>,
    Json(request): Json<protocol::HookRequest>,
) -> Result<Json<HookOutput>> {
    check_plain("version", request.version.as_str())?;
    if let Some(old) = &request.old_version {
        check_plain("version", old.as_str())?;
    }
    check_plain("strategy", &request.strategy)?;
    let (svc, _, node) = node(&state, &service_name, &node_name)?;
    if !PER_NODE.contains(&point.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "`{point}` is not a per-node hook; an agent runs only {}",
                PER_NODE.join(", ")
            ),
        ));
    }
    let hook = svc
        .config
        .hooks
        .all()
        .into_iter()
        .find(|(name, _)| *name == point)
        .and_then(|(_, hook)| hook)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "`{service_name}` has no `{point}` hook in this agent's config on `{}`; the console and the hosts must read the same nonstop.toml",
                    state.host.name
                ),
            )
        })?;
    let config = svc
        .node_here(&state.host.name, &node_name)
        .expect("checked by node()");
    // The paths are this host's: where the agent installed the release, if it did.
    let release = nonstop_releases::load(&svc.base, &request.version);
    let values = BTreeMap::from([
        ("service", service_name.clone()),
        ("node", node.to_string()),
        ("port", config.port.get_ref().to_string()),
        ("version", request.version.to_string()),
        (
            "old_version",
            request
                .old_version
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
        (
            "release_dir",
            release
                .as_ref()
                .map(|r| r.dir.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "artifact",
            release
                .as_ref()
                .map(|r| r.artifact().display().to_string())
                .unwrap_or_default(),
        ),
        ("deploy", request.deploy.to_string()),
        ("strategy", request.strategy.clone()),
        ("hook", point.clone()),
    ]);
    let argv: Vec<String> = hook
        .run
        .get_ref()
        .iter()
        .map(|a| nonstop_ports::template::fill(a, &values))
        .collect();
    // The same environment rule as local hooks and instances (docs/lifecycle.md): the inherited
    // baseline and `inherit_env`, the runtime's `env`, then the hook's `NONSTOP_*` values.
    let shared = &svc.config.runtime.shared;
    let mut env = shared.inherit_env.from_here();
    env.extend(shared.env.clone());
    let output = run(&argv, &env, &values, hook.timeout.0).await;
    tracing::info!(service = %service_name, node = %node, hook = %point, status = %output.status, "hook");
    Ok(Json(output))
}

/// Runs `argv` (no shell) with `env` and `NONSTOP_*` set from `values`, to its end or `timeout`.
async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    values: &BTreeMap<&'static str, String>,
    timeout: Duration,
) -> HookOutput {
    let mut output = HookOutput {
        success: false,
        status: String::new(),
        lines: Vec::new(),
        dropped: 0,
    };
    let Some((program, args)) = argv.split_first() else {
        output.status = "no program".into();
        return output;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in values.iter().filter(|(_, v)| !v.is_empty()) {
        command.env(format!("NONSTOP_{}", name.to_uppercase()), value);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            output.status = format!("cannot start `{program}`: {e}");
            return output;
        }
    };
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let lines = &mut output.lines;
    let dropped = &mut output.dropped;
    let mut keep = |mut line: String| {
        if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        lines.push(line);
        if lines.len() > MAX_LINES {
            lines.remove(0);
            *dropped += 1;
        }
    };
    let finished = async {
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            tokio::select! {
                line = out.next_line(), if !out_done => match line {
                    Ok(Some(line)) => keep(line),
                    _ => out_done = true,
                },
                line = err.next_line(), if !err_done => match line {
                    Ok(Some(line)) => keep(line),
                    _ => err_done = true,
                },
            }
        }
        child.wait().await
    };
    match tokio::time::timeout(timeout, finished).await {
        Ok(Ok(status)) => {
            output.success = status.success();
            output.status = status.to_string();
        }
        Ok(Err(e)) => output.status = e.to_string(),
        Err(_) => {
            output.status = format!("still running after {timeout:?}: stopped");
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test]
    async fn a_hook_gets_its_values_as_environment_and_its_status_and_output_come_back() {
        let values = BTreeMap::from([("node", "a1".to_string()), ("old_version", String::new())]);
        let script =
            "echo node=$NONSTOP_NODE old=${NONSTOP_OLD_VERSION-unset}; echo oops >&2; exit 3";
        let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
        let output = run(
            &argv(&["/bin/sh", "-c", script]),
            &env,
            &values,
            Duration::from_secs(10),
        )
        .await;
        assert!(!output.success);
        assert_eq!(output.status, "exit status: 3");
        let mut lines = output.lines.clone();
        lines.sort();
        assert_eq!(lines, ["node=a1 old=unset", "oops"]);
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_stopped_and_long_output_keeps_its_tail() {
        let started = std::time::Instant::now();
        let output = run(
            &argv(&["/bin/sleep", "30"]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            Duration::from_millis(300),
        )
        .await;
        assert!(!output.success);
        assert!(output.status.contains("still running"), "{}", output.status);
        assert!(started.elapsed() < Duration::from_secs(10));
        let output = run(
            &argv(&["/usr/bin/seq", "1", "250"]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            Duration::from_secs(10),
        )
        .await;
        assert!(output.success, "{}", output.status);
        assert_eq!(output.lines.len(), MAX_LINES);
        assert_eq!(output.dropped, 50);
        assert_eq!(output.lines.last().map(String::as_str), Some("250"));
        let output = run(
            &argv(&["/no/such/hook"]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            Duration::from_secs(1),
        )
        .await;
        assert!(output.status.contains("cannot start"), "{}", output.status);
    }
}
