//! Child processes a test starts: killed by their own pid when dropped, signalled and awaited
//! with deadlines, and their output watched for a line that says they are ready.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process that is killed (by its pid, which the test started) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (`TERM`, `HUP`, …).
    pub fn signal(&self, signal: &str) {
        if let Err(e) = send_signal(self.child.id(), signal) {
            panic!("{e}");
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "process {} did not exit within {deadline:?}",
                self.pid()
            );
            std::thread::sleep(crate::POLL);
        }
    }

    /// Panics if the process has already exited: the test's server died.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().expect("wait for the child") {
            panic!("{what} exited: {status}");
        }
    }
}

/// Sends `signal` by name (`TERM`, `HUP`, `INT`, `KILL`, `USR1`, `USR2`) to `pid`, which the
/// test started; no `kill` program needed.
pub fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    use rustix::process::{Pid, Signal, kill_process};
    let sig = match signal {
        "TERM" => Signal::TERM,
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        other => return Err(format!("unknown signal `{other}`")),
    };
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("no such pid {pid}"))?;
    kill_process(target, sig).map_err(|e| format!("kill -{signal} {pid}: {e}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads lines from a child's pipe on a thread until one contains `needle` (and keeps draining
/// the pipe after, so the child never blocks on it).
pub fn read_line_matching(
    pipe: impl std::io::Read + Send + 'static,
    needle: &str,
    deadline: Duration,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = needle.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(&wanted) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx.recv_timeout(deadline)
        .unwrap_or_else(|_| panic!("no line containing `{needle}` within {deadline:?}"))
}

/// Kills, when dropped, every process whose working directory lies under `.0`: what a deploy
/// (or an agent) started for a test — warm standbys and rolled-back instances included, and in
/// other namespaces too — is found by its release directory, not by a pid the test never saw.
pub struct KillUnder(pub std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // A deleted directory reads as "<path> (deleted)": still under the prefix.
            let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
            if cwd.starts_with(&self.0)
                && pid != std::process::id() as i32
                && let Some(pid) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_reach_the_child() {
        use std::os::unix::process::ExitStatusExt;
        let mut proc = Proc {
            child: std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        };
        assert!(send_signal(proc.child.id(), "WINCH").is_err());
        proc.signal("TERM");
        let status = proc.wait_exit(Duration::from_secs(5));
        assert_eq!(status.signal(), Some(15), "{status}");
    }
}
