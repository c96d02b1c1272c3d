//! One backend of a pool: its address, operator state, health (active and passive) and counters.
//! Everything here is atomics, read on the request path and written by admin calls and checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;
use nonstop_config::{AdminState, BackendConfig, EjectConfig};
use tokio_util::sync::CancellationToken;

use crate::metrics::{BackendMetrics, StatusClass};

/// What the admin API and the config both describe a backend by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub name: String,
    pub addr: String,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub state: Option<AdminState>,
}

impl From<&BackendConfig> for BackendSpec {
    fn from(config: &BackendConfig) -> Self {
        BackendSpec {
            name: config.name.get_ref().clone(),
            addr: config.addr.get_ref().clone(),
            weight: Some(config.weight),
            route: config.route.clone(),
            state: Some(config.state),
        }
    }
}

impl BackendSpec {
    /// The spec with every default filled in, so two ways of writing one backend compare equal.
    pub fn normalized(&self) -> BackendSpec {
        BackendSpec {
            name: self.name.clone(),
            addr: self.addr.clone(),
            weight: Some(self.weight.unwrap_or(1)),
            route: Some(self.route.clone().unwrap_or_else(|| self.name.clone())),
            state: Some(self.state.unwrap_or_default()),
        }
    }

    /// Checks what the config crate checks for files, for specs that arrive over the admin API.
    pub fn check(&self) -> Result<(), String> {
        if !nonstop_config::proxy::is_valid_name(&self.name) {
            return Err(format!(
                "backend name `{}` is not allowed: use letters, digits, `-`, `_` and `.`",
                self.name
            ));
        }
        nonstop_config::proxy::check_backend_addr(&self.addr)?;
        self.addr
            .parse::<Authority>()
            .map_err(|e| format!("backend address `{}` is not valid: {e}", self.addr))?;
        if let Some(weight) = self.weight {
            check_weight(weight)?;
        }
        Ok(())
    }
}

pub fn check_weight(weight: u32) -> Result<(), String> {
    if weight == 0 || weight > nonstop_config::proxy::MAX_WEIGHT {
        return Err(format!(
            "weight {weight} is out of range: use 1 to {}; to take a backend out, set its state",
            nonstop_config::proxy::MAX_WEIGHT
        ));
    }
    Ok(())
}

/// Milliseconds on a process-wide monotonic clock; 0 means "never".
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub struct Backend {
    pub name: String,
    pub addr: String,
    pub authority: Authority,
    pub route: String,
    weight: AtomicU32,
    state: AtomicU8,
    healthy: AtomicBool,
    /// The active checker's current streaks; kept here so they survive a reload.
    probe_passes: AtomicU32,
    probe_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// This object's own in-flight count. The metric gauge is shared with any later backend of
    /// the same name, so draining and balancing must not read it.
    in_flight: AtomicI64,
    requests: AtomicU64,
    latency_us: AtomicU64,
    pub metrics: BackendMetrics,
    /// Cancelled when the backend has left its pool and its drain timeout ran out.
    pub retired: CancellationToken,
}

impl Backend {
    pub fn new(spec: &BackendSpec, metrics: BackendMetrics) -> Result<Arc<Backend>, String> {
        spec.check()?;
        let backend = Backend {
            authority: spec.addr.parse().map_err(|e| format!("{e}"))?,
            route: spec.route.clone().unwrap_or_else(|| spec.name.clone()),
            name: spec.name.clone(),
            addr: spec.addr.clone(),
            weight: AtomicU32::new(spec.weight.unwrap_or(1)),
            state: AtomicU8::new(spec.state.unwrap_or_default() as u8),
            healthy: AtomicBool::new(true),
            probe_passes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            metrics,
            retired: CancellationToken::new(),
        };
        backend.metrics.up.set(1);
        Ok(Arc::new(backend))
    }

