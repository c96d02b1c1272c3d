//! Deploy and rollback: take the lock (recovering a deploy another process left unfinished),
//! install the release, plan, run the plan on the executor, and undo it when a step fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use nonstop_config::service::Strategy;
use nonstop_ports::{Balancer, LbState, NodeName, Probe, Runtime, Version};
use nonstop_store::Outcome;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{DeployError, StepError};
use crate::executor::Run;
use crate::plan::{Plan, Step};
use crate::releases::{self, Release};
use crate::strategies::Observed;
use crate::{Engine, EventKind};

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub artifact: PathBuf,
    pub version: Option<Version>,
    pub strategy: Option<Strategy>,
    /// Extra environment for this release, kept with it (also for its rollback).
    pub env: BTreeMap<String, String>,
    /// Wait for `nonstop promote` once the new release is up and healthy, before the switch.
    pub pause_before_switch: bool,
}

/// What a finished deploy did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub deploy: i64,
    pub version: Version,
    pub from: Option<Version>,
    pub strategy: String,
    /// From "new instances healthy" to "all new traffic on them".
    pub switch_ms: f64,
    pub duration_ms: u64,
    pub nodes: Vec<NodeName>,
}

/// The service before a deploy, as recorded with it: which releases the store named current
/// and previous (put back by an undo) and what ran where (shown by `history`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub current: Option<Version>,
    pub previous: Option<Version>,
    pub nodes: Vec<NodeSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSnapshot {
    pub node: NodeName,
    /// The version running there, if an instance was alive.
    pub version: Option<Version>,
    /// Balancer state, if the node was a member.
    pub state: Option<LbState>,
    pub weight: Option<u32>,
}

impl Snapshot {
    fn of(observed: &Observed, nodes: &[NodeName]) -> Snapshot {
        Snapshot {
            current: observed.current.clone(),
            previous: observed.previous.clone(),
            nodes: nodes
                .iter()
                .map(|node| NodeSnapshot {
                    version: observed.live.get(node).map(|i| i.version.clone()),
                    state: observed.members.get(node).map(|m| m.state),
                    weight: observed.members.get(node).map(|m| m.weight),
                    node: node.clone(),
                })
                .collect(),
        }
    }
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Takes the lock; recovers a deploy left unfinished by a killed nonstop first.
    async fn lock_and_recover(&mut self) -> Result<(), DeployError> {
        if let Some(stale) = self.store.acquire(&self.holder)? {
            self.refuse_if_paused(&stale)?;
            let why = format!("pid {} died", stale.pid);
            if let Err(e) = self.recover(stale, &why).await {
                self.unlock();
                return Err(e);
            }
        }
        Ok(())
    }

    /// A paused deploy whose process died waits for its decision; the next command does not
    /// undo it behind the back of whoever is to decide (unless its pause has expired).
    fn refuse_if_paused(&self, stale: &nonstop_store::Deployment) -> Result<(), DeployError> {
        if self.waits_for_decision(stale)? {
            self.unlock();
            return Err(DeployError::Refused(format!(
                "deploy #{id} of {v} is paused (its process, pid {pid}, is gone): `nonstop promote {s}` resumes it here, `nonstop abort {s}` rolls it back",
                id = stale.id,
                v = stale.version,
                pid = stale.pid,
                s = self.service
            )));
        }
        Ok(())
    }

    pub(crate) fn unlock(&self) {
        let _ = self.store.release();
    }

    /// Deploys `request`: installs the release, plans, runs the plan; undoes it on failure.
    pub async fn deploy(&mut self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        let strategy = request.strategy.unwrap_or(self.spec.strategy);
        if strategy.uses_slots() && self.spec.nodes.len() < 2 {
            return Err(DeployError::Refused(format!(
                "{strategy} needs at least two nodes (slots) in [services.{}]",
                self.service
            )));
        }
        // Checked before the lock, so a bad artifact changes nothing at all.
        releases::checksum(&request.artifact).map_err(DeployError::Refused)?;
        if let Some(v) = &request.version {
            releases::check_version(v.as_str()).map_err(DeployError::Refused)?;
        }
        self.lock_and_recover().await?;
        let result = async {
            let release =
                releases::install(&self.base, &request.artifact, request.version, request.env)
                    .map_err(DeployError::Refused)?;
            self.run_deploy(release, strategy, "deploy", request.pause_before_switch)
                .await
        }
        .await;
        self.finish_locked(result)
    }

