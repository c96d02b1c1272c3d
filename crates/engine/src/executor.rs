//! The one executor every plan runs on: before each step it reconciles with the balancer
//! (someone else's change stops the deploy), checks the invariants in the balancer's own view,
//! journals the step durably with its undo, acts, and journals the result.

use std::collections::{BTreeMap, BTreeSet};

use nonstop_ports::{Balancer, Instance, LbState, NodeName, Probe, Runtime};
use nonstop_store::{Flush, StepEntry};
use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

use crate::error::StepError;
use crate::plan::{Change, SetPurpose, Step};
use crate::reconcile::{self, Members};
use crate::releases::Release;
use crate::{Engine, EventKind};

/// What the journal keeps of a step: enough for recovery to undo it from another process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalData {
    pub step: Step,
    /// Steps that put back what `step` changes, in order; computed before it acts.
    pub undo: Vec<Step>,
    /// Whether this entry is itself part of an undo (recovery redoes only forward steps' undos).
    #[serde(default)]
    pub undoing: bool,
    /// A canary step's: the members' weights before the first canary step (every step's
    /// share is of these), so a resumed deploy goes on from the same base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_base: Option<BTreeMap<NodeName, u32>>,
}

/// One deploy's running state, shared by its steps.
pub struct Run {
    pub deploy: i64,
    /// The release being deployed (or restored to, for an undo's starts).
    pub release: Release,
    /// The balancer state each member showed when the deploy last looked (after its own changes).
    pub last_seen: BTreeMap<NodeName, LbState>,
    /// Undo of every step begun, in step order.
    pub undo: Vec<Vec<Step>>,
    /// Nodes an operator changed during the deploy: their balancer state is theirs, not undone.
    pub operator: BTreeSet<NodeName>,
    /// Instances started or reused by this deploy, by node.
    pub started: BTreeMap<NodeName, Instance>,
    /// The old release's instance where a `Beside` runtime started the new one next to it.
    pub beside: BTreeMap<NodeName, Instance>,
    pub healthy_at: Option<Instant>,
    /// From "new instances healthy" to "all new traffic on them", the largest of the deploy.
    pub switch_ms: f64,
    /// Whether this run is an undo (its steps are journaled as such, and have no undo themselves).
    pub undoing: bool,
    /// Steps journaled so far (the index of the next one).
    pub index: usize,
    /// Test hook: behave as if the process were killed right after journaling step k.
    pub crash_at: Option<usize>,
    /// The release serving before the deploy, and the strategy (what hooks are told).
    pub from: Option<nonstop_ports::Version>,
    pub strategy: String,
    /// The members' weights before the first canary step.
    pub canary_base: Option<BTreeMap<NodeName, u32>>,
    /// Canary steps begun so far (the number of the current one).
    pub canary_steps: usize,
}

impl Run {
    pub fn new(deploy: i64, release: Release, members: &Members) -> Run {
        Run {
            deploy,
            release,
            last_seen: members.iter().map(|(n, m)| (n.clone(), m.state)).collect(),
            undo: Vec::new(),
            operator: BTreeSet::new(),
            started: BTreeMap::new(),
            beside: BTreeMap::new(),
            healthy_at: None,
            switch_ms: 0.0,
            undoing: false,
            index: 0,
            crash_at: None,
            from: None,
            strategy: String::new(),
            canary_base: None,
            canary_steps: 0,
        }
    }
}

