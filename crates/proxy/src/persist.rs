//! The state file: runtime changes to pools survive a proxy restart, so a restarted proxy
//! serves what the last deploy switched to, not the backends first written in the config file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use nonstop_config::PoolConfig;
use serde::{Deserialize, Serialize};

use crate::edge::Edge;
use crate::state::{BackendSpec, Pool, Table};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedState {
    pub pools: BTreeMap<String, SavedPool>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPool {
    /// The pool's config section when the state was saved; a changed section wins over the state.
    pub section: String,
    pub backends: Vec<BackendSpec>,
    /// The members were set through the admin API; absent in files of older versions.
    #[serde(default)]
    pub managed: Option<bool>,
    /// Preview and maintenance mode; absent in files of older versions.
    #[serde(default)]
    pub edge: Edge,
}

impl SavedState {
    /// The saved members of `pool` and whether they are admin-set: kept if the section is still
    /// the one they were saved under, or if they were set through the admin API (a deploy's
    /// backends survive an edit of the pool's settings, as they do on reload).
    pub fn members(&self, pool: &str, config: &PoolConfig) -> Option<(&[BackendSpec], bool)> {
        let saved = self.pools.get(pool)?;
        let managed = saved.managed.unwrap_or_else(|| {
            // Older files did not say; members that differ from the file's were set by the API.
            let normal = |specs: &[BackendSpec]| -> Vec<BackendSpec> {
                specs.iter().map(BackendSpec::normalized).collect()
            };
            normal(&saved.backends) != normal(&Pool::file_specs(config))
        });
        (managed || saved.section == section(config))
            .then_some((saved.backends.as_slice(), managed))
    }
}

impl SavedState {
    /// The preview and maintenance mode saved for `pool`, whatever became of its section.
    pub fn edge(&self, pool: &str) -> Edge {
        self.pools
            .get(pool)
            .map(|p| p.edge.clone())
            .unwrap_or_default()
    }
}

/// A description of a pool section that ignores where in the file it stands.
fn section(config: &PoolConfig) -> String {
    let backends: Vec<BackendSpec> = config.backends.iter().map(BackendSpec::from).collect();
    format!(
        "{:?} {:?} {:?} {:?} {backends:?}",
        config.balance, config.sticky, config.health, config.eject
    )
}

/// Reads the state file; a missing one is empty, an unreadable one is reported and ignored.
pub fn load(path: &Path) -> SavedState {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::error!(file = %path.display(), error = %err, "state file is not valid; starting from the config file");
            SavedState::default()
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
        Err(err) => {
            tracing::error!(file = %path.display(), error = %err, "cannot read the state file; starting from the config file");
            SavedState::default()
        }
    }
}

/// Writes every pool's current members, atomically (temp file, fsync, rename).
pub fn save(path: &Path, table: &Table) -> std::io::Result<()> {
    let state = SavedState {
        pools: table
            .pools
            .iter()
            .map(|pool| {
                let saved = SavedPool {
                    section: section(&pool.config),
                    backends: pool.specs(),
                    managed: Some(pool.managed()),
                    edge: (**pool.edge.load()).clone(),
                };
                (pool.name.clone(), saved)
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}
