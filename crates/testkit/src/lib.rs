//! Test-only harness for driver tests against real servers: a minimal Tomcat 10 CATALINA_BASE and
//! a test WAR built with `javac`/`jar` ([`tomcat`]), our own Apache httpd + mod_jk instance
//! ([`apache`]), a sticky load client with per-user cookie jars ([`client`]), a network namespace
//! with a veth pair ([`netns`]), a real systemd user manager ([`systemd`]), the sample app as a
//! backend ([`hello`]), nginx ([`nginx`]), HAProxy ([`haproxy`]), PostgreSQL ([`postgres`]) and
//! Prometheus ([`prometheus`]) of their own, fakes of the engine's ports ([`fakes`]), a webhook
//! receiver ([`receiver`]), every real program found before it is run ([`peer`]), child processes
//! killed on drop ([`process`]) and waits with deadlines (this module).

pub mod apache;
pub mod client;
pub mod fakes;
pub mod haproxy;
pub mod hello;
pub mod keepalive;
pub mod load;
pub mod netns;
pub mod nginx;
pub mod peer;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod receiver;
pub mod systemd;
pub mod tomcat;

use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL`] until it holds; `Err` names `what` once `timeout` has passed.
/// Returns how long it took.
pub async fn try_wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting for: {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`try_wait_until`] that panics on timeout.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    match try_wait_until(what, timeout, condition).await {
        Ok(took) => took,
        Err(e) => panic!("{e}"),
    }
}

/// Polls `probe` until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Blocking variant for `Drop` and other sync code: polls every [`POLL`] up to `timeout`.
pub fn poll_blocking(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Processes (and their process groups) that a test started some other way, e.g. JVMs launched
/// by a `Runtime`: killed on drop if still running, so a failing test leaves nothing behind.
/// Only pids handed to [`ProcessGuard::track`] are touched, and only while their start time
/// still matches (a recycled pid is left alone).
#[derive(Debug, Default)]
pub struct ProcessGuard {
    tracked: std::sync::Mutex<Vec<(i32, u64)>>,
}

/// Field 22 of /proc/PID/stat (start time in clock ticks), `None` for a gone or zombie process.
fn live_start_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl ProcessGuard {
    pub fn new() -> ProcessGuard {
        ProcessGuard::default()
    }

    /// Remembers `pid` (with its current start time) for the drop.
    pub fn track(&self, pid: i32) {
        if let Some(ticks) = live_start_ticks(pid) {
            self.tracked.lock().unwrap().push((pid, ticks));
        }
    }

    /// SIGKILL to every tracked process (its group if it leads one) still running; waits up to
    /// 5 s for them to be gone. Returns how many were still running.
    pub fn kill_all(&self) -> usize {
        use rustix::process::{Pid, Signal, kill_process, kill_process_group};
        let tracked = std::mem::take(&mut *self.tracked.lock().unwrap());
        let alive: Vec<(i32, u64)> = tracked
            .into_iter()
            .filter(|&(pid, ticks)| live_start_ticks(pid) == Some(ticks))
            .collect();
        for &(pid, _) in &alive {
            if let Some(p) = Pid::from_raw(pid)
                && kill_process_group(p, Signal::KILL).is_err()
            {
                let _ = kill_process(p, Signal::KILL);
            }
        }
        poll_blocking(Duration::from_secs(5), || {
            alive
                .iter()
                .all(|&(pid, ticks)| live_start_ticks(pid) != Some(ticks))
        });
        alive.len()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let left = self.kill_all();
        if left > 0 {
            eprintln!("nonstop-testkit: killed {left} process(es) a test left running");
        }
    }
}

/// A loopback port that was free a moment ago, for servers that cannot report the one they bound.
///
/// Picked *below* the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port from
/// that range can be handed out as the source port of any outgoing connection before the server
/// binds it (and then its bind fails), which happens under the load tests' connection churn.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    let (first, span) = (10_000u32, low - 10_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Spread processes (pid) and calls (counter) over the span, so parallel test binaries
    // rarely try the same ports.
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos);
    // A port handed out once is not handed out again by this process, even if nothing has
    // bound it yet: two nodes of one test never get the same port.
    static HANDED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + seed.wrapping_add(n.wrapping_mul(7_919)) % span) as u16;
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a port on 127.0.0.1")
}

/// `target/<profile>` of the running test binary, for caches that should outlive one run.
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(std::env::temp_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_report_time_and_timeouts() {
        let start = Instant::now();
        let took = wait_until("a short while", Duration::from_secs(5), || async {
            start.elapsed() >= Duration::from_millis(50)
        })
        .await;
        assert!(took >= Duration::from_millis(50));
        let e = try_wait_until("never", Duration::from_millis(60), || async { false })
            .await
            .unwrap_err();
        assert!(e.contains("never"), "{e}");
        let mut n = 0;
        let v = wait_for("third try", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(v, 3);
        assert_ne!(free_port(), 0);
    }
}
