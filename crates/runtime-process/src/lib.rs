//! The `process` runtime: each instance is a detached child (its own session, stdin closed,
//! stdout/stderr appended to a per-release log file) started from an argv template, never a shell.
//!
//! Why detached children and not a supervisor daemon: the proxy already holds the traffic, so the
//! only job left is "run this argv and let it outlive the CLI". A new session does that with no
//! extra long-lived process to keep alive; the store records pid + kernel start time so any later
//! `nonstop` invocation can find, watch and stop the instance without mistaking a recycled pid.
//! What it does not do is restart a crashed app: that is the job of a `systemd` runtime.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nonstop_ports::{Instance, InstanceSpec, PortError, PortResult, Runtime};
use rustix::process::{Pid, Signal};

mod env;

pub use env::{ServiceEnv, instance_env, instance_env_from, nonstop_vars};

/// Starts instances from `argv` with `{artifact}`, `{release_dir}`, `{version}`, `{port}`, `{node}`.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    argv: Vec<String>,
    env: ServiceEnv,
}

impl ProcessRuntime {
    pub fn new(argv: Vec<String>, env: ServiceEnv) -> Self {
        ProcessRuntime { argv, env }
    }

    /// The argv for `spec`, placeholders filled in.
    pub fn command_line(&self, spec: &InstanceSpec) -> Vec<String> {
        self.argv.iter().map(|arg| fill(arg, spec)).collect()
    }
}

fn fill(template: &str, spec: &InstanceSpec) -> String {
    template
        .replace("{artifact}", &spec.artifact.to_string_lossy())
        .replace("{release_dir}", &spec.release_dir.to_string_lossy())
        .replace("{version}", spec.version.as_str())
        .replace("{port}", &spec.port.to_string())
        .replace("{node}", spec.node.as_str())
}

impl Runtime for ProcessRuntime {
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        let argv = self.command_line(spec);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| PortError::new("the start command is empty"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(instance_env(spec, &self.env))
            .current_dir(&spec.release_dir);
        let header = format!(
            "--- nonstop: starting {} {} on port {}: {argv:?}",
            spec.node, spec.version, spec.port
        );
        let started = spawn_detached(&mut command, &spec.log, &header)
            .map_err(|e| PortError::new(format!("cannot start `{program}`: {e}")))?;
        let (pid, start_ticks) = (started.pid, started.start_ticks);
        Ok(Instance {
            node: spec.node.clone(),
            version: spec.version.clone(),
            port: spec.port,
            pid,
            start_ticks,
            log: spec.log.clone(),
        })
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        stop(instance, grace).await
    }

    async fn is_running(&self, instance: &Instance) -> bool {
        is_running(instance)
    }

    async fn find(&self, spec: &InstanceSpec) -> Option<Instance> {
        find(spec)
    }
}

/// The session leader started for `spec` (same node and release directory in its
/// environment), if one runs: a start the deploy could not record before it was killed.
pub fn find(spec: &InstanceSpec) -> Option<Instance> {
    let node = format!("NONSTOP_NODE={}", spec.node);
    let dir = format!("NONSTOP_RELEASE_DIR={}", spec.release_dir.to_string_lossy());
    let mut found: Vec<i32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            vars.contains(&node.as_bytes()) && vars.contains(&dir.as_bytes())
        })
        .filter(|pid| {
            rustix::process::getsid(Pid::from_raw(*pid))
                .is_ok_and(|sid| sid.as_raw_nonzero().get() == *pid)
        })
        .collect();
    found.sort();
    let pid = *found.first()?;
    let start_ticks = start_ticks(pid)?;
    Some(Instance {
        node: spec.node.clone(),
        version: spec.version.clone(),
        port: spec.port,
        pid,
        start_ticks,
        log: spec.log.clone(),
    })
}

