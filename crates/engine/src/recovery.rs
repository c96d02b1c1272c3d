//! Recovery of a deploy whose process died (or was interrupted): its journal holds every step
//! begun with its undo, so another process undoes exactly those, newest first.

use nonstop_ports::{Balancer, Probe, Runtime, Version};
use nonstop_store::{Deployment, Outcome};

use crate::deploy::Snapshot;
use crate::error::DeployError;
use crate::executor::{JournalData, Run};
use crate::releases::{self, Release};
use crate::{Engine, EventKind};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(crate) async fn recover(&self, stale: Deployment, why: &str) -> Result<(), DeployError> {
        self.deploy.set(Some(stale.id));
        self.event(
            EventKind::RollingBack,
            None,
            format!(
                "deploy #{} of {} (by {}, pid {}) did not finish ({why}); undoing its steps",
                stale.id, stale.version, stale.holder, stale.pid
            ),
        );
        let result = self.undo_journal(&stale).await;
        let reason = match &result {
            Ok(()) => format!("interrupted ({why}); undone by {}", self.holder.name),
            Err(e) => format!("interrupted ({why}); undoing it failed: {e}"),
        };
        let outcome = if result.is_ok() {
            Outcome::RolledBack
        } else {
            Outcome::Failed
        };
        self.store.finish(stale.id, outcome, Some(&reason))?;
        self.event(EventKind::Done, None, reason);
        self.deploy.set(None);
        result
    }

    async fn undo_journal(&self, stale: &Deployment) -> Result<(), DeployError> {
        let snapshot: Snapshot = serde_json::from_str(&stale.snapshot).map_err(|e| {
            DeployError::Failed(format!(
                "deploy #{} left an unreadable snapshot ({e}); check `nonstop status {}` and fix by hand",
                stale.id, self.service
            ))
        })?;
        let entries = self.store.journal_of(stale.id)?;
        let mut undo = Vec::new();
        let mut next_index = 0;
        for entry in &entries {
            if let Some(i) = entry.index {
                next_index = next_index.max(i as usize + 1);
            }
            if entry.phase.as_deref() != Some("begin") {
                continue;
            }
            let Some(data) = entry.data.as_deref() else {
                continue;
            };
            let data: JournalData = serde_json::from_str(data).map_err(|e| {
                DeployError::Failed(format!(
                    "deploy #{}'s journal entry {} cannot be read ({e}); check `nonstop status {}`",
                    stale.id,
                    entry.index.unwrap_or(-1),
                    self.service
                ))
            })?;
            if !data.undoing {
                undo.push(data.undo);
            }
        }
        let version = Version(stale.version.clone());
        let release = releases::load(&self.base, &version).unwrap_or_else(|| Release {
            version: version.clone(),
            artifact_name: String::new(),
            checksum: String::new(),
            env: Default::default(),
            created_ms: 0,
            dir: releases::releases_dir(&self.base).join(version.as_str()),
        });
        let members = self
            .members()
            .await
            .map_err(|e| DeployError::Failed(e.message().to_string()))?;
        let mut run = Run::new(stale.id, release, &members);
        run.undo = undo;
        run.index = next_index;
        self.compensate(&mut run, &snapshot)
            .await
            .map_err(DeployError::Failed)
    }
}
