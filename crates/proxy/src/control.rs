//! Runtime changes to pools, shared by the admin API and config reloads.
//! Every change builds a new member set and publishes it in one atomic store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nonstop_config::AdminState;
use tokio::sync::OwnedMutexGuard;

use crate::Shared;
use crate::state::{Backend, BackendSpec, BackendView, Members, Pool, PoolView, check_weight};

/// Why an admin change was refused; maps onto an HTTP status in the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no pool named `{0}`")]
    UnknownPool(String),
    #[error("pool `{pool}` has no backend named `{backend}`")]
    UnknownBackend { pool: String, backend: String },
    #[error("pool `{pool}` already has a backend named `{backend}`")]
    Duplicate { pool: String, backend: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Config(String),
}

/// A change of one backend's operator-set state and weight, or of its health.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPatch {
    pub state: Option<AdminState>,
    pub weight: Option<u32>,
    /// `"up"`: a health gate of the caller's own (the deploy engine's) passed, so the backend
    /// is eligible now rather than after `rise` of the proxy's checks. Down comes only from checks.
    pub health: Option<HealthMark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthMark {
    Up,
}

impl Shared {
    pub fn pool(&self, name: &str) -> Result<Arc<Pool>, ControlError> {
        self.table
            .load()
            .pool(name)
            .cloned()
            .ok_or_else(|| ControlError::UnknownPool(name.to_string()))
    }

    pub fn metrics(&self) -> &crate::Metrics {
        &self.metrics
    }

    pub fn pools(&self) -> Vec<PoolView> {
        self.table.load().pools.iter().map(|p| p.view()).collect()
    }

    /// The current pool of that name with its edit lock held. A reload replaces pool objects, so
    /// the lock of one that left the table is let go and the new one's taken.
    async fn edit(&self, name: &str) -> Result<(Arc<Pool>, OwnedMutexGuard<()>), ControlError> {
        loop {
            let pool = self.pool(name)?;
            let guard = pool.edit.clone().lock_owned().await;
            if self.pool(name).is_ok_and(|now| Arc::ptr_eq(&now, &pool)) {
                return Ok((pool, guard));
            }
        }
    }

    pub async fn patch_backend(
        &self,
        pool: &str,
        backend: &str,
        patch: &BackendPatch,
    ) -> Result<BackendView, ControlError> {
        if let Some(weight) = patch.weight {
            check_weight(weight).map_err(ControlError::Invalid)?;
        }
        let (pool, _edit) = self.edit(pool).await?;
        let members = pool.members.load();
        let target = members
            .find(backend)
            .ok_or_else(|| ControlError::UnknownBackend {
                pool: pool.name.clone(),
                backend: backend.to_string(),
            })?;
        if let Some(state) = patch.state {
            target.set_state(state);
            tracing::info!(pool = %pool.name, backend, state = state.as_str(), "backend state set");
        }
        if let Some(weight) = patch.weight {
            target.set_weight(weight);
            tracing::info!(pool = %pool.name, backend, weight, "backend weight set");
        }
        if patch.health == Some(HealthMark::Up) {
            target.mark_up();
            tracing::info!(pool = %pool.name, backend, "backend marked up by the admin API");
        }
        if patch.state.is_some() || patch.weight.is_some() {
            pool.set_managed();
            self.save_state();
        }
        Ok(target.view(pool.health.is_some()))
    }