/// Whether `ip:port` can be bound, waiting up to `grace` for it: an instance just stopped may
/// still be exiting (a stop hook that only signals it). A port something else holds would make
/// a health check lie, so a start refuses it (on a remote host, the agent checks).
pub async fn wait_port_free(ip: &str, port: u16, grace: Duration) -> bool {
    let since = std::time::Instant::now();
    loop {
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return true;
        }
        if since.elapsed() >= grace {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child started by [`spawn_detached`].
pub struct Detached {
    pub pid: i32,
    /// Kernel start time of `pid` (0 if it could not be read).
    pub start_ticks: u64,
    /// Length of the log before this start, so its own output can be read from there.
    pub log_offset: u64,
}

/// Starts `command` in a session of its own, stdin closed, stdout and stderr appended to `log`
/// after a `header` line; a thread reaps it if it dies while this process lives.
pub fn spawn_detached(
    command: &mut Command,
    log: &Path,
    header: &str,
) -> std::io::Result<Detached> {
    let at_log =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("log {}: {e}", log.display()));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(at_log)?;
    }
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(at_log)?;
    let log_offset = out.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = writeln!(out, "{header}");
    let err = out.try_clone().map_err(at_log)?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent. A new session
    // keeps the app out of the terminal's signals (Ctrl-C, hang-up) so it outlives the CLI, and
    // lets `stop` signal its whole group.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    let mut child = command.spawn()?;
    let pid = child.id() as i32;
    let start_ticks = start_ticks(pid).unwrap_or(0);
    // Reap the child if it dies while this process still lives; afterwards init does.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(Detached {
        pid,
        start_ticks,
        log_offset,
    })
}

/// True while the instance's pid exists, is not a zombie, and is the process we started.
pub fn is_running(instance: &Instance) -> bool {
    match stat(instance.pid) {
        Some((state, ticks)) => {
            !matches!(state, 'Z' | 'X')
                && (instance.start_ticks == 0 || ticks == instance.start_ticks)
        }
        None => false,
    }
}

