//! Runs the operator's lifecycle hooks as plan steps: an argv with `{placeholders}` filled in
//! (never a shell), a documented `NONSTOP_*` environment, a timeout, output to the deploy.

use std::collections::BTreeMap;
use std::process::Stdio;

use nonstop_ports::{Balancer, HookOutput, HookRun, NodeName, PortResult, Probe, Runtime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::error::StepError;
use crate::executor::Run;
use crate::spec::HookPoint;
use crate::{Engine, EventKind};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// The hook step for `point`, when the service configures one.
    pub(crate) fn hook_step(
        &self,
        point: HookPoint,
        node: Option<&NodeName>,
    ) -> Option<crate::Step> {
        self.spec
            .hooks
            .contains_key(&point)
            .then(|| crate::Step::Hook {
                point,
                node: node.cloned(),
            })
    }

    /// What a hook sees: the same values as `{placeholders}` in its argv and as `NONSTOP_*`.
    pub(crate) fn hook_values(
        &self,
        run: &Run,
        point: HookPoint,
        node: Option<&NodeName>,
    ) -> BTreeMap<&'static str, String> {
        let mut values = BTreeMap::from([
            ("service", self.service.clone()),
            ("version", run.release.version.to_string()),
            (
                "old_version",
                run.from.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            ),
            ("release_dir", run.release.dir.display().to_string()),
            ("artifact", run.release.artifact().display().to_string()),
            ("deploy", run.deploy.to_string()),
            ("strategy", run.strategy.clone()),
            ("hook", point.as_str().to_string()),
        ]);
        // A service-wide hook has no node: its `{node}` and `{port}` are empty, and unset.
        values.insert("node", node.map(|n| n.to_string()).unwrap_or_default());
        values.insert(
            "port",
            node.map(|n| self.spec.port_of(n).to_string())
                .unwrap_or_default(),
        );
        values
    }

    pub(crate) async fn run_hook(
        &self,
        run: &Run,
        point: HookPoint,
        node: Option<&NodeName>,
    ) -> Result<String, StepError> {
        let Some(hook) = self.spec.hooks.get(&point) else {
            return Ok("not configured".into());
        };
        let values = self.hook_values(run, point, node);
        let argv: Vec<String> = hook
            .argv
            .iter()
            .map(|a| nonstop_ports::template::fill(a, &values))
            .collect();
        let started = Instant::now();
        let on_host = match node {
            Some(node) => {
                let request = HookRun {
                    point: point.as_str().to_string(),
                    values: values
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                    timeout: hook.timeout,
                };
                self.runtime.run_hook(node, &request).await
            }
            None => None,
        };
        let outcome = match on_host {
            Some(answer) => self.host_outcome(answer, node),
            None => {
                self.spawn_logged(
                    &argv,
                    &values,
                    &Default::default(),
                    None,
                    hook.timeout,
                    node,
                )
                .await
            }
        };
        let took = crate::executor::took(started.elapsed());
        match outcome {
            Ok(tail) => Ok(format!("hook {} passed in {took}{tail}", point.as_str())),
            Err(why) if hook.aborts => Err(StepError::Failed(format!(
                "hook {} failed: {why}",
                point.as_str()
            ))),
            Err(why) => {
                let message = format!(
                    "hook {} failed ({why}); reported only (rollback = false)",
                    point.as_str()
                );
                self.event(EventKind::Warn, node, message.clone());
                Ok(message)
            }
        }
    }

    /// A hook run on the node's host (through its agent), told as a local one is: its output as
    /// progress, `Ok` with the last lines it printed.
    fn host_outcome(
        &self,
        answer: PortResult<HookOutput>,
        node: Option<&NodeName>,
    ) -> Result<String, String> {
        let output = answer.map_err(|e| format!("on the node's host: {e}"))?;
        if output.dropped > 0 {
            let dropped = format!("│ ({} earlier lines not kept)", output.dropped);
            self.event(EventKind::Progress, node, dropped);
        }
        for line in &output.lines {
            self.event(EventKind::Progress, node, format!("│ {line}"));
        }
        let last = &output.lines[output.lines.len().saturating_sub(3)..];
        let tail = if last.is_empty() {
            String::new()
        } else {
            format!(": {}", last.join(" | "))
        };
        if output.success {
            Ok(tail)
        } else {
            Err(format!("{}{tail}", output.status))
        }
    }

    /// Runs `argv` to its end within `timeout` (output shown as progress, and appended to
    /// `log` if given); `Ok` carries the last lines it printed.
    pub(crate) async fn spawn_logged(
        &self,
        argv: &[String],
        values: &BTreeMap<&'static str, String>,
        env: &BTreeMap<String, String>,
        cwd: Option<&std::path::Path>,
        timeout: std::time::Duration,
        node: Option<&NodeName>,
    ) -> Result<String, String> {
        let (program, args) = argv.split_first().ok_or("no program")?;
        let mut command = tokio::process::Command::new(program);
        // The same environment rule as the instances' (docs/lifecycle.md).
        let shared = &self.config.runtime.shared;
        command
            .args(args)
            .env_clear()
            .envs(shared.inherit_env.from_here())
            .envs(&shared.env)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        for (name, value) in values.iter().filter(|(_, v)| !v.is_empty()) {
            command.env(format!("NONSTOP_{}", name.to_uppercase()), value);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start `{program}`: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut last: Vec<String> = Vec::new();
        let mut keep = |line: String| {
            self.event(EventKind::Progress, node, format!("│ {line}"));
            last.push(line);
            if last.len() > 3 {
                last.remove(0);
            }
        };
        let run = async {
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
        let status = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| {
                format!(
                    "still running after {}: stopped",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|e| e.to_string())?;
        let tail = if last.is_empty() {
            String::new()
        } else {
            format!(": {}", last.join(" | "))
        };
        if status.success() {
            Ok(tail)
        } else {
            Err(format!("{status}{tail}"))
        }
    }
}