    /// Puts the previous release back with the service's strategy (a canary is not re-watched):
    /// a slot that still runs it takes the traffic at once.
    pub async fn rollback(&mut self) -> Result<DeployReport, DeployError> {
        self.rollback_with(false).await
    }

    /// [`Engine::rollback`], which is refused past a migration that cannot be undone unless
    /// `force_past_migration`.
    pub async fn rollback_with(
        &mut self,
        force_past_migration: bool,
    ) -> Result<DeployReport, DeployError> {
        if let Some(stale) = self.store.acquire(&self.holder)? {
            self.refuse_if_paused(&stale)?;
            let result = self.recover(stale, "found at rollback").await;
            self.unlock();
            result?;
            return Err(DeployError::RolledBack(
                "the interrupted deploy was rolled back; the service runs its previous state again"
                    .into(),
            ));
        }
        let result = async {
            let (current, previous) = self.store.releases()?;
            let previous = previous.ok_or_else(|| {
                DeployError::Refused(format!(
                    "{} has no previous release to roll back to (see `nonstop history {}`)",
                    self.service, self.service
                ))
            })?;
            if let Some(current) = &current {
                self.check_rollback_past_migration(current, &previous, force_past_migration)?;
            }
            let release = releases::load(&self.base, &previous).ok_or_else(|| {
                DeployError::Refused(format!(
                    "release {previous} is no longer on disk in {}; deploy an artifact instead",
                    releases::releases_dir(&self.base).display()
                ))
            })?;
            let strategy = match self.spec.strategy {
                Strategy::Canary => Strategy::BlueGreen,
                other => other,
            };
            self.run_deploy(release, strategy, "rollback", false).await
        }
        .await;
        self.finish_locked(result)
    }

    fn finish_locked(
        &self,
        result: Result<DeployReport, DeployError>,
    ) -> Result<DeployReport, DeployError> {
        // A crash injected by a test leaves the lock as a killed process would.
        if self.crash_at.is_none() || result.is_ok() {
            self.unlock();
        }
        result
    }

    /// Undoes this process's own deploy after its future was dropped (Ctrl-C, SIGTERM), from
    /// its journal: every step was journaled with its undo before it acted.
    pub async fn abandon(&mut self, why: &str) -> DeployError {
        let own = match self.store.unfinished() {
            Ok(Some(d)) if d.pid == self.holder.pid => d,
            _ => {
                self.unlock();
                return DeployError::Refused(format!("{why}; nothing had changed"));
            }
        };
        let id = own.id;
        let result = self.recover(own, why).await;
        self.unlock();
        match result {
            Ok(()) => DeployError::RolledBack(format!(
                "deploy #{id} {why}; rolled back, the previous state serves"
            )),
            Err(e) => e,
        }
    }

