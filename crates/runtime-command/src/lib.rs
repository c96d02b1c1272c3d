//! The command runtime: the operator's own programs install, start, stop and report an instance
//! (a supervisor's CLI, a container tool, an init script), run from argv templates, never a shell.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nonstop_ports::template::{check_hooks, fill};
use nonstop_ports::{Instance, InstanceSpec, PortError, PortResult, Runtime};
use nonstop_runtime_process::{ServiceEnv, instance_env};
use serde::Deserialize;

/// Placeholders the hooks may use; `stop` and `status` know only node, port and version.
pub const PLACEHOLDERS: &[&str] = &["artifact", "release_dir", "version", "port", "node"];

/// The runtime's config (`runtime = { kind = "command", ... }` minus the kind and shared keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRuntimeConfig {
    /// Optional: puts the release in place (unpack, copy, `docker load`, …) before `start`.
    #[serde(default)]
    pub install: Option<Vec<String>>,
    /// Starts the instance and returns once it is started (the app itself keeps running elsewhere).
    pub start: Vec<String>,
    /// Stops it; nonstop waits for it to return.
    pub stop: Vec<String>,
    /// Exits 0 while the instance runs, non-zero otherwise.
    pub status: Vec<String>,
    /// Longest a hook may run, e.g. `"60s"`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "60s".into()
}

/// Instances run by the operator's hooks.
#[derive(Debug, Clone)]
pub struct CommandRuntime {
    config: CommandRuntimeConfig,
    timeout: Duration,
    env: ServiceEnv,
}

impl CommandRuntime {
    pub fn new(config: CommandRuntimeConfig, env: ServiceEnv) -> Result<CommandRuntime, String> {
        let timeout = humantime::parse_duration(&config.timeout)
            .map_err(|e| format!("command runtime: timeout `{}`: {e}", config.timeout))?;
        let hooks = [
            ("install", config.install.as_ref()),
            ("start", Some(&config.start)),
            ("stop", Some(&config.stop)),
            ("status", Some(&config.status)),
        ];
        check_hooks(hooks, PLACEHOLDERS).map_err(|e| format!("command runtime: {e}"))?;
        Ok(CommandRuntime {
            config,
            timeout,
            env,
        })
    }

    /// What `stop` and `status` see: the service's environment and the instance's identity.
    fn instance_ref_env(&self, instance: &Instance) -> BTreeMap<String, String> {
        let mut env = self.env.base();
        for (k, v) in [
            ("NONSTOP_NODE", instance.node.to_string()),
            ("NONSTOP_PORT", instance.port.to_string()),
            ("NONSTOP_VERSION", instance.version.to_string()),
        ] {
            env.insert(k.to_string(), v);
        }
        env
    }

    /// Runs one hook with its output appended to `log` and exactly `env` as its environment;
    /// an error carries the hook's last words.
    async fn run(
        &self,
        hook: &str,
        argv: &[String],
        values: &BTreeMap<&str, String>,
        log: &Path,
        env: &BTreeMap<String, String>,
    ) -> PortResult<()> {
        let argv: Vec<String> = argv.iter().map(|a| fill(a, values)).collect();
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| PortError::new(format!("cannot open log {}: {e}", log.display())))?;
        let _ = writeln!(out, "--- nonstop: {hook} hook {argv:?}");
        let err = out
            .try_clone()
            .map_err(|e| PortError::new(format!("cannot share the log: {e}")))?;
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                PortError::new(format!("{hook} hook `{}` could not start: {e}", argv[0]))
            })?;
        let status = tokio::time::timeout(self.timeout, child.wait())
            .await
            .map_err(|_| {
                PortError::new(format!(
                    "{hook} hook `{}` did not finish within {:?} and was killed",
                    argv[0], self.timeout
                ))
            })?
            .map_err(|e| PortError::new(format!("{hook} hook `{}`: {e}", argv[0])))?;
        if status.success() {
            Ok(())
        } else {
            Err(PortError::new(format!(
                "{hook} hook `{}` failed ({status}); its output is in {}",
                argv[0],
                log.display()
            )))
        }
    }
}

fn spec_values(spec: &InstanceSpec) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("artifact", spec.artifact.display().to_string()),
        ("release_dir", spec.release_dir.display().to_string()),
        ("version", spec.version.to_string()),
        ("port", spec.port.to_string()),
        ("node", spec.node.to_string()),
    ])
}

fn instance_values(instance: &Instance) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("version", instance.version.to_string()),
        ("port", instance.port.to_string()),
        ("node", instance.node.to_string()),
    ])
}