    pub fn state(&self) -> AdminState {
        match self.state.load(Ordering::Relaxed) {
            0 => AdminState::Active,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    pub fn set_state(&self, state: AdminState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records an active health verdict; returns true when it changed the backend's health.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            self.metrics.up.set(healthy as i64);
            if healthy {
                self.metrics.went_up.inc();
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.ejected_until_ms.store(0, Ordering::Relaxed);
            } else {
                self.metrics.went_down.inc();
            }
        }
        changed
    }

    /// Records one active probe; returns the new health when `rise` passes or `fall` failures changed it.
    pub fn record_probe(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let (streak, other) = if passed {
            (&self.probe_passes, &self.probe_failures)
        } else {
            (&self.probe_failures, &self.probe_passes)
        };
        other.store(0, Ordering::Relaxed);
        let streak = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let needed = if passed { rise } else { fall };
        (self.healthy() != passed && streak >= needed && self.set_healthy(passed)).then_some(passed)
    }

    /// The (passes, failures) streak the active checker has seen.
    pub fn probe_streak(&self) -> (u32, u32) {
        (
            self.probe_passes.load(Ordering::Relaxed),
            self.probe_failures.load(Ordering::Relaxed),
        )
    }

    /// Someone else's health gate passed (the deploy engine's): up now, not after `rise` probes.
    /// Clears passive ejection and the checker's failure streak, so one later failure is not
    /// added to failures seen before the instance was restarted.
    pub fn mark_up(&self) {
        self.probe_failures.store(0, Ordering::Relaxed);
        self.set_healthy(true);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    pub fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// May take requests that are not bound to it by a session.
    pub fn takes_new(&self) -> bool {
        self.state() == AdminState::Active && self.healthy() && !self.ejected()
    }

    /// May take requests whose session is bound to it.
    pub fn takes_sticky(&self) -> bool {
        self.state() != AdminState::Disabled && self.healthy() && !self.ejected()
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_response(
        &self,
        status: http::StatusCode,
        latency: Duration,
        eject: &EjectConfig,
    ) {
        let class = StatusClass::of(status);
        self.metrics.responses[class as usize].inc();
        self.metrics.latency.observe(latency.as_secs_f64());
        self.latency_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        if class == StatusClass::ServerError {
            self.count_failure(eject, false);
        } else if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connect error, timeout or garbage answer. `refused` ejects at once: the backend is not there.
    pub fn record_failure(&self, eject: &EjectConfig, refused: bool) {
        self.metrics.failures.inc();
        self.count_failure(eject, refused);
    }

    fn count_failure(&self, eject: &EjectConfig, refused: bool) {
        if eject.consecutive_failures == 0 {
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if refused || failures >= eject.consecutive_failures {
            let until = now_ms() + eject.cooldown.0.as_millis() as u64;
            if self.ejected_until_ms.swap(until, Ordering::Relaxed) < now_ms() {
                tracing::warn!(backend = %self.name, addr = %self.addr, failures, "backend ejected for {}", eject.cooldown);
            }
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// The admin API's picture of this backend; `checked` says whether its pool runs active checks.
    pub fn view(&self, checked: bool) -> BackendView {
        let responses = &self.metrics.responses;
        let (passes, failures) = self.probe_streak();
        BackendView {
            name: self.name.clone(),
            addr: self.addr.clone(),
            weight: self.weight(),
            route: self.route.clone(),
            state: self.state(),
            health: if self.healthy() { "up" } else { "down" },
            checks: checked.then_some(ChecksView { passes, failures }),
            ejected: self.ejected(),
            eligible: self.takes_new(),
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.metrics.failures.get(),
            responses: StatusClass::ALL
                .iter()
                .skip(1)
                .map(|class| (class.label(), responses[*class as usize].get()))
                .collect(),
            latency_ms_sum: self.latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.dec();
    }
}

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct BackendView {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    pub route: String,
    pub state: AdminState,
    pub health: &'static str,
    /// The active checker's current streak; `None` when the pool has no active checks.
    pub checks: Option<ChecksView>,
    pub ejected: bool,
    /// Takes new requests now: active, up and not ejected.
    pub eligible: bool,
    pub in_flight: i64,
    pub requests: u64,
    pub failures: u64,
    pub responses: std::collections::BTreeMap<&'static str, u64>,
    pub latency_ms_sum: f64,
}

#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct ChecksView {
    pub passes: u32,
    pub failures: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metrics;

    #[test]
    fn a_burst_of_5xx_ejects_and_a_success_resets_the_count() {
        let spec = BackendSpec {
            name: "b".into(),
            addr: "127.0.0.1:1".into(),
            weight: None,
            route: None,
            state: None,
        };
        let backend = Backend::new(&spec, Metrics::new().backend("p", "b")).unwrap();
        let eject = EjectConfig {
            consecutive_failures: 3,
            cooldown: nonstop_config::HumanDuration::secs(10),
        };
        let fail = http::StatusCode::INTERNAL_SERVER_ERROR;
        backend.record_response(fail, Duration::ZERO, &eject);
        backend.record_response(fail, Duration::ZERO, &eject);
        backend.record_response(http::StatusCode::OK, Duration::ZERO, &eject);
        backend.record_response(fail, Duration::ZERO, &eject);
        backend.record_response(fail, Duration::ZERO, &eject);
        assert!(!backend.ejected(), "a success in between resets the streak");
        backend.record_response(fail, Duration::ZERO, &eject);
        assert!(backend.ejected());
        assert!(!backend.takes_new() && !backend.takes_sticky());
    }

    #[test]
    fn spec_check_names_the_problem() {
        let spec = BackendSpec {
            name: "a b".into(),
            addr: "127.0.0.1:1".into(),
            weight: None,
            route: None,
            state: None,
        };
        assert!(spec.check().unwrap_err().contains("not allowed"));
        let spec = BackendSpec {
            name: "ok".into(),
            addr: "nohost".into(),
            ..spec
        };
        assert!(spec.check().unwrap_err().contains("no port"));
    }
}