    async fn run_deploy(
        &self,
        release: Release,
        strategy: Strategy,
        kind: &str,
        pause_before_switch: bool,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let observed = self.observe().await?;
        let snapshot = Snapshot::of(&observed, &self.spec.names());
        let plan: Plan = self
            .plan_from(
                &release.version,
                strategy,
                observed.clone(),
                pause_before_switch,
            )
            .await?;
        let id = self.store.begin(
            kind,
            &release.version,
            snapshot.current.as_ref(),
            strategy.as_str(),
            &self.holder,
            &serde_json::to_string(&snapshot).expect("plain data"),
        )?;
        self.store
            .save_plan(id, &serde_json::to_string(&plan.steps).expect("plain data"))?;
        self.deploy.set(Some(id));
        self.event(
            EventKind::Begin,
            None,
            format!(
                "{kind} #{id}: {} {} → {} ({strategy}, {} steps)",
                self.service,
                snapshot.current.as_ref().map_or("nothing", |v| v.as_str()),
                release.version,
                plan.steps.len()
            ),
        );
        let mut run = Run::new(id, release.clone(), &observed.members);
        run.crash_at = self.crash_at;
        run.from = snapshot.current.clone();
        run.strategy = strategy.as_str().to_string();
        let outcome = self.execute(&mut run, &plan.steps).await;
        let result = match outcome {
            Ok(()) => self.succeeded(&run, &plan, &snapshot, kind, started),
            Err(e) => self.undo_failed(&mut run, &snapshot, kind, e).await,
        };
        self.deploy.set(None);
        result
    }

