//! Runtime changes to pools, shared by the admin API and config reloads.
//! Every change builds a new member set and publishes it in one atomic store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nonstop_config::AdminState;
use nonstop_ports::{Maintenance, Preview};
use tokio::sync::OwnedMutexGuard;

use crate::Shared;
use crate::edge::Edge;
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

/// One backend's patch in a change of several (`PATCH /v1/pools/{pool}/backends`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPatch {
    pub name: String,
    pub state: Option<AdminState>,
    pub weight: Option<u32>,
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

    /// Sets the state and weight of several backends in one call and leaves the others as they
    /// are (a switch without reading the pool first, so an operator's change to another backend
    /// in between is not written over). Every name is checked before anything changes.
    pub async fn patch_backends(
        &self,
        pool: &str,
        patches: &[NamedPatch],
    ) -> Result<PoolView, ControlError> {
        for patch in patches {
            if let Some(weight) = patch.weight {
                check_weight(weight).map_err(ControlError::Invalid)?;
            }
        }
        let (pool, _edit) = self.edit(pool).await?;
        let members = pool.members.load();
        let mut targets = Vec::with_capacity(patches.len());
        for patch in patches {
            let target = members
                .find(&patch.name)
                .ok_or_else(|| ControlError::UnknownBackend {
                    pool: pool.name.clone(),
                    backend: patch.name.clone(),
                })?;
            targets.push((target, patch));
        }
        // Activations first: no moment between two of these stores has fewer active backends
        // than before and after the whole change.
        targets.sort_by_key(|(_, patch)| patch.state != Some(AdminState::Active));
        for (target, patch) in &targets {
            if let Some(weight) = patch.weight {
                target.set_weight(weight);
            }
            if let Some(state) = patch.state {
                target.set_state(state);
            }
        }
        if !targets.is_empty() {
            tracing::info!(pool = %pool.name, changes = ?patches.iter().map(|p| (&p.name, p.state.map(AdminState::as_str), p.weight)).collect::<Vec<_>>(), "backends set");
            pool.set_managed();
            self.save_state();
        }
        Ok(pool.view())
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

    /// Sets (or with `None` clears) the pool's targeted preview.
    pub async fn set_preview(
        &self,
        pool: &str,
        preview: Option<Preview>,
    ) -> Result<PoolView, ControlError> {
        if let Some(p) = &preview {
            check_preview(p).map_err(ControlError::Invalid)?;
        }
        self.change_edge(pool, |edge| edge.preview = preview).await
    }

    /// Turns the pool's maintenance mode on (`Some`) or off.
    pub async fn set_maintenance(
        &self,
        pool: &str,
        maintenance: Option<Maintenance>,
    ) -> Result<PoolView, ControlError> {
        if let Some(m) = &maintenance {
            check_maintenance(m).map_err(ControlError::Invalid)?;
        }
        let on = maintenance.is_some();
        let view = self
            .change_edge(pool, |edge| edge.maintenance = maintenance)
            .await?;
        tracing::info!(pool, on, "maintenance mode set");
        Ok(view)
    }

    async fn change_edge(
        &self,
        pool: &str,
        change: impl FnOnce(&mut Edge),
    ) -> Result<PoolView, ControlError> {
        let (pool, _edit) = self.edit(pool).await?;
        let mut edge = (**pool.edge.load()).clone();
        change(&mut edge);
        pool.edge.store(Arc::new(edge));
        self.save_state();
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

fn check_preview(p: &Preview) -> Result<(), String> {
    if http::HeaderName::from_bytes(p.header.as_bytes()).is_err() {
        return Err(format!(
            "preview header `{}` is not a valid header name",
            p.header
        ));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if p.cookie.is_empty() || !p.cookie.chars().all(token) {
        return Err(format!(
            "preview cookie `{}` is not a valid cookie name",
            p.cookie
        ));
    }
    Ok(())
}

fn check_maintenance(m: &Maintenance) -> Result<(), String> {
    if m.message.len() > 2000 || m.message.chars().any(|c| c.is_control() && c != '\n') {
        return Err("the maintenance message must be at most 2000 characters of text".into());
    }
    if !(1..=86_400).contains(&m.retry_after_s) {
        return Err(format!(
            "retry_after_s = {} is outside 1..=86400 seconds",
            m.retry_after_s
        ));
    }
    Ok(())
}