/// Milliseconds with 0.01 ms resolution: a switch takes well under one.
pub(crate) fn fine_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Runs `steps` in order on `run`. Stops at the first failing step; the caller undoes.
    pub(crate) async fn execute(&self, run: &mut Run, steps: &[Step]) -> Result<(), StepError> {
        for step in steps {
            self.execute_one(run, step).await?;
        }
        Ok(())
    }

    pub(crate) async fn execute_one(&self, run: &mut Run, step: &Step) -> Result<(), StepError> {
        // One look at the balancer serves the reconcile and the undo's "before" states.
        let seen = if run.undoing {
            None
        } else {
            let members = self.reconcile(run).await?;
            self.watch(run).await?;
            Some(members)
        };
        let undo = match &seen {
            None => Vec::new(),
            Some(members) => self.undo_of(step, members),
        };
        let index = run.index;
        if let (Step::Canary { .. }, Some(members), None) = (step, &seen, &run.canary_base) {
            run.canary_base = Some(members.iter().map(|(n, m)| (n.clone(), m.weight)).collect());
        }
        let data = JournalData {
            step: step.clone(),
            undo: undo.clone(),
            undoing: run.undoing,
            canary_base: match step {
                Step::Canary { .. } => run.canary_base.clone(),
                _ => None,
            },
        };
        self.journal(
            run.deploy,
            index,
            "begin",
            step.kind(),
            &step.to_string(),
            Some(&data),
        )?;
        run.index += 1;
        if !run.undoing {
            run.undo.push(undo);
        }
        self.event(EventKind::Step, step.node(), step.to_string());
        if run.crash_at == Some(index) {
            return Err(StepError::Journal("crash injected".into()));
        }
        let started = Instant::now();
        match self.act(run, step).await {
            Ok(result) => {
                let result = format!("{result} ({})", took(started.elapsed()));
                self.journal(run.deploy, index, "done", step.kind(), &result, None)?;
                self.event(EventKind::Progress, step.node(), result);
                Ok(())
            }
            Err(e) => {
                // Best effort: the failure itself is in the deploy's reason too.
                let _ = self.journal(run.deploy, index, "failed", step.kind(), e.message(), None);
                Err(e)
            }
        }
    }

    /// Writes one journal entry; a failure stops the deploy before the step acts. What announces
    /// a change (a step's `begin`, a rollback) is on disk first; a result, or a wait for health,
    /// which changes nothing, goes with the next such entry (one fsync less between "healthy"
    /// and "all traffic on it").
    pub(crate) fn journal(
        &self,
        deploy: i64,
        index: usize,
        phase: &str,
        kind: &str,
        detail: &str,
        data: Option<&JournalData>,
    ) -> Result<(), StepError> {
        let flush = match (phase, kind) {
            ("done" | "failed", _) | (_, "health" | "eligible") => Flush::WithNext,
            _ => Flush::Now,
        };
        let json = data.map(|d| serde_json::to_string(d).expect("plain data"));
        let entry = StepEntry {
            deploy,
            index: index as i64,
            phase,
            step: kind,
            detail,
            data: json.as_deref(),
        };
        self.store
            .journal_step(&entry, flush)
            .map_err(|e| StepError::Journal(format!("journal: {e}")))
    }

    /// Reads the balancer; a member whose state changed since the deploy last looked was changed
    /// by someone else (an operator): the deploy stops, and leaves that node as they set it.
    pub(crate) async fn reconcile(&self, run: &mut Run) -> Result<Members, StepError> {
        let members = self.members().await?;
        let changed = reconcile::changed_by_others(&run.last_seen, &members);
        if !changed.is_empty() {
            let what = changed
                .iter()
                .map(|(n, was, now)| format!("{n} {was} → {now}"))
                .collect::<Vec<_>>()
                .join(", ");
            for (node, _, now) in &changed {
                run.operator.insert(node.clone());
                run.last_seen.insert(node.clone(), *now);
            }
            return Err(StepError::Operator(format!(
                "someone else changed the balancer during the deploy ({what}); their change wins"
            )));
        }
        Ok(members)
    }

    pub(crate) async fn members(&self) -> Result<Members, StepError> {
        let members = self.balancer.members().await.map_err(|e| {
            let e = StepError::from(e);
            match e {
                StepError::Failed(m) => StepError::Failed(format!("balancer: {m}")),
                other => other,
            }
        })?;
        Ok(members.into_iter().map(|m| (m.node.clone(), m)).collect())
    }

    /// After the deploy's own change of `nodes`: what the balancer shows for them now is what
    /// the deploy set. Other members keep their last seen state, so a change someone made to
    /// them meanwhile is still noticed before the next step.
    async fn seen(&self, run: &mut Run, nodes: &[&NodeName]) -> Result<(), StepError> {
        let members = self.members().await?;
        for node in nodes {
            if let Some(m) = members.get(*node) {
                run.last_seen.insert((*node).clone(), m.state);
            }
        }
        Ok(())
    }

    /// An instance this deploy started that died since is a failure now, not at the end.
    pub(crate) async fn watch(&self, run: &Run) -> Result<(), StepError> {
        for instance in run.started.values() {
            if !self.runtime.is_running(instance).await {
                return Err(self.died(instance, "exited after it started"));
            }
        }
        Ok(())
    }

    /// The steps that put back what `step` is about to change, from the state before it.
    fn undo_of(&self, step: &Step, members: &Members) -> Vec<Step> {
        match step {
            Step::Start { node, version, .. } => vec![Step::Stop {
                node: node.clone(),
                version: version.clone(),
                why: "undo its start".into(),
                keep_stopped: false,
            }],
            Step::Stop {
                node,
                version,
                keep_stopped: false,
                ..
            } => {
                let warm = self
                    .store
                    .instance(node)
                    .ok()
                    .flatten()
                    .and_then(|r| r.warm_until_ms);
                let mut undo = vec![
                    Step::Start {
                        node: node.clone(),
                        version: version.clone(),
                        port: self.spec.port_of(node),
                    },
                    Step::Gate {
                        node: node.clone(),
                        version: version.clone(),
                    },
                ];
                if let Some(until) = warm {
                    undo.push(Step::KeepWarm {
                        node: node.clone(),
                        until_ms: Some(until),
                    });
                }
                undo
            }
            Step::Reuse { node, .. } => {
                let warm = self
                    .store
                    .instance(node)
                    .ok()
                    .flatten()
                    .and_then(|r| r.warm_until_ms);
                warm.map(|until| Step::KeepWarm {
                    node: node.clone(),
                    until_ms: Some(until),
                })
                .into_iter()
                .collect()
            }
            // The new release goes first, then the old one serves (started again if it was
            // retired meanwhile): a Tomcat takes a version only if it sorts after the others.
            Step::StartBeside { node, version, old } => vec![
                Step::StopBeside {
                    node: node.clone(),
                    version: version.clone(),
                    old: old.clone(),
                },
                Step::Gate {
                    node: node.clone(),
                    version: old.clone(),
                },
            ],
            Step::Set { changes, .. } => undo_of_changes(members, changes),
            Step::Canary { nodes, live, .. } => {
                let touched: Vec<Change> = nodes
                    .iter()
                    .map(|n| Change::new(n, LbState::Active, None))
                    .collect();
                // The stable nodes keep their state but not their weights: put those back
                // first, or a rolled-back canary leaves them weighted for the next deploy.
                let weights: Vec<Change> = live
                    .iter()
                    .filter_map(|n| {
                        members
                            .get(n)
                            .map(|m| Change::new(n, m.state, Some(m.weight)))
                    })
                    .collect();
                let mut undo = Vec::new();
                if !weights.is_empty() {
                    undo.push(Step::Set {
                        purpose: SetPurpose::Restore,
                        changes: weights,
                    });
                }
                undo.extend(undo_of_changes(members, &touched));
                undo
            }
            Step::Register { .. }
            | Step::Retire { .. }
            | Step::StopBeside { .. }
            | Step::Stop { .. }
            | Step::Gate { .. }
            | Step::Eligible { .. }
            | Step::Drain { .. }
            | Step::Verify { .. }
            | Step::Pause { .. }
            | Step::KeepWarm { .. }
            | Step::MigrateDown { .. }
            | Step::Hook { .. } => Vec::new(),
            Step::Preview { .. } => vec![Step::Preview { nodes: Vec::new() }],
            // A reversible migration is undone by its down command; another stays applied.
            Step::Migrate { version } => match &self.spec.migrate {
                Some(m) if m.reversible && m.down.is_some() => vec![Step::MigrateDown {
                    version: version.clone(),
                }],
                _ => Vec::new(),
            },
        }
    }

    /// Performs one step; `Ok` says what happened (the journal's result).
    async fn act(&self, run: &mut Run, step: &Step) -> Result<String, StepError> {
        match step {
            Step::Register { node, addr } => {
                self.balancer.register(node, addr).await?;
                self.seen(run, &[node]).await?;
                Ok(format!("{node} is a member at {addr}"))
            }
            Step::Start { node, version, .. } => self.start(run, node, version).await,
            Step::Stop { node, version, .. } => self.stop(run, node, version).await,
            Step::Reuse { node, version } => self.reuse(run, node, version).await,
            Step::StartBeside { node, version, old } => {
                self.start_beside(run, node, version, old).await
            }
            Step::Retire { node, version } => self.retire(run, node, version).await,
            Step::StopBeside { node, version, old } => {
                self.stop_beside(run, node, version, old).await
            }
            Step::Gate { node, version } => {
                let instance = self
                    .instance_of(run, node, version)
                    .await
                    .ok_or_else(|| StepError::Failed(format!("{node} {version} is not running")))?;
                let result = self.health_gate(&instance).await?;
                run.healthy_at = Some(Instant::now());
                Ok(result)
            }
            Step::Eligible { nodes } => self.eligible(run, nodes).await,
            Step::Set { purpose, changes } => self.set(run, *purpose, changes).await,
            Step::Drain { nodes } => self.drain(run, nodes).await,
            Step::Canary {
                nodes,
                live,
                share,
                window,
            } => {
                let result = self.canary(run, nodes, live, *share, *window).await?;
                // "Healthy → all traffic" counts from the last verdict, not through the windows.
                run.healthy_at = Some(Instant::now());
                Ok(result)
            }
            Step::Verify { nodes, window } => self.verify(run, nodes, *window).await,
            Step::Pause { why, limit } => {
                let result = self.pause(run, why.as_str(), *limit).await?;
                run.healthy_at = Some(Instant::now());
                Ok(result)
            }
            Step::Hook { point, node } => self.run_hook(run, *point, node.as_ref()).await,
            Step::Migrate { version } => self.migrate(run, version, false).await,
            Step::MigrateDown { version } => self.migrate(run, version, true).await,
            Step::Preview { nodes } => self.preview(nodes).await,
            Step::KeepWarm { node, until_ms } => {
                self.store
                    .set_warm_until(node, *until_ms)
                    .map_err(|e| StepError::Environment(e.to_string()))?;
                Ok(match until_ms {
                    Some(until) => format!(
                        "{node} kept warm until {}",
                        nonstop_store::format_ms(*until)
                    ),
                    None => format!("{node} is no longer kept warm"),
                })
            }
        }
    }

    /// One atomic balancer change, refused (after waiting for the balancer's view to allow it)
    /// when it would leave the service without an eligible backend or take out more than
    /// `max_unavailable`.
    async fn set(
        &self,
        run: &mut Run,
        purpose: SetPurpose,
        changes: &[Change],
    ) -> Result<String, StepError> {
        let changes: Vec<Change> = changes
            .iter()
            .filter(|c| !(run.undoing && run.operator.contains(&c.node)))
            .cloned()
            .collect();
        if changes.is_empty() {
            return Ok("nothing to change (the operator's nodes stay as they set them)".into());
        }
        let deadline = Instant::now() + self.spec.health.deadline;
        let mut waited = false;
        loop {
            // Read right before acting: the view the reconcile saw may have changed since.
            let members = self.members().await?;
            match self.invariant_violation(run, &members, &changes).await {
                None => break,
                // What an operator holds out stays out: waiting for it would only delay the stop.
                Some((why, involved))
                    if Instant::now() >= deadline
                        || involved.iter().any(|n| run.operator.contains(n)) =>
                {
                    return Err(StepError::Failed(format!(
                        "refused to {}: {why} (waited {})",
                        Step::Set {
                            purpose,
                            changes: changes.clone()
                        },
                        humantime::format_duration(self.spec.health.deadline)
                    )));
                }
                Some((why, _)) => {
                    if !waited {
                        self.event(EventKind::Progress, None, format!("waiting: {why}"));
                        waited = true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let tuples: Vec<(NodeName, LbState, Option<u32>)> = changes
            .iter()
            .map(|c| (c.node.clone(), c.state, c.weight))
            .collect();
        self.balancer.switch(&tuples).await?;
        let mut result = format!("{} applied", changes.len());
        if let Some(at) = run.healthy_at
            && changes.iter().any(|c| c.state == LbState::Active)
            && !run.undoing
        {
            let switch_ms = fine_ms(at.elapsed());
            run.switch_ms = run.switch_ms.max(switch_ms);
            result = format!("{result}, {switch_ms}ms after healthy");
            if purpose == SetPurpose::Switch {
                self.event(
                    EventKind::Switched,
                    None,
                    format!("all new traffic on the new release ({switch_ms}ms after healthy)"),
                );
            }
        }
        let changed: Vec<&NodeName> = changes.iter().map(|c| &c.node).collect();
        self.seen(run, &changed).await?;
        Ok(result)
    }

    /// Why applying `changes` now would break an invariant, judged in the balancer's own view.
    pub(crate) async fn invariant_violation(
        &self,
        run: &Run,
        members: &Members,
        changes: &[Change],
    ) -> Option<(String, Vec<NodeName>)> {
        let (live, known) = self.liveness(run).await;
        let before = reconcile::eligible_nodes(members, &live, &known);
        let after = reconcile::after(members, changes);
        let eligible_after = reconcile::eligible_nodes(&after, &live, &known);
        if !before.is_empty() && eligible_after.is_empty() {
            let why = format!(
                "no backend would be eligible afterwards (the balancer considers eligible now: {})",
                before
                    .iter()
                    .map(NodeName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Some((why, Vec::new()));
        }
        if !self.spec.strategy.uses_slots() {
            let nodes = self.spec.names();
            let out_before = reconcile::out_nodes(members, &nodes, &live, &known);
            let out = reconcile::out_nodes(&after, &nodes, &live, &known);
            if out.len() > self.spec.max_unavailable && out.len() > out_before.len() {
                let why = format!(
                    "{} would be out ({}), more than max_unavailable = {}",
                    out.len(),
                    out.iter()
                        .map(NodeName::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.spec.max_unavailable
                );
                return Some((why, out));
            }
        }
        None
    }

    /// Instances alive now by node, and the nodes whose instance the engine tracks.
    pub(crate) async fn liveness(
        &self,
        run: &Run,
    ) -> (BTreeMap<NodeName, Instance>, BTreeSet<NodeName>) {
        let mut live = BTreeMap::new();
        let mut known = BTreeSet::new();
        let records = self.store.instances().unwrap_or_default();
        for record in records {
            known.insert(record.instance.node.clone());
            if self.runtime.is_running(&record.instance).await {
                live.insert(record.instance.node.clone(), record.instance);
            }
        }
        // The old release next to a new one (`Beside`) serves the node too.
        for (node, old) in &run.beside {
            if !live.contains_key(node) && self.runtime.is_running(old).await {
                live.insert(node.clone(), old.clone());
            }
        }
        (live, known)
    }
}

/// The undo of setting `changes` on `members`: nodes that lose traffic get it back at once
/// (once eligible); nodes that gain it drain first, then return to their state before.
pub(crate) fn undo_of_changes(members: &Members, changes: &[Change]) -> Vec<Step> {
    let before = |n: &NodeName| {
        members
            .get(n)
            .map_or((LbState::Disabled, None), |m| (m.state, Some(m.weight)))
    };
    let mut ups = Vec::new();
    let mut first = Vec::new();
    let mut downs = Vec::new();
    let mut last = Vec::new();
    for c in changes {
        let (state, weight) = before(&c.node);
        if state == LbState::Active && c.state != LbState::Active {
            ups.push(c.node.clone());
            first.push(Change::new(&c.node, LbState::Active, weight));
        } else if state != LbState::Active && c.state == LbState::Active {
            downs.push(c.node.clone());
            first.push(Change::new(&c.node, LbState::Draining, weight));
            if state != LbState::Draining {
                last.push(Change::new(&c.node, state, None));
            }
        } else if state != c.state || weight != c.weight.or(weight) {
            first.push(Change::new(&c.node, state, weight));
        }
    }
    let mut undo = Vec::new();
    if !ups.is_empty() {
        undo.push(Step::Eligible { nodes: ups });
    }
    if !first.is_empty() {
        undo.push(Step::Set {
            purpose: SetPurpose::Restore,
            changes: first,
        });
    }
    if !downs.is_empty() {
        undo.push(Step::Drain { nodes: downs });
    }
    if !last.is_empty() {
        undo.push(Step::Set {
            purpose: SetPurpose::Restore,
            changes: last,
        });
    }
    undo
}

pub(crate) fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