    pub(crate) fn succeeded(
        &self,
        run: &Run,
        plan: &Plan,
        snapshot: &Snapshot,
        kind: &str,
        started: Instant,
    ) -> Result<DeployReport, DeployError> {
        let version = &run.release.version;
        self.store.set_releases(
            version,
            snapshot
                .current
                .as_ref()
                .filter(|c| *c != version)
                .or(snapshot.previous.as_ref()),
        )?;
        let (current, previous) = self.store.releases()?;
        let mut protect: Vec<Version> = current.into_iter().chain(previous).collect();
        protect.extend(
            self.store
                .instances()?
                .into_iter()
                .map(|r| r.instance.version),
        );
        for gone in releases::prune(&self.base, self.spec.keep_releases, &protect) {
            self.event(EventKind::Step, None, format!("pruned release {gone}"));
        }
        self.store.finish(run.deploy, Outcome::Succeeded, None)?;
        let nodes: Vec<NodeName> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Gate { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect();
        self.event(
            EventKind::Done,
            None,
            format!(
                "{} now runs {version} ({kind} #{} took {:.1}s, switch {}ms after healthy)",
                self.service,
                run.deploy,
                started.elapsed().as_secs_f64(),
                run.switch_ms
            ),
        );
        Ok(DeployReport {
            deploy: run.deploy,
            version: version.clone(),
            from: snapshot.current.clone(),
            strategy: plan.strategy.as_str().to_string(),
            switch_ms: run.switch_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            nodes,
        })
    }

    /// A step failed: undo what the deploy did (newest first) and record how it ended.
    pub(crate) async fn undo_failed(
        &self,
        run: &mut Run,
        snapshot: &Snapshot,
        kind: &str,
        error: StepError,
    ) -> Result<DeployReport, DeployError> {
        let id = run.deploy;
        let version = run.release.version.clone();
        if let StepError::Journal(why) = &error {
            let message = format!(
                "{kind} #{id} of {version} stopped: {why}; nothing was changed after the last journaled step. Free the space and run `nonstop deploy` (or `nonstop rollback`) again: it undoes this deploy from its journal first"
            );
            self.event(EventKind::Done, None, message.clone());
            return Err(DeployError::Environment(message));
        }
        let reason = error.message().to_string();
        self.event(
            EventKind::RollingBack,
            None,
            format!("{reason}; rolling back"),
        );
        let undone = self.compensate(run, snapshot).await;
        let (outcome, result) = match undone {
            Ok(()) => {
                // On day one nonstop knows no version, but what served (an operator's
                // servers, say) still does: the undo reverted only the deploy's own changes.
                let back = snapshot
                    .current
                    .as_ref()
                    .map_or("the service is as it was before".into(), |v| {
                        format!("{v} serves as before")
                    });
                let message = match &error {
                    StepError::Operator(_) => format!(
                        "{kind} #{id} of {version} stopped: {reason}; the deploy undid only its own changes and {back}"
                    ),
                    StepError::Environment(_) => format!(
                        "{kind} #{id} of {version} stopped: {reason}; the deploy undid its own changes and {back}"
                    ),
                    _ => format!("{kind} #{id} of {version} rolled back: {reason}; {back}"),
                };
                let err = match error {
                    StepError::Environment(_) => DeployError::Environment(message.clone()),
                    _ => DeployError::RolledBack(message.clone()),
                };
                (Outcome::RolledBack, (message, err))
            }
            Err(e) => {
                if let Some(hook) = self.hook_step(crate::HookPoint::OnFailure, None) {
                    let _ = self.execute_one(run, &hook).await;
                }
                let message = format!(
                    "{kind} #{id} of {version} stopped ({reason}) and undoing it did not fully succeed: {e}"
                );
                (
                    Outcome::Failed,
                    (message.clone(), DeployError::Failed(message)),
                )
            }
        };
        let (message, err) = result;
        if let Err(e) = self.store.finish(id, outcome, Some(&reason)) {
            self.event(EventKind::Warn, None, format!("store: {e}"));
        }
        self.event(EventKind::Done, None, message);
        Err(err)
    }

    /// Runs the undo of every step begun, newest first, on the same executor; then the store
    /// names the releases it named before the deploy.
    pub(crate) async fn compensate(
        &self,
        run: &mut Run,
        snapshot: &Snapshot,
    ) -> Result<(), String> {
        // Newest first; but nodes that are out already (dead, disabled) are put back before
        // any that serves is taken out, so an undo never needs more out than it finds.
        let out: BTreeSet<NodeName> = {
            let members = self.members().await.map_err(|e| e.message().to_string())?;
            let (live, known) = self.liveness(run).await;
            crate::reconcile::out_nodes(&members, &self.spec.names(), &live, &known)
                .into_iter()
                .collect()
        };
        let mut lists: Vec<Vec<Step>> = run.undo.drain(..).rev().collect();
        lists.sort_by_key(|list| !list.iter().flat_map(Step::nodes).all(|n| out.contains(&n)));
        let steps = simplify(lists.into_iter().flatten().collect());
        run.undoing = true;
        self.journal(
            run.deploy,
            run.index,
            "rollback",
            "rollback",
            &format!("rollback: undo {} step(s), newest first", steps.len()),
            None,
        )
        .map_err(|e| e.message().to_string())?;
        for step in &steps {
            match self.execute_one(run, step).await {
                Ok(()) => {}
                Err(StepError::Journal(why)) => {
                    return Err(format!(
                        "{why}; the undo stopped before `{step}` (the next deploy finishes it)"
                    ));
                }
                // Going on could take out or stop what serves: stop here and say what is left.
                Err(e) => {
                    return Err(format!(
                        "{step}: {}; the undo stopped there, see `nonstop status {}`",
                        e.message(),
                        self.service
                    ));
                }
            }
        }
        if let Some(current) = &snapshot.current {
            self.store
                .set_releases(current, snapshot.previous.as_ref())
                .map_err(|e| e.to_string())?;
        }
        if let Some(hook) = self.hook_step(crate::HookPoint::OnRollback, None) {
            // Reported, never undoing the undo.
            let _ = self.execute_one(run, &hook).await;
        }
        Ok(())
    }
}

/// Drops balancer changes a later one replaces before anything else happens to those nodes
/// (an undo's "draining" right before its "active" is one change, and one nginx reload, less).
fn simplify(steps: Vec<Step>) -> Vec<Step> {
    let mut keep = vec![true; steps.len()];
    for (i, step) in steps.iter().enumerate() {
        let Step::Set { changes, .. } = step else {
            continue;
        };
        for later in &steps[i + 1..] {
            match later {
                Step::Eligible { .. } | Step::Gate { .. } | Step::KeepWarm { .. } => continue,
                Step::Set { changes: next, .. } => {
                    if changes
                        .iter()
                        .all(|c| next.iter().any(|n| n.node == c.node))
                    {
                        keep[i] = false;
                    }
                    break;
                }
                _ => break,
            }
        }
    }
    steps
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect()
}
