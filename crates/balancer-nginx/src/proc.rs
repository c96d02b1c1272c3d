//! Reloading the running nginx: SIGHUP to the master from its pid file, confirmed from /proc
//! (with a deadline) once new workers run and every old one has stopped accepting.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::NginxError;

/// The `pid` directive in `nginx -T` output, read as nginx reads it: `worker_processes 2; pid
/// /x/nginx.pid;` on one line is two directives.
pub fn pid_from_dump(dump: &str) -> Option<PathBuf> {
    crate::conf::simple_directives(dump)
        .into_iter()
        .find_map(|words| match words.as_slice() {
            [name, path] if name == "pid" => Some(PathBuf::from(path)),
            _ => None,
        })
}

/// The compiled-in `--pid-path=` of `nginx -V`.
pub fn pid_from_build(version: &str) -> Option<PathBuf> {
    version
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("--pid-path="))
        .map(PathBuf::from)
}

async fn master_pid(pid_file: &Path) -> Result<i32, NginxError> {
    let text = tokio::fs::read_to_string(pid_file).await.map_err(|e| {
        NginxError::Reload(format!(
            "cannot read the pid file {} ({e}); is nginx running?",
            pid_file.display()
        ))
    })?;
    let pid = text.trim().parse::<i32>().map_err(|_| {
        NginxError::Reload(format!(
            "the pid file {} holds `{}`",
            pid_file.display(),
            text.trim()
        ))
    })?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(NginxError::Reload(format!(
            "the master pid {pid} from {} is not running",
            pid_file.display()
        )));
    }
    Ok(pid)
}

/// Pids whose parent is `parent`.
fn children(parent: i32) -> BTreeSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields resume after the last `)`.
        let ppid: i32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// An old worker sets this title as it closes its listening sockets (ngx_worker_process_cycle).
fn is_shutting_down(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("shutting down"))
        .unwrap_or(true)
}

/// Workers of earlier generations still finishing their requests after a reload.
pub async fn old_workers(pid_file: &Path) -> Result<usize, NginxError> {
    let pid = master_pid(pid_file).await?;
    Ok(children(pid)
        .into_iter()
        .filter(|w| is_shutting_down(*w))
        .count())
}

/// Sends SIGHUP and waits until the master has a worker that was not there before and no
/// worker of the previous generation still accepts connections with the previous set.
pub async fn reload(pid_file: &Path, timeout: Duration) -> Result<(), NginxError> {
    let pid = master_pid(pid_file).await?;
    let before = children(pid);
    let target = Pid::from_raw(pid).ok_or_else(|| NginxError::Reload(format!("bad pid {pid}")))?;
    kill_process(target, Signal::HUP)
        .map_err(|e| NginxError::Reload(format!("cannot signal the master {pid}: {e}")))?;
    let until = Instant::now() + timeout;
    loop {
        let now = children(pid);
        let started = now.difference(&before).next().is_some();
        if started && now.intersection(&before).all(|old| is_shutting_down(*old)) {
            return Ok(());
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(NginxError::Reload(format!("the master {pid} exited")));
        }
        if Instant::now() >= until {
            return Err(NginxError::Reload(format!(
                "the master {pid} did not replace its workers within {timeout:?} of SIGHUP; see its error log"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_pid_path() {
        let dump = "# configuration file /x/nginx.conf:\nworker_processes 1;\npid /x/run/nginx.pid;\nevents {}\n";
        assert_eq!(pid_from_dump(dump), Some(PathBuf::from("/x/run/nginx.pid")));
        assert_eq!(pid_from_dump("pidx y;\n"), None);
        // Several directives on one line, as nginx accepts them (and a `pid` in a comment).
        let one_line =
            "# pid /not/this.pid;\nworker_processes 2; pid \"/x/nginx.pid\"; events { }\n";
        assert_eq!(pid_from_dump(one_line), Some(PathBuf::from("/x/nginx.pid")));
        let v = "configure arguments: --prefix=/usr/share/nginx --pid-path=/run/nginx.pid --x";
        assert_eq!(pid_from_build(v), Some(PathBuf::from("/run/nginx.pid")));
    }
}
