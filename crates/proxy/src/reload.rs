//! Config reload (SIGHUP, `POST /v1/reload`): the edited file's settings merged with runtime state.
//! A pool whose backends were set through the admin API keeps them; the report says what changed.

use std::path::PathBuf;
use std::sync::Arc;

use nonstop_config::{Config, PoolConfig, ProxyConfig};

use crate::control::ControlError;
use crate::metrics::Metrics;
use crate::state::{Backend, BackendSpec, Pool, Route, Settings, Table};
use crate::{Shared, health, persist};

/// What a reload changed, for the operator who asked for it.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct ReloadReport {
    pub config: PathBuf,
    pub pools: Vec<PoolChange>,
    /// `[proxy]` settings that changed in the file but take effect at the next restart.
    pub needs_restart: Vec<&'static str>,
    /// One line per change, as `nonstop lb reload` prints it.
    pub summary: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PoolChange {
    pub pool: String,
    pub change: ChangeKind,
    /// Pool settings the file changed: `balance`, `sticky`, `health`, `eject`.
    pub settings: Vec<&'static str>,
    /// Where the pool's backends come from after the reload.
    pub backends: BackendsFrom,
    /// The file's backend list changed but was not applied, because the pool is managed.
    pub file_backends_ignored: bool,
}

#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Added,
    Updated,
    Removed,
}

#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendsFrom {
    /// The file's `[[pools.X.backends]]`.
    File,
    /// The members set through the admin API (a deploy or `nonstop lb`), kept with their state.
    AdminApi,
    /// The pool left the file.
    None,
}

impl PoolChange {
    fn line(&self) -> String {
        let name = &self.pool;
        match self.change {
            ChangeKind::Added => format!("pool `{name}`: added"),
            ChangeKind::Removed => format!("pool `{name}`: removed"),
            ChangeKind::Updated => {
                let mut line = format!("pool `{name}`:");
                if !self.settings.is_empty() {
                    line.push_str(&format!(" {} changed;", self.settings.join(", ")));
                }
                match self.backends {
                    BackendsFrom::AdminApi => line.push_str(
                        " kept the backends, states and weights set through the admin API",
                    ),
                    _ => line.push_str(" backends from the file"),
                }
                if self.file_backends_ignored {
                    line.push_str(
                        "; the file's backend list changed but is not applied to a pool managed through \
                         the admin API (change its backends with `nonstop lb` or a deploy)",
                    );
                }
                line
            }
        }
    }
}

impl Shared {
    /// Re-reads the config file. If it is invalid, nothing changes and the error says where.
    pub async fn reload(&self) -> Result<ReloadReport, ControlError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let (config, _source) =
            Config::load(&self.config_path).map_err(|e| ControlError::Config(e.to_string()))?;
        let Some(proxy) = config.proxy.as_ref() else {
            return Err(ControlError::Config(format!(
                "{}: the file no longer has a [proxy] section",
                self.config_path.display()
            )));
        };
        let old = self.table.load_full();
        // No admin change may land on a pool that is being replaced: it would be lost.
        let mut edits = Vec::with_capacity(old.pools.len());
        for pool in &old.pools {
            edits.push(pool.edit.lock().await);
        }
        let mut report = ReloadReport {
            config: self.config_path.clone(),
            ..ReloadReport::default()
        };
        let table = build_table(
            proxy,
            &config,
            Some(&old),
            &persist::SavedState::default(),
            &self.metrics,
            &mut report.pools,
        )
        .map_err(ControlError::Config)?;
        self.table.store(Arc::new(table));
        drop(edits);
        let current = self.table.load_full();
        for pool in current
            .pools
            .iter()
            .filter(|p| !old.pools.iter().any(|o| Arc::ptr_eq(o, p)))
        {
            if pool.health.is_none() {
                // Nothing would ever bring a backend that the old checks took down up again.
                for backend in &pool.members.load().backends {
                    backend.mark_up();
                }
            }
            health::spawn(pool, self.probe_client.clone());
        }
        for pool in old
            .pools
            .iter()
            .filter(|o| !current.pools.iter().any(|p| Arc::ptr_eq(o, p)))
        {
            pool.closed.cancel();
            let successor = current.pool(&pool.name).map(|p| p.members.load_full());
            for backend in &pool.members.load().backends {
                let carried = successor
                    .as_ref()
                    .is_some_and(|m| m.backends.iter().any(|b| Arc::ptr_eq(b, backend)));
                if !carried {
                    self.retire(pool.name.clone(), backend.clone());
                }
            }
        }
        report.needs_restart = self.apply_proxy_section(proxy);
        for what in &report.needs_restart {
            tracing::warn!(
                "`{what}` changed in {}; it takes effect at the next restart",
                self.config_path.display()
            );
        }
        report.summary = report.pools.iter().map(PoolChange::line).collect();
        report.summary.extend(
            report
                .needs_restart
                .iter()
                .map(|what| format!("`{what}` changed; it takes effect at the next restart")),
        );
        if report.summary.is_empty() {
            report.summary.push("no changes".into());
        }
        self.save_state();
        for line in &report.summary {
            tracing::info!(config = %self.config_path.display(), "reload: {line}");
        }
        Ok(report)
    }

    /// Records the new `[proxy]` section; returns the changed settings that need a restart.
    fn apply_proxy_section(&self, proxy: &ProxyConfig) -> Vec<&'static str> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let changed = [
            ("listen", applied.listen != proxy.listen),
            (
                "admin",
                applied.admin != proxy.admin || applied.admin_token_file != proxy.admin_token_file,
            ),
            ("metrics", applied.metrics != proxy.metrics),
            ("workers", applied.workers != proxy.workers),
            (
                "timeouts.connect/idle",
                applied.timeouts.connect != proxy.timeouts.connect
                    || applied.timeouts.idle != proxy.timeouts.idle,
            ),
            ("limits", applied.limits != proxy.limits),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect();
        *applied = proxy.clone();
        changed
    }
}