    /// Replaces a pool's whole member set in one step; kept backends keep counters and health.
    pub async fn replace_backends(
        &self,
        pool: &str,
        specs: &[BackendSpec],
    ) -> Result<PoolView, ControlError> {
        let (pool, _edit) = self.edit(pool).await?;
        let mut names = HashSet::new();
        for spec in specs {
            spec.check().map_err(ControlError::Invalid)?;
            if !names.insert(spec.name.as_str()) {
                return Err(ControlError::Invalid(format!(
                    "backend `{}` is listed twice; names must be unique in a pool",
                    spec.name
                )));
            }
        }
        let old = pool.members.load_full();
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            let kept = old.find(&spec.name).filter(|b| {
                b.addr == spec.addr && spec.route.as_ref().is_none_or(|route| *route == b.route)
            });
            let backend = match kept {
                Some(backend) => {
                    if let Some(weight) = spec.weight {
                        backend.set_weight(weight);
                    }
                    if let Some(state) = spec.state {
                        backend.set_state(state);
                    }
                    backend.clone()
                }
                None => self.new_backend(&pool, spec)?,
            };
            next.push(backend);
        }
        self.publish(&pool, next, &old);
        tracing::info!(pool = %pool.name, backends = ?specs.iter().map(|s| &s.name).collect::<Vec<_>>(), "pool replaced");
        Ok(pool.view())
    }

    pub async fn add_backend(
        &self,
        pool: &str,
        spec: &BackendSpec,
    ) -> Result<PoolView, ControlError> {
        let (pool, _edit) = self.edit(pool).await?;
        let old = pool.members.load_full();
        if old.find(&spec.name).is_some() {
            return Err(ControlError::Duplicate {
                pool: pool.name.clone(),
                backend: spec.name.clone(),
            });
        }
        let mut next = old.backends.clone();
        next.push(self.new_backend(&pool, spec)?);
        self.publish(&pool, next, &old);
        tracing::info!(pool = %pool.name, backend = %spec.name, addr = %spec.addr, "backend added");
        Ok(pool.view())
    }

    pub async fn remove_backend(
        &self,
        pool: &str,
        backend: &str,
    ) -> Result<PoolView, ControlError> {
        let (pool, _edit) = self.edit(pool).await?;
        let old = pool.members.load_full();
        if old.find(backend).is_none() {
            return Err(ControlError::UnknownBackend {
                pool: pool.name.clone(),
                backend: backend.to_string(),
            });
        }
        let next = old
            .backends
            .iter()
            .filter(|b| b.name != backend)
            .cloned()
            .collect();
        self.publish(&pool, next, &old);
        tracing::info!(pool = %pool.name, backend, "backend removed");
        Ok(pool.view())
    }

    fn new_backend(&self, pool: &Pool, spec: &BackendSpec) -> Result<Arc<Backend>, ControlError> {
        Backend::new(spec, self.metrics.backend(&pool.name, &spec.name))
            .map_err(ControlError::Invalid)
    }

    /// Stores the new member set, then lets the backends that left finish their requests.
    fn publish(&self, pool: &Arc<Pool>, next: Vec<Arc<Backend>>, old: &Members) {
        let leaving: Vec<Arc<Backend>> = old
            .backends
            .iter()
            .filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b)))
            .cloned()
            .collect();
        pool.members.store(Arc::new(Members::new(next)));
        pool.set_managed();
        self.save_state();
        for backend in leaving {
            self.retire(pool.name.clone(), backend);
        }
    }

    /// Waits for a departed backend's in-flight requests, at most the drain timeout, then cuts them.
    pub(crate) fn retire(&self, pool: String, backend: Arc<Backend>) {
        let drain = self.table.load().settings.drain_timeout;
        let shared = self.weak_self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + drain;
            while backend.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Only requests still running at the deadline are cut. A drained backend is not
            // cancelled, so a request that picked it from an older member set just before the
            // switch is served rather than refused.
            if backend.in_flight() > 0 {
                tracing::warn!(%pool, backend = %backend.name, in_flight = backend.in_flight(), "drain timeout ran out; cutting requests");
                backend.retired.cancel();
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let still_there = shared
                .table
                .load()
                .pool(&pool)
                .is_some_and(|p| p.members.load().find(&backend.name).is_some());
            if !still_there {
                shared.metrics.forget_backend(&pool, &backend.name);
            }
        });
    }
}
