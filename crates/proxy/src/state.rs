//! The routing table and everything it points at: pools, their member sets and backends.
//! The table and each pool's member set sit behind atomic pointers, so a switch is one store.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use nonstop_config::{
    AdminState, BackendConfig, Balance, EjectConfig, HealthCheck, PoolConfig, Sticky,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::{BackendMetrics, Metrics, StatusClass};

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

    pub fn view(&self) -> BackendView {
        let responses = &self.metrics.responses;
        BackendView {
            name: self.name.clone(),
            addr: self.addr.clone(),
            weight: self.weight(),
            route: self.route.clone(),
            state: self.state(),
            health: if self.healthy() { "up" } else { "down" },
            ejected: self.ejected(),
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
    pub ejected: bool,
    pub in_flight: i64,
    pub requests: u64,
    pub failures: u64,
    pub responses: std::collections::BTreeMap<&'static str, u64>,
    pub latency_ms_sum: f64,
}

/// One immutable member set of a pool plus the round-robin bookkeeping that goes with it.
pub struct Members {
    pub backends: Vec<Arc<Backend>>,
    /// Smooth weighted round-robin "current weights", one per backend.
    pub current: Mutex<Vec<i64>>,
}

impl Members {
    pub fn new(backends: Vec<Arc<Backend>>) -> Members {
        let current = Mutex::new(vec![0; backends.len()]);
        Members { backends, current }
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name == name)
    }
}

pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    pub balance: Balance,
    pub sticky: Option<Sticky>,
    pub health: Option<HealthCheck>,
    pub eject: EjectConfig,
    pub members: ArcSwap<Members>,
    /// Serialises admin changes to the member set so none is lost; never taken on the request path.
    pub edit: tokio::sync::Mutex<()>,
    /// Cancelled when the pool leaves the routing table (stops its health checks).
    pub closed: CancellationToken,
}

impl Pool {
    /// A pool as its config section describes it, with `members` instead of the section's
    /// backends when given (the saved runtime state).
    pub fn from_config(
        name: &str,
        config: &PoolConfig,
        members: Option<&[BackendSpec]>,
        metrics: &Metrics,
    ) -> Result<Arc<Pool>, String> {
        let from_file: Vec<BackendSpec>;
        let specs = match members {
            Some(saved) => saved,
            None => {
                from_file = config.backends.iter().map(BackendSpec::from).collect();
                &from_file
            }
        };
        let backends = specs
            .iter()
            .map(|spec| Backend::new(spec, metrics.backend(name, &spec.name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Pool {
            name: name.to_string(),
            config: config.clone(),
            balance: config.balance,
            sticky: config.sticky.clone(),
            health: config.health.clone(),
            eject: config.eject,
            members: ArcSwap::from_pointee(Members::new(backends)),
            edit: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
        }))
    }

    /// The current members as specs, which is what the state file keeps.
    pub fn specs(&self) -> Vec<BackendSpec> {
        self.members
            .load()
            .backends
            .iter()
            .map(|b| BackendSpec {
                name: b.name.clone(),
                addr: b.addr.clone(),
                weight: Some(b.weight()),
                route: Some(b.route.clone()),
                state: Some(b.state()),
            })
            .collect()
    }

    pub fn view(&self) -> PoolView {
        PoolView {
            name: self.name.clone(),
            balance: self.balance,
            sticky: self.sticky.clone(),
            backends: self
                .members
                .load()
                .backends
                .iter()
                .map(|b| b.view())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PoolView {
    pub name: String,
    pub balance: Balance,
    pub sticky: Option<Sticky>,
    pub backends: Vec<BackendView>,
}

/// Settings that may change on reload and are read on the request path.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body: u64,
    pub response_header_timeout: Duration,
    pub drain_timeout: Duration,
}

pub struct Route {
    /// Lower-case host without port; `None` matches every host.
    pub host: Option<String>,
    pub path: String,
    pub pool: Arc<Pool>,
}

impl Route {
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            match host {
                Some(host) if host.eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        path_has_prefix(path, &self.path)
    }
}

/// Prefix match on segment boundaries: `/app` matches `/app` and `/app/x`, not `/apple`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path.starts_with(prefix)
        && matches!(
            path.as_bytes().get(prefix.len()),
            None | Some(b'/') | Some(b'?') | Some(b';')
        )
}

/// The whole routing state; replaced as one unit on reload.
pub struct Table {
    pub routes: Vec<Route>,
    pub pools: Vec<Arc<Pool>>,
    pub settings: Settings,
}

impl Table {
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Pool>> {
        self.routes
            .iter()
            .find(|r| r.matches(host, path))
            .map(|r| &r.pool)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(path_has_prefix("/anything", "/"));
        assert!(path_has_prefix("/app", "/app"));
        assert!(path_has_prefix("/app/x", "/app/"));
        assert!(path_has_prefix("/app;jsessionid=x", "/app"));
        assert!(!path_has_prefix("/apple", "/app"));
    }

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