impl Runtime for CommandRuntime {
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        let values = spec_values(spec);
        let env = instance_env(spec, &self.env);
        if let Some(install) = &self.config.install {
            self.run("install", install, &values, &spec.log, &env)
                .await?;
        }
        self.run("start", &self.config.start, &values, &spec.log, &env)
            .await?;
        Ok(Instance {
            node: spec.node.clone(),
            version: spec.version.clone(),
            port: spec.port,
            // The hooks own the process; nonstop knows it only through `status`.
            pid: 0,
            start_ticks: 0,
            log: spec.log.clone(),
        })
    }

    async fn stop(&self, instance: &Instance, _grace: Duration) -> PortResult<()> {
        let values = instance_values(instance);
        self.run(
            "stop",
            &self.config.stop,
            &values,
            &instance.log,
            &self.instance_ref_env(instance),
        )
        .await
    }

    /// Runs the `status` hook, bounded by the timeout; exit 0 means running.
    async fn is_running(&self, instance: &Instance) -> bool {
        let values = instance_values(instance);
        let argv: Vec<String> = self
            .config
            .status
            .iter()
            .map(|a| fill(a, &values))
            .collect();
        let Ok(mut child) = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(self.instance_ref_env(instance))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        else {
            return false;
        };
        matches!(
            tokio::time::timeout(self.timeout, child.wait()).await,
            Ok(Ok(status)) if status.success()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_ports::{NodeName, Version};

    /// A supervisor simulated by a script: `start` writes a marker, `stop` removes it.
    fn runtime(dir: &Path, start_verb: &str) -> CommandRuntime {
        let script = dir.join("ctl.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\nset -eu\nm=\"$(dirname \"$0\")/running-$2\"\ncase \"$1\" in\n  \
             install) cp \"$3\" \"$(dirname \"$0\")/installed-$2\" ;;\n  \
             start) echo \"$3\" > \"$m\"; echo started ;;\n  \
             stop) rm -f \"$m\" ;;\n  status) test -f \"$m\" ;;\n  \
             broken) echo 'cannot bind port' >&2; exit 4 ;;\nesac\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        let s = script.display().to_string();
        let argv = |args: &[&str]| -> Vec<String> {
            std::iter::once(s.clone())
                .chain(args.iter().map(|a| a.to_string()))
                .collect()
        };
        CommandRuntime::new(
            CommandRuntimeConfig {
                install: Some(argv(&["install", "{node}", "{artifact}"])),
                start: argv(&[start_verb, "{node}", "{version}"]),
                stop: argv(&["stop", "{node}"]),
                status: argv(&["status", "{node}"]),
                timeout: "5s".into(),
            },
            ServiceEnv::default(),
        )
        .unwrap()
    }

    fn spec(dir: &Path) -> InstanceSpec {
        let artifact = dir.join("app.jar");
        std::fs::write(&artifact, "v2").unwrap();
        InstanceSpec {
            node: NodeName::from("n1"),
            port: 8081,
            version: Version::from("2"),
            release_dir: dir.to_path_buf(),
            artifact,
            env: BTreeMap::new(),
            log: dir.join("logs/n1.log"),
        }
    }

    #[tokio::test]
    async fn hooks_install_start_report_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), "start");
        let instance = rt.start(&spec(dir.path())).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("installed-n1")).unwrap(),
            "v2"
        );
        assert!(rt.is_running(&instance).await);
        assert!(
            std::fs::read_to_string(&instance.log)
                .unwrap()
                .contains("started")
        );
        rt.stop(&instance, Duration::from_secs(1)).await.unwrap();
        assert!(!rt.is_running(&instance).await);
    }

    #[tokio::test]
    async fn a_failing_hook_is_an_error_naming_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), "broken");
        let err = rt.start(&spec(dir.path())).await.unwrap_err().to_string();
        assert!(
            err.contains("start hook") && err.contains("exit status: 4"),
            "{err}"
        );
        let log = std::fs::read_to_string(dir.path().join("logs/n1.log")).unwrap();
        assert!(log.contains("cannot bind port"), "{log}");
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        let config = CommandRuntimeConfig {
            install: None,
            start: vec!["ctl".into(), "{prot}".into()],
            stop: vec!["ctl".into()],
            status: vec!["ctl".into()],
            timeout: "5s".into(),
        };
        assert!(
            CommandRuntime::new(config, ServiceEnv::default())
                .unwrap_err()
                .contains("{prot}")
        );
    }
}