/// Builds a routing table. Pools whose section is unchanged are carried over as they are; a
/// changed section's settings apply, and its members are the admin-set ones if there are any.
pub(crate) fn build_table(
    proxy: &ProxyConfig,
    config: &Config,
    previous: Option<&Table>,
    saved: &persist::SavedState,
    metrics: &Metrics,
    changes: &mut Vec<PoolChange>,
) -> Result<Table, String> {
    let mut pools = Vec::with_capacity(config.pools.len());
    for (name, pool_config) in &config.pools {
        let pool = match previous.and_then(|t| t.pool(name)) {
            Some(old) if old.config == *pool_config => old.clone(),
            Some(old) => {
                let (pool, change) =
                    merge(old, pool_config, metrics).map_err(|e| format!("pool `{name}`: {e}"))?;
                changes.push(change);
                pool
            }
            None => {
                let (specs, managed) = match saved.members(name, pool_config) {
                    Some((specs, managed)) => (specs.to_vec(), managed),
                    None => (Pool::file_specs(pool_config), false),
                };
                let backends = Pool::build_backends(name, &specs, metrics)
                    .map_err(|e| format!("pool `{name}`: {e}"))?;
                if previous.is_some() {
                    changes.push(PoolChange {
                        pool: name.clone(),
                        change: ChangeKind::Added,
                        settings: Vec::new(),
                        backends: BackendsFrom::File,
                        file_backends_ignored: false,
                    });
                }
                let pool = Pool::new(name, pool_config, backends, managed);
                pool.edge.store(Arc::new(saved.edge(name)));
                pool
            }
        };
        pools.push(pool);
    }
    for gone in previous
        .iter()
        .flat_map(|t| t.pools.iter())
        .filter(|old| !config.pools.contains_key(&old.name))
    {
        changes.push(PoolChange {
            pool: gone.name.clone(),
            change: ChangeKind::Removed,
            settings: Vec::new(),
            backends: BackendsFrom::None,
            file_backends_ignored: false,
        });
    }
    let find = |name: &str| pools.iter().find(|p| p.name == name).cloned();
    let routes = if proxy.routes.is_empty() {
        pools
            .first()
            .map(|pool| Route {
                host: None,
                path: "/".into(),
                pool: pool.clone(),
            })
            .into_iter()
            .collect()
    } else {
        proxy
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    path: r.path.clone(),
                    pool: find(r.pool.get_ref())
                        .ok_or_else(|| format!("route to unknown pool `{}`", r.pool.get_ref()))?,
                })
            })
            .collect::<Result<_, String>>()?
    };
    Ok(Table {
        routes,
        pools,
        settings: Settings::of(proxy),
    })
}

/// A changed pool section applied to a running pool. Admin-set members are kept as they are (same
/// objects: health, counters and in-flight requests carry over); otherwise the file's list
/// applies, reusing each backend the file still describes the same way.
fn merge(
    old: &Pool,
    config: &PoolConfig,
    metrics: &Metrics,
) -> Result<(Arc<Pool>, PoolChange), String> {
    let mut settings = Vec::new();
    for (what, changed) in [
        ("balance", old.config.balance != config.balance),
        ("sticky", old.config.sticky != config.sticky),
        ("health", old.config.health != config.health),
        ("eject", old.config.eject != config.eject),
    ] {
        if changed {
            settings.push(what);
        }
    }
    let file_changed = Pool::file_specs(&old.config) != Pool::file_specs(config);
    let members = old.members.load_full();
    let managed = old.managed();
    let backends = if managed {
        members.backends.clone()
    } else {
        Pool::file_specs(config)
            .iter()
            .map(|spec| match members.find(&spec.name) {
                Some(kept) if describes(spec, kept) => Ok(kept.clone()),
                _ => Backend::new(spec, metrics.backend(&old.name, &spec.name)),
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let change = PoolChange {
        pool: old.name.clone(),
        change: ChangeKind::Updated,
        settings,
        backends: if managed {
            BackendsFrom::AdminApi
        } else {
            BackendsFrom::File
        },
        file_backends_ignored: managed && file_changed,
    };
    let pool = Pool::new(&old.name, config, backends, managed);
    pool.edge.store(old.edge.load_full());
    Ok((pool, change))
}

/// The running backend is exactly what `spec` says, so it can stay (with its health and counters).
fn describes(spec: &BackendSpec, backend: &Backend) -> bool {
    let spec = spec.normalized();
    spec.addr == backend.addr
        && spec.route.as_deref() == Some(backend.route.as_str())
        && spec.weight == Some(backend.weight())
        && spec.state == Some(backend.state())
}
