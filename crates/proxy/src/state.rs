//! The routing table and what it points at: routes, pools and their member sets.
//! The table and each pool's member set sit behind atomic pointers, so a switch is one store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use nonstop_config::{Balance, EjectConfig, HealthCheck, PoolConfig, Sticky};
use tokio_util::sync::CancellationToken;

pub use crate::backend::{Backend, BackendSpec, BackendView, InFlight, check_weight};
use crate::edge::Edge;
use crate::metrics::Metrics;

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
    /// Preview and maintenance rules, swapped whole like the member set.
    pub edge: ArcSwap<Edge>,
    managed: AtomicBool,
    /// Serialises admin changes to the member set so none is lost; never taken on the request path.
    pub edit: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled when the pool leaves the routing table (stops its health checks).
    pub closed: CancellationToken,
}

impl Pool {
    /// A pool with `config`'s settings and the given members. `managed` says the members were set
    /// through the admin API (by a deploy or an operator), so a reload must keep them.
    pub fn new(
        name: &str,
        config: &PoolConfig,
        backends: Vec<Arc<Backend>>,
        managed: bool,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            name: name.to_string(),
            config: config.clone(),
            balance: config.balance,
            sticky: config.sticky.clone(),
            health: config.health.clone(),
            eject: config.eject,
            members: ArcSwap::from_pointee(Members::new(backends)),
            edge: ArcSwap::from_pointee(Edge::default()),
            managed: AtomicBool::new(managed),
            edit: Arc::new(tokio::sync::Mutex::new(())),
            closed: CancellationToken::new(),
        })
    }

    /// Fresh backends for `specs` (from the file or the state file).
    pub fn build_backends(
        pool: &str,
        specs: &[BackendSpec],
        metrics: &Metrics,
    ) -> Result<Vec<Arc<Backend>>, String> {
        specs
            .iter()
            .map(|spec| Backend::new(spec, metrics.backend(pool, &spec.name)))
            .collect()
    }

    /// The section's backends as specs.
    pub fn file_specs(config: &PoolConfig) -> Vec<BackendSpec> {
        config.backends.iter().map(BackendSpec::from).collect()
    }

    pub fn managed(&self) -> bool {
        self.managed.load(Ordering::Relaxed)
    }

    /// Marks the members as set through the admin API.
    pub fn set_managed(&self) {
        self.managed.store(true, Ordering::Relaxed);
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
                .map(|b| b.view(self.health.is_some()))
                .collect(),
            edge: (**self.edge.load()).clone(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PoolView {
    pub name: String,
    pub balance: Balance,
    pub sticky: Option<Sticky>,
    pub backends: Vec<BackendView>,
    #[serde(flatten)]
    pub edge: Edge,
}

/// Settings that may change on reload and are read on the request path.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body: u64,
    pub response_header_timeout: Duration,
    pub request_body_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Settings {
    pub fn of(proxy: &nonstop_config::ProxyConfig) -> Settings {
        Settings {
            max_body: proxy.max_body.as_u64(),
            response_header_timeout: proxy.timeouts.response_header.0,
            request_body_timeout: proxy.timeouts.request_body.0,
            drain_timeout: proxy.drain_timeout.0,
        }
    }
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
}
