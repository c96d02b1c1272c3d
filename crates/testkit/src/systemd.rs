//! A real systemd user manager for tests: `systemd --user` in a private mount namespace, whose
//! tmpfs on /run/systemd lets it run without systemd as PID 1, with its XDG dirs in the test's own.
//!
//! `systemctl --user` reaches it from outside the namespace through
//! `$XDG_RUNTIME_DIR/systemd/private`; [`UserManager::env`] is what to give nonstop (or any
//! `systemctl`) for that. On drop, the units it runs are stopped, then the manager (by its pid),
//! then any service process still alive (by the pids recorded before, start time checked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::Proc;
use crate::{POLL, ProcessGuard, poll_blocking};

/// The manager binary Debian's `systemd` package installs.
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// Mounts the tmpfs inside the new mount namespace only, then becomes the manager (same pid).
/// Without systemd as PID 1 (a container, a chroot) there is no /run/systemd to mount on yet.
const BOOT: &str = "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd \
     && mkdir -p /run/systemd/system && exec \"$0\" --user";

/// A running `systemd --user` that this test started.
pub struct UserManager {
    proc: Option<Proc>,
    pub dir: PathBuf,
}

/// What [`UserManager::shutdown`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Service units that were still active and were stopped.
    pub units_stopped: usize,
    /// Service processes that outlived the manager and had to be killed (0 is the bar).
    pub processes_left: usize,
}

impl UserManager {
    /// Why a real user manager cannot run here (not root); `None` when it can. As root, a
    /// missing systemd, `systemctl` or `unshare` fails the test with its Debian package.
    pub fn unavailable() -> Option<String> {
        if !rustix::process::geteuid().is_root() {
            return Some("a private mount namespace for systemd --user needs root".into());
        }
        for program in [SYSTEMD, "systemctl", "unshare"] {
            crate::peer::require(program);
        }
        None
    }

    /// Starts a manager whose runtime, config, data, state and cache dirs are under `dir`; waits
    /// (with a deadline) until it reports `running` or `degraded`.
    pub fn start(dir: &Path) -> Result<UserManager, String> {
        let dir = dir.to_path_buf();
        for sub in ["run", "config", "data", "state", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir: {e}"))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod: {e}"))?;
        let log = std::fs::File::create(dir.join("manager.log")).map_err(|e| e.to_string())?;
        let mut command = crate::peer::command("unshare");
        command
            .args(["-m", "--propagation", "private", "sh", "-c", BOOT, SYSTEMD])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut manager = UserManager {
            proc: None,
            dir: dir.clone(),
        };
        manager.apply(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("start systemd --user: {e}"))?;
        manager.proc = Some(Proc { child });
        let mut state = String::new();
        let ready = poll_blocking(Duration::from_secs(20), || {
            if let Some(proc) = manager.proc.as_mut()
                && let Ok(Some(_)) = proc.child.try_wait()
            {
                return true;
            }
            state = manager
                .systemctl(&["show", "-p", "SystemState", "--value"])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            matches!(state.as_str(), "running" | "degraded")
        });
        if !ready || !matches!(state.as_str(), "running" | "degraded") {
            let log = std::fs::read_to_string(dir.join("manager.log")).unwrap_or_default();
            return Err(format!(
                "systemd --user did not come up (state `{state}`); its output:\n{log}"
            ));
        }
        Ok(manager)
    }

    /// The manager's pid.
    pub fn pid(&self) -> i32 {
        self.proc.as_ref().map(Proc::pid).unwrap_or(0)
    }

    /// Its `XDG_RUNTIME_DIR` (the private socket, and `systemd/user/` for runtime units).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Environment that points `systemctl --user` (and nonstop's `scope = "user"`) at this manager.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        [
            ("XDG_RUNTIME_DIR", "run"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_STATE_HOME", "state"),
            ("XDG_CACHE_HOME", "cache"),
        ]
        .into_iter()
        .map(|(k, sub)| (k.to_string(), self.dir.join(sub)))
        .collect()
    }

    /// Gives `command` [`Self::env`], without a session bus of the caller's.
    pub fn apply(&self, command: &mut Command) {
        command
            .envs(self.env())
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
    }

    /// `systemctl --user ARGS` against this manager, killed after 30 s.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output, String> {
        let mut command = crate::peer::command("systemctl");
        command
            .arg("--user")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.apply(&mut command);
        output_within(command, Duration::from_secs(30))
    }

    /// Writes `text` as the runtime unit `name` (`$XDG_RUNTIME_DIR/systemd/user/NAME`) and
    /// reloads the manager.
    pub fn install_unit(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let dir = self.runtime_dir().join("systemd/user");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = self.systemctl(&["daemon-reload"])?;
        if !out.status.success() {
            return Err(format!(
                "daemon-reload: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(path)
    }

    /// `systemctl --user show -p P… UNIT` as a map.
    pub fn show(&self, unit: &str, properties: &[&str]) -> BTreeMap<String, String> {
        let mut args = vec!["show"];
        for p in properties {
            args.extend(["-p", p]);
        }
        args.extend(["--", unit]);
        let out = self.systemctl(&args).unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Service units the manager has loaded and that are not inactive, with their main pids.
    pub fn active_services(&self) -> Vec<(String, i32)> {
        let Ok(out) = self.systemctl(&[
            "list-units",
            "--type=service",
            "--state=active,activating,deactivating,reloading",
            "--no-legend",
            "--plain",
        ]) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|unit| {
                let pid = self
                    .show(unit, &["MainPID"])
                    .get("MainPID")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                (unit.to_string(), pid)
            })
            .collect()
    }

    /// Stops every active service unit, then the manager (SIGTERM, SIGKILL after 10 s), then
    /// kills any service process that outlived it.
    pub fn shutdown(&mut self) -> Shutdown {
        let Some(mut proc) = self.proc.take() else {
            return Shutdown::default();
        };
        let guard = ProcessGuard::new();
        let mut report = Shutdown::default();
        if proc.child.try_wait().ok().flatten().is_none() {
            let services = self.active_services();
            for (_, pid) in &services {
                if *pid > 0 {
                    guard.track(*pid);
                }
            }
            report.units_stopped = services.len();
            if !services.is_empty() {
                let mut args = vec!["stop", "--"];
                args.extend(services.iter().map(|(u, _)| u.as_str()));
                let _ = self.systemctl(&args);
            }
            if let Some(pid) = rustix::process::Pid::from_raw(proc.pid()) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && proc.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(POLL);
            }
        }
        proc.kill();
        report.processes_left = guard.kill_all();
        report
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let report = self.shutdown();
        if report.processes_left > 0 {
            eprintln!(
                "nonstop-testkit: killed {} service process(es) that outlived systemd --user",
                report.processes_left
            );
        }
    }
}

/// Runs `command` to completion, killing it (by its pid) after `limit`.
fn output_within(mut command: Command, limit: Duration) -> Result<Output, String> {
    let mut child = command.spawn().map_err(|e| format!("{command:?}: {e}"))?;
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < until => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} did not finish within {limit:?}"));
            }
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("{command:?}: {e}"))
}
