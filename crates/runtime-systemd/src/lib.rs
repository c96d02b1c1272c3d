//! The systemd runtime: every node is a unit the operator wrote (`shop@{node}.service`); nonstop
//! points `current/<node>` at the release, gives the unit a drop-in of its own and restarts it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nonstop_ports::template::unknown_placeholder;
use nonstop_ports::{Instance, InstanceSpec, PortError, PortResult, Runtime};
use serde::Deserialize;

/// The drop-in nonstop owns in `UNIT.d/` of the manager's persistent unit directory.
pub const DROP_IN: &str = "50-nonstop.conf";

/// How often a unit's state is read while waiting for it.
const POLL: Duration = Duration::from_millis(50);

/// The runtime's config (`runtime = { kind = "systemd", ... }` minus the kind and shared keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdConfig {
    /// The node's unit, `{node}` filled in, e.g. `"shop@{node}.service"`.
    pub unit: String,
    /// `"system"` (the system manager) or `"user"` (`systemctl --user`).
    #[serde(default)]
    pub scope: Scope,
    /// Longest a `systemctl` call may take, and the start of a unit until it runs, e.g. `"60s"`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "60s".into()
}

/// Which systemd manager runs the units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// PID 1; drop-ins in `/etc/systemd/system/`.
    #[default]
    System,
    /// The user's manager (`systemctl --user`); drop-ins in `$XDG_CONFIG_HOME/systemd/user/`.
    User,
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd runtime config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("`{command}` {message}")]
    Systemctl { command: String, message: String },
    #[error("{unit} did not start: {reason}; last lines of {log}:\n{tail}")]
    StartFailed {
        unit: String,
        reason: String,
        log: String,
        tail: String,
    },
}

impl From<SystemdError> for PortError {
    fn from(e: SystemdError) -> Self {
        PortError::new(e.to_string())
    }
}

/// What `systemctl show` says about a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub load: String,
    pub active: String,
    pub sub: String,
    pub main_pid: i32,
    pub result: String,
}

impl UnitState {
    pub const PROPERTIES: &[&str] = &["LoadState", "ActiveState", "SubState", "MainPID", "Result"];

    /// Reads `Key=Value` lines of `systemctl show -p …`.
    pub fn parse(text: &str) -> UnitState {
        let mut state = UnitState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().to_string();
            match key {
                "LoadState" => state.load = value,
                "ActiveState" => state.active = value,
                "SubState" => state.sub = value,
                "MainPID" => state.main_pid = value.parse().unwrap_or(0),
                "Result" => state.result = value,
                _ => {}
            }
        }
        state
    }

    /// Active with a main process.
    pub fn running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading") && self.main_pid > 0
    }

    /// Will not come up by itself: it stopped or died (an `auto-restart` wait counts: the
    /// process nonstop started is gone).
    pub fn down(&self) -> bool {
        matches!(self.active.as_str(), "inactive" | "failed" | "deactivating")
            || self.sub == "auto-restart"
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} (Result={}, MainPID={})",
            self.active, self.sub, self.result, self.main_pid
        )
    }
}

/// Instances as units of a systemd manager, one per node.
#[derive(Debug, Clone)]
pub struct SystemdRuntime {
    config: SystemdConfig,
    timeout: Duration,
    stop_grace: Duration,
    env: BTreeMap<String, String>,
    /// User scope: the manager's XDG dirs (`XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME`), where they
    /// are not nonstop's own.
    user_env: BTreeMap<String, PathBuf>,
}

