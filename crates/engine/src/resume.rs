//! Resuming a paused deploy whose process died: its plan and journal are in the store, so the
//! promoting process rebuilds the run (undo lists, instances, canary base) and goes on after the pause.

use nonstop_ports::{Balancer, Probe, Runtime, Version};
use nonstop_store::{Deployment, now_ms};
use tokio::time::{Duration, Instant};

use crate::deploy::Snapshot;
use crate::error::DeployError;
use crate::executor::{JournalData, Run};
use crate::plan::{Plan, Step};
use crate::releases;
use crate::{DeployReport, Engine, EventKind};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Goes on with `stale` (paused, its process gone) after its pause, as `by` decided.
    pub(crate) async fn resume(
        &self,
        stale: Deployment,
        by: &str,
    ) -> Result<DeployReport, DeployError> {
        let unreadable = |what: &str, e: String| {
            DeployError::Failed(format!(
                "deploy #{}'s {what} cannot be read ({e}); `nonstop abort {}` undoes it from its journal",
                stale.id, self.service
            ))
        };
        let snapshot: Snapshot = serde_json::from_str(&stale.snapshot)
            .map_err(|e| unreadable("snapshot", e.to_string()))?;
        let steps: Vec<Step> = self
            .store
            .plan_of(stale.id)?
            .ok_or_else(|| unreadable("plan", "not recorded".into()))
            .and_then(|json| {
                serde_json::from_str(&json).map_err(|e| unreadable("plan", e.to_string()))
            })?;
        let version = Version(stale.version.clone());
        let release = releases::load(&self.base, &version).ok_or_else(|| {
            DeployError::Failed(format!(
                "release {version} of deploy #{} is no longer on disk; `nonstop abort {}` undoes the deploy",
                stale.id, self.service
            ))
        })?;
        self.store
            .adopt(stale.id, self.holder.pid, &self.holder.host)?;
        self.deploy.set(Some(stale.id));
        let members = self
            .members()
            .await
            .map_err(|e| DeployError::Failed(e.message().to_string()))?;
        let mut run = Run::new(stale.id, release, &members);
        run.from = snapshot.current.clone();
        run.strategy = stale.strategy.clone();
        let mut waiting_at = None;
        for entry in self.store.journal_of(stale.id)? {
            let (Some(index), Some("begin"), Some(data)) =
                (entry.index, entry.phase.as_deref(), entry.data.as_deref())
            else {
                continue;
            };
            let data: JournalData =
                serde_json::from_str(data).map_err(|e| unreadable("journal", e.to_string()))?;
            if data.undoing {
                continue;
            }
            if let Step::Canary { .. } = data.step {
                run.canary_steps += 1;
                if run.canary_base.is_none() {
                    run.canary_base = data.canary_base.clone();
                }
            }
            run.undo.push(data.undo);
            run.index = index as usize + 1;
            waiting_at = Some(index as usize);
        }
        let waiting_at = waiting_at.ok_or_else(|| unreadable("journal", "no step begun".into()))?;
        for record in self.store.instances()? {
            if record.instance.version == version && self.runtime.is_running(&record.instance).await
            {
                run.started
                    .insert(record.instance.node.clone(), record.instance);
            }
        }
        let waited = &steps[waiting_at];
        self.journal(
            stale.id,
            waiting_at,
            "done",
            waited.kind(),
            &format!(
                "promoted by {by}; resumed by {} after the deploy's process (pid {}) died",
                self.holder.name, stale.pid
            ),
            None,
        )
        .map_err(|e| DeployError::Environment(e.message().to_string()))?;
        self.event(
            EventKind::Begin,
            None,
            format!(
                "deploy #{} of {version}: resumed after step {} of {} (promoted by {by})",
                stale.id,
                waiting_at + 1,
                steps.len()
            ),
        );
        let started = Instant::now()
            .checked_sub(Duration::from_millis(
                (now_ms() - stale.started_ms).max(0) as u64
            ))
            .unwrap_or_else(Instant::now);
        let plan = Plan {
            service: self.service.clone(),
            strategy: stale
                .strategy
                .parse()
                .map_err(|e: String| unreadable("strategy", e))?,
            version,
            from: snapshot.current.clone(),
            steps,
            notes: Vec::new(),
        };
        let outcome = self.execute(&mut run, &plan.steps[waiting_at + 1..]).await;
        let result = match outcome {
            Ok(()) => self.succeeded(&run, &plan, &snapshot, &stale.kind, started),
            Err(e) => self.undo_failed(&mut run, &snapshot, &stale.kind, e).await,
        };
        self.deploy.set(None);
        result
    }
}