/// SIGTERM to the instance's process group, SIGKILL after `grace`, then waits for it to be gone.
pub async fn stop(instance: &Instance, grace: Duration) -> PortResult<()> {
    if !is_running(instance) {
        return Ok(());
    }
    let Some(pid) = Pid::from_raw(instance.pid) else {
        return Ok(());
    };
    signal(pid, Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_running(instance) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    signal(pid, Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !is_running(instance) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(PortError::new(format!(
        "process {} of {} did not exit after SIGKILL",
        instance.pid, instance.node
    )))
}

fn signal(pid: Pid, signal: Signal) {
    // The app leads its own session, so its group holds the children it spawned (e.g. a JVM's helpers).
    if rustix::process::kill_process_group(pid, signal).is_err() {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The last `lines` lines written to `path` after byte `offset`, read from at most its last
/// 16 KiB: what a failed start quotes of its instance's log.
pub fn log_tail(path: &Path, offset: u64, lines: usize) -> String {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(offset.max(len.saturating_sub(16 * 1024))))
        .is_ok()
    {
        let _ = file.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` itself holds a socket listening on TCP `port` (any address, IPv4 or IPv6): an
/// answer on the port is then this process's, not a stranger's that took the port meanwhile.
pub fn listens_on(pid: i32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| inodes.iter().any(|i| i == inode))
        })
    })
}

/// Inodes of the sockets listening on `port`, from /proc/net/tcp and tcp6.
fn listening_inodes(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.len() > 9 && fields[1].ends_with(&local) && fields[3] == LISTEN)
                        .then(|| fields[9].to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The kernel's start time of `pid` (clock ticks since boot), field 22 of /proc/PID/stat.
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, ticks)| ticks)
}

fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ticks = fields.nth(18)?.parse().ok()?;
    Some((state, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_ports::{NodeName, Version};

    fn spec(dir: &std::path::Path) -> InstanceSpec {
        InstanceSpec {
            node: NodeName::from("blue"),
            port: 8081,
            version: Version::from("7"),
            release_dir: dir.to_path_buf(),
            artifact: dir.join("app.jar"),
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            log: dir.join("logs/blue.log"),
        }
    }

    #[test]
    fn log_tail_reads_after_the_offset_and_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "old\nnew 1\nnew 2\nnew 3\n").unwrap();
        assert_eq!(log_tail(&log, 4, 2), "new 2\nnew 3");
        assert_eq!(log_tail(&log, 4, 10), "new 1\nnew 2\nnew 3");
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, &long).unwrap();
        assert_eq!(log_tail(&log, 0, 1), "line 4999");
        assert!(log_tail(&log, 0, 100_000).len() <= 16 * 1024);
        assert_eq!(log_tail(&dir.path().join("none"), 0, 3), "");
    }

    #[test]
    fn a_listening_socket_is_found_on_its_own_process_only() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        let me = std::process::id() as i32;
        assert!(listens_on(me, v4.local_addr().unwrap().port()));
        if let Some(v6) = &v6 {
            assert!(listens_on(me, v6.local_addr().unwrap().port()), "tcp6 too");
        }
        assert!(
            !listens_on(1, v4.local_addr().unwrap().port()),
            "not pid 1's"
        );
        let port = v4.local_addr().unwrap().port();
        drop(v4);
        assert!(!listens_on(me, port), "closed");
    }

    #[test]
    fn placeholders_are_filled_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(
            vec![
                "java".into(),
                "-jar".into(),
                "{artifact}".into(),
                "--server.port={port}".into(),
                "--v={version}@{node}".into(),
                "$(rm -rf /)".into(),
            ],
            ServiceEnv::default(),
        );
        let line = runtime.command_line(&spec(dir.path()));
        assert_eq!(line[2], dir.path().join("app.jar").to_string_lossy());
        assert_eq!(line[3], "--server.port=8081");
        assert_eq!(line[4], "--v=7@blue");
        assert_eq!(line[5], "$(rm -rf /)");
    }

    #[tokio::test]
    async fn starts_detached_logs_and_stops_with_term() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(
            vec!["sleep".into(), "30".into()],
            ServiceEnv::new(
                [("A".to_string(), "b".to_string())].into(),
                Default::default(),
            ),
        );
        let instance = runtime.start(&spec(dir.path())).await.unwrap();
        assert!(instance.start_ticks > 0);
        let environ = std::fs::read(format!("/proc/{}/environ", instance.pid)).unwrap();
        let names: Vec<String> = environ
            .split(|b| *b == 0)
            .filter_map(|v| {
                std::str::from_utf8(v)
                    .ok()?
                    .split_once('=')
                    .map(|(k, _)| k.to_string())
            })
            .collect();
        let allowed = |n: &str| {
            nonstop_ports::env::BASELINE.contains(&n)
                || n.starts_with("LC_")
                || ["A", "GREETING"].contains(&n)
                || n.starts_with("NONSTOP_")
        };
        assert!(
            names.iter().all(|n| allowed(n)),
            "only the documented variables: {names:?}"
        );
        for wanted in ["A", "GREETING", "NONSTOP_PORT", "PATH"] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing: {names:?}"
            );
        }
        assert!(runtime.is_running(&instance).await);
        let sid = rustix::process::getsid(Pid::from_raw(instance.pid)).unwrap();
        assert_eq!(
            sid.as_raw_nonzero().get(),
            instance.pid,
            "runs in its own session"
        );
        runtime
            .stop(&instance, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!runtime.is_running(&instance).await);
        let log = std::fs::read_to_string(dir.path().join("logs/blue.log")).unwrap();
        assert!(log.contains("starting blue 7"), "{log}");
    }

    #[tokio::test]
    async fn an_unrecorded_instance_is_found_by_its_node_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(vec!["sleep".into(), "30".into()], ServiceEnv::default());
        let spec = spec(dir.path());
        assert!(runtime.find(&spec).await.is_none());
        let started = runtime.start(&spec).await.unwrap();
        let found = runtime.find(&spec).await.expect("found by its environment");
        assert_eq!(
            (found.pid, found.start_ticks),
            (started.pid, started.start_ticks)
        );
        let mut other = spec.clone();
        other.node = NodeName::from("green");
        assert!(
            runtime.find(&other).await.is_none(),
            "another node's is not ours"
        );
        runtime.stop(&found, Duration::from_secs(5)).await.unwrap();
        assert!(runtime.find(&spec).await.is_none());
    }

    #[tokio::test]
    async fn notices_an_exit_and_a_recycled_pid() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(vec!["true".into()], ServiceEnv::default());
        let instance = runtime.start(&spec(dir.path())).await.unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while runtime.is_running(&instance).await {
            assert!(Instant::now() < until, "exit not noticed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut impostor = instance.clone();
        impostor.pid = std::process::id() as i32;
        impostor.start_ticks = start_ticks(impostor.pid).unwrap() + 1;
        assert!(
            !runtime.is_running(&impostor).await,
            "other start time, other process"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(vec!["/nonexistent/app".into()], ServiceEnv::default());
        let err = runtime.start(&spec(dir.path())).await.unwrap_err();
        assert!(err.message.contains("/nonexistent/app"), "{err}");
    }
}