impl SystemdRuntime {
    /// Checks the unit template against the service's `nodes` and the shared `env`;
    /// `stop_grace` becomes the unit's `TimeoutStopSec=`.
    pub fn new(
        config: SystemdConfig,
        nodes: &[&str],
        env: impl IntoIterator<Item = (String, String)>,
        stop_grace: Duration,
    ) -> Result<SystemdRuntime, SystemdError> {
        let bad = |m: String| SystemdError::Config(m);
        let timeout = humantime::parse_duration(&config.timeout)
            .map_err(|e| bad(format!("timeout `{}`: {e}", config.timeout)))?;
        if let Some(p) = unknown_placeholder(&config.unit, &["node"]) {
            return Err(bad(format!(
                "`unit` uses unknown placeholder `{{{p}}}`; only {{node}} is known"
            )));
        }
        if nodes.len() > 1 && !config.unit.contains("{node}") {
            return Err(bad(format!(
                "`unit = \"{}\"` names one unit for {} nodes; use a template unit with `{{node}}`, e.g. \"shop@{{node}}.service\"",
                config.unit,
                nodes.len()
            )));
        }
        let samples = if nodes.is_empty() {
            &["node"][..]
        } else {
            nodes
        };
        for node in samples {
            check_unit_name(&config.unit.replace("{node}", node)).map_err(bad)?;
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for (k, v) in &env {
            environment_line(k, v).map_err(|e| bad(format!("env: {e}")))?;
        }
        Ok(SystemdRuntime {
            config,
            timeout,
            stop_grace,
            env,
            user_env: BTreeMap::new(),
        })
    }

    /// Drives the user manager whose XDG dirs are `env` instead of those in nonstop's
    /// environment (a test's private manager, or an embedder's).
    pub fn with_user_env(mut self, env: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        self.user_env = env.into_iter().collect();
        self
    }

    /// `key` from [`Self::with_user_env`], else from nonstop's environment; never empty.
    fn user_var(&self, key: &str) -> Option<PathBuf> {
        self.user_env
            .get(key)
            .cloned()
            .or_else(|| std::env::var_os(key).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The unit of `node`.
    pub fn unit(&self, node: &str) -> Result<String, SystemdError> {
        let unit = self.config.unit.replace("{node}", node);
        check_unit_name(&unit).map_err(SystemdError::Config)?;
        Ok(unit)
    }

    /// The manager's persistent unit directory, where the drop-ins go: they outlive a reboot,
    /// so an enabled unit comes back with the release, port and environment it last ran with.
    pub fn unit_dir(&self) -> Result<PathBuf, SystemdError> {
        match self.config.scope {
            Scope::System => Ok(PathBuf::from("/etc/systemd/system")),
            Scope::User => self
                .user_var("XDG_CONFIG_HOME")
                .or_else(|| self.user_var("HOME").map(|home| home.join(".config")))
                .map(|config| config.join("systemd/user"))
                .ok_or_else(|| {
                    SystemdError::Config(
                        "scope = \"user\" needs XDG_CONFIG_HOME or HOME in nonstop's environment"
                            .into(),
                    )
                }),
        }
    }

    /// The drop-in of `unit`.
    pub fn drop_in_path(&self, unit: &str) -> Result<PathBuf, SystemdError> {
        Ok(self.unit_dir()?.join(format!("{unit}.d")).join(DROP_IN))
    }

    /// Runs `systemctl [--user] ARGS`, bounded by `limit`; its stdout, or an error with its stderr.
    async fn systemctl(&self, limit: Duration, args: &[&str]) -> Result<String, SystemdError> {
        let mut command = tokio::process::Command::new("systemctl");
        if self.config.scope == Scope::User {
            if self.user_var("XDG_RUNTIME_DIR").is_none() {
                return Err(SystemdError::Config(
                    "scope = \"user\" needs XDG_RUNTIME_DIR (the user manager's /run/user/UID) in nonstop's environment".into(),
                ));
            }
            command.arg("--user").envs(&self.user_env);
        }
        command
            .arg("--no-ask-password")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!(
            "systemctl{} {}",
            if self.config.scope == Scope::User {
                " --user"
            } else {
                ""
            },
            args.join(" ")
        );
        let failed = |message: String| SystemdError::Systemctl {
            command: shown.clone(),
            message,
        };
        let child = command
            .spawn()
            .map_err(|e| failed(format!("could not run: {e}")))?;
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| failed(format!("did not finish within {limit:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(failed(format!(
                "failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The unit's state now.
    pub async fn state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let mut args = vec!["show"];
        for p in UnitState::PROPERTIES {
            args.extend(["-p", p]);
        }
        args.extend(["--", unit]);
        Ok(UnitState::parse(
            &self.systemctl(self.timeout, &args).await?,
        ))
    }

    async fn start_unit(&self, spec: &InstanceSpec) -> Result<Instance, SystemdError> {
        let unit = self.unit(spec.node.as_str())?;
        let log = prepare_log(spec, &unit)?;
        let release_dir =
            std::fs::canonicalize(&spec.release_dir).map_err(|e| file(&spec.release_dir, e))?;
        point_link(
            &current_link(&release_dir, spec.node.as_str())?,
            &release_dir,
        )?;
        let text = drop_in(spec, &self.env, &release_dir, &log, self.stop_grace)
            .map_err(SystemdError::Config)?;
        write_atomic(&self.drop_in_path(&unit)?, &text)?;
        self.systemctl(self.timeout, &["daemon-reload"]).await?;
        let failed = |reason: String| SystemdError::StartFailed {
            unit: unit.clone(),
            reason,
            log: log.display().to_string(),
            tail: nonstop_runtime_process::log_tail(&log, 0, 20),
        };
        let before = self.state(&unit).await?;
        if matches!(
            before.load.as_str(),
            "not-found" | "masked" | "bad-setting" | "error"
        ) {
            return Err(failed(format!(
                "the unit is {} (LoadState); install the unit file first (see docs/runtimes/systemd.md)",
                before.load
            )));
        }
        if let Err(e) = self
            .systemctl(self.timeout, &["restart", "--", &unit])
            .await
        {
            let now = self
                .state(&unit)
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Err(failed(format!("{e}; now {now}")));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let state = self.state(&unit).await?;
            if state.running()
                && let Some(start_ticks) = nonstop_runtime_process::start_ticks(state.main_pid)
            {
                return Ok(Instance {
                    node: spec.node.clone(),
                    version: spec.version.clone(),
                    port: spec.port,
                    pid: state.main_pid,
                    start_ticks,
                    log: spec.log.clone(),
                });
            }
            if state.down() {
                return Err(failed(format!("it went {state}")));
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "not running within {:?}, still {state}",
                    self.timeout
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether `state` shows `instance` running: its own process, or one systemd restarted
    /// (`Restart=`) with the same drop-in — the same release on the same port, not a newer one.
    fn is_ours(&self, unit: &str, state: &UnitState, instance: &Instance) -> bool {
        if !state.running() {
            return false;
        }
        let same_process = state.main_pid == instance.pid
            && (instance.start_ticks == 0
                || nonstop_runtime_process::start_ticks(instance.pid)
                    == Some(instance.start_ticks));
        same_process || self.drop_in_names(unit, instance)
    }

    /// Whether the unit's drop-in is still the one written for `instance`.
    fn drop_in_names(&self, unit: &str, instance: &Instance) -> bool {
        let Ok(text) = self
            .drop_in_path(unit)
            .and_then(|p| std::fs::read_to_string(&p).map_err(|e| file(&p, e)))
        else {
            return false;
        };
        [
            ("NONSTOP_VERSION", instance.version.to_string()),
            ("NONSTOP_PORT", instance.port.to_string()),
        ]
        .iter()
        .all(|(k, v)| environment_line(k, v).is_ok_and(|line| text.lines().any(|l| l == line)))
    }

    async fn stop_unit(&self, instance: &Instance, grace: Duration) -> Result<(), SystemdError> {
        let unit = self.unit(instance.node.as_str())?;
        let state = self.state(&unit).await?;
        if state.running() && !self.is_ours(&unit, &state, instance) {
            // A newer instance runs in the unit: never stop someone else's.
            return Ok(());
        }
        if !state.running() && matches!(state.active.as_str(), "inactive" | "failed") {
            return Ok(());
        }
        // Still ours, or left activating / auto-restarting after ours died: stop the unit.
        // systemd sends SIGKILL itself after TimeoutStopSec (the drop-in sets it to stop_grace).
        let stopped = self
            .systemctl(grace + self.timeout, &["stop", "--", &unit])
            .await;
        if stopped.is_ok() {
            return Ok(());
        }
        let _ = self
            .systemctl(self.timeout, &["kill", "--signal=SIGKILL", "--", &unit])
            .await;
        let deadline = Instant::now() + self.timeout;
        loop {
            let state = self.state(&unit).await?;
            if matches!(state.active.as_str(), "inactive" | "failed") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SystemdError::Systemctl {
                    command: format!("systemctl stop {unit}"),
                    message: format!(
                        "{} and SIGKILL did not stop it within {:?}: {state}",
                        stopped.err().map(|e| e.to_string()).unwrap_or_default(),
                        self.timeout
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Runtime for SystemdRuntime {
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        Ok(self.start_unit(spec).await?)
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        Ok(self.stop_unit(instance, grace).await?)
    }

    /// The unit is active and runs this instance: the process nonstop started, or the same
    /// release restarted by systemd after a crash.
    async fn is_running(&self, instance: &Instance) -> bool {
        let Ok(unit) = self.unit(instance.node.as_str()) else {
            return false;
        };
        match self.state(&unit).await {
            Ok(state) => self.is_ours(&unit, &state, instance),
            Err(_) => false,
        }
    }
}

/// A unit name nonstop may pass to systemctl: `[A-Za-z0-9:_.@-]`, a `.service`, not an option,
/// and not a bare template (`shop@.service`).
pub fn check_unit_name(unit: &str) -> Result<(), String> {
    let stem = unit.strip_suffix(".service").unwrap_or("");
    if stem.is_empty() || unit.len() > 255 {
        return Err(format!(
            "unit `{unit}` must be a service unit name like \"shop@{{node}}.service\""
        ));
    }
    if let Some(c) = unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":_.@-".contains(*c)))
    {
        return Err(format!(
            "unit `{unit}` holds `{c}`; unit names here are letters, digits and : _ . @ -"
        ));
    }
    if unit.starts_with('-') || unit.starts_with('.') || stem.ends_with('@') {
        return Err(format!(
            "unit `{unit}` is not the name of one unit (a template needs an instance: \"shop@{{node}}.service\")"
        ));
    }
    Ok(())
}

/// `<releases.dir>/current/<node>`: the stable path of the release the node runs, a symlink to
/// `<releases.dir>/releases/<version>` (`release_dir`'s grandparent is `releases.dir`).
pub fn current_link(release_dir: &Path, node: &str) -> Result<PathBuf, SystemdError> {
    let base = release_dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "releases"))
        .and_then(Path::parent)
        .ok_or_else(|| SystemdError::File {
            path: release_dir.to_path_buf(),
            message: "is not a `<releases.dir>/releases/<version>` directory".into(),
        })?;
    Ok(base.join("current").join(node))
}

fn file(path: &Path, e: std::io::Error) -> SystemdError {
    SystemdError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Creates the log (and its directory) with a header line; returns its absolute path.
fn prepare_log(spec: &InstanceSpec, unit: &str) -> Result<PathBuf, SystemdError> {
    let dir = spec.log.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file(dir, e))?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| file(&spec.log, e))?;
    let _ = writeln!(
        out,
        "--- nonstop: restarting {unit} for {} {} on port {}",
        spec.node, spec.version, spec.port
    );
    std::fs::canonicalize(&spec.log).map_err(|e| file(&spec.log, e))
}

/// Points the symlink `link` at `target` in one step: a new link under a temporary name, renamed
/// over the old one, so the unit sees the old release or the new one, never none.
pub fn point_link(link: &Path, target: &Path) -> Result<(), SystemdError> {
    let dir = link.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file(dir, e))?;
    let name = link.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.nonstop-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| file(&tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file(link, e)
    })?;
    sync_dir(dir);
    Ok(())
}

/// Writes `path` atomically: temp file in the same directory, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, text: &str) -> Result<(), SystemdError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file(dir, e))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.nonstop-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(file(path, e));
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The drop-in for one start: the instance's environment, its log, and the stop grace.
pub fn drop_in(
    spec: &InstanceSpec,
    shared_env: &BTreeMap<String, String>,
    release_dir: &Path,
    log: &Path,
    stop_grace: Duration,
) -> Result<String, String> {
    let mut env: BTreeMap<String, String> = shared_env.clone();
    env.extend(spec.env.clone());
    let path = |p: &Path| p.to_string_lossy().into_owned();
    for (k, v) in [
        ("NONSTOP_NODE", spec.node.to_string()),
        ("NONSTOP_PORT", spec.port.to_string()),
        ("NONSTOP_VERSION", spec.version.to_string()),
        ("NONSTOP_RELEASE_DIR", path(release_dir)),
        (
            "NONSTOP_ARTIFACT",
            path(&release_dir.join(spec.artifact.file_name().unwrap_or_default())),
        ),
        ("PORT", spec.port.to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    let mut text = format!(
        "# Written by nonstop at each start of {} (release {}); edits are overwritten.\n[Service]\n",
        spec.node, spec.version
    );
    for (k, v) in &env {
        text.push_str(&environment_line(k, v)?);
        text.push('\n');
    }
    let log = path(log);
    if !log.starts_with('/') || log.chars().any(char::is_control) {
        return Err(format!(
            "log path {log:?} must be absolute and free of control characters"
        ));
    }
    text.push_str(&format!(
        "StandardOutput=append:{}\nStandardError=inherit\nTimeoutStopSec={}ms\n",
        log.replace('%', "%%"),
        stop_grace.as_millis().max(1)
    ));
    Ok(text)
}

/// `Environment="KEY=value"` quoted per systemd.syntax(7): `\` and `"` escaped, `%` doubled
/// (specifiers); a value with a newline or other control character is refused.
pub fn environment_line(key: &str, value: &str) -> Result<String, String> {
    let valid_key = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return Err(format!(
            "`{key}` is not an environment variable name (letters, digits, _)"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "the value of {key} holds a newline or control character, which a unit file cannot carry"
        ));
    }
    let escaped = format!("{key}={value}")
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("Environment=\"{escaped}\""))
}

#[cfg(test)]
mod tests;
