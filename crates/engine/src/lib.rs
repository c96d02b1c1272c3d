//! nonstop's deploy engine: turns "deploy shop v42" into steps (start, health gate, switch, drain,
//! verify) run against the `Balancer`, `Runtime` and `Probe` ports, journaled before each effect.
//!
//! Every deploy first records a snapshot of the service (which node runs what, and what the
//! balancer sends where). Any failure, and the recovery of a deploy whose process was killed,
//! restores that snapshot: the old release keeps or regains the traffic, the new one is drained
//! and stopped. Blue-green and canary use idle slots; rolling replaces nodes in place.

pub mod events;
pub mod plan;
pub mod releases;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nonstop_config::service::{ServiceConfig, Strategy};
use nonstop_ports::{
    Balancer, Instance, InstanceSpec, LbState, Member, NodeName, Probe, Replacement, Runtime,
    Traffic, Version,
};
use nonstop_store::{Holder, Outcome, Store};
use serde::{Deserialize, Serialize};

pub use events::{Event, EventKind};
pub use releases::Release;

/// How a deploy ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Nothing was changed: bad input, missing artifact, or the service is locked.
    #[error("{0}")]
    Refused(String),
    /// The new release failed; the previous one serves again.
    #[error("{0}")]
    RolledBack(String),
    /// Something failed and could not be fully undone; the message says what to check.
    #[error("{0}")]
    Failed(String),
}

impl DeployError {
    /// Process exit code: 2 rolled back, 3 refused, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            DeployError::RolledBack(_) => 2,
            DeployError::Refused(_) => 3,
            DeployError::Failed(_) => 1,
        }
    }
}

impl From<nonstop_store::StoreError> for DeployError {
    fn from(e: nonstop_store::StoreError) -> Self {
        match e {
            e @ nonstop_store::StoreError::Locked { .. } => DeployError::Refused(e.to_string()),
            e => DeployError::Failed(e.to_string()),
        }
    }
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub artifact: PathBuf,
    pub version: Option<Version>,
    pub strategy: Option<Strategy>,
    /// Extra environment for this release, kept with it (also for its rollback).
    pub env: BTreeMap<String, String>,
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

/// The service before a deploy: what a rollback restores.
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

pub struct Engine<B, R, P> {
    pub service: String,
    pub config: ServiceConfig,
    /// `releases.dir`, resolved against the config file's directory.
    pub base: PathBuf,
    pub balancer: B,
    pub runtime: R,
    pub probe: P,
    pub store: Store,
    holder: Holder,
    emit: Box<dyn Fn(&Event)>,
    deploy: Option<i64>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Milliseconds with 0.01 ms resolution: a switch takes well under one.
fn fine_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: &str,
        config: ServiceConfig,
        base: PathBuf,
        balancer: B,
        runtime: R,
        probe: P,
        emit: Box<dyn Fn(&Event)>,
    ) -> Result<Self, DeployError> {
        let store = Store::open(&store_path(&base), service)?;
        Ok(Engine {
            service: service.to_string(),
            config,
            base,
            balancer,
            runtime,
            probe,
            store,
            holder: Holder::current(),
            emit,
            deploy: None,
        })
    }

    /// Names who this engine deploys for (history, lock messages), e.g. a console's user,
    /// instead of this process's `user@host`.
    pub fn act_for(&mut self, who: &str) {
        self.holder.name = who.to_string();
    }

    fn event(&self, kind: EventKind, node: Option<&NodeName>, message: impl Into<String>) {
        (self.emit)(&Event {
            at_ms: nonstop_store::now_ms(),
            deploy: self.deploy,
            kind,
            node: node.map(|n| n.to_string()),
            message: message.into(),
        });
    }

    /// Journals a step, then announces it; the caller performs the side effect afterwards.
    fn step(&self, step: &str, node: Option<&NodeName>, detail: impl Into<String>) {
        let detail = detail.into();
        if let Some(id) = self.deploy
            && let Err(e) = self.store.journal(id, step, &detail)
        {
            self.event(EventKind::Warn, None, format!("journal: {e}"));
        }
        self.event(EventKind::Step, node, detail);
    }

    fn nodes(&self) -> Vec<(NodeName, u16)> {
        self.config
            .nodes
            .iter()
            .map(|n| (NodeName(n.name.get_ref().clone()), *n.port.get_ref()))
            .collect()
    }

    /// The IP the balancer and the health gate reach `node` at.
    fn ip_of(&self, node: &NodeName) -> String {
        self.config
            .node(node.as_str())
            .map_or_else(|| "127.0.0.1".to_string(), |n| n.ip().to_string())
    }

    fn port_of(&self, node: &NodeName) -> u16 {
        self.config
            .node(node.as_str())
            .map(|n| *n.port.get_ref())
            .unwrap_or(0)
    }

    async fn members(&self) -> Result<BTreeMap<NodeName, Member>, DeployError> {
        let members = self
            .balancer
            .members()
            .await
            .map_err(|e| DeployError::Refused(format!("balancer: {e}")))?;
        Ok(members.into_iter().map(|m| (m.node.clone(), m)).collect())
    }

    /// Instances the store knows that are still alive, by node.
    async fn live_instances(&self) -> Result<BTreeMap<NodeName, Instance>, DeployError> {
        let mut live = BTreeMap::new();
        for record in self.store.instances()? {
            if self.runtime.is_running(&record.instance).await {
                live.insert(record.instance.node.clone(), record.instance);
            }
        }
        Ok(live)
    }

    async fn snapshot(&self) -> Result<Snapshot, DeployError> {
        let members = self.members().await?;
        let instances = self.live_instances().await?;
        let (current, previous) = self.store.releases()?;
        Ok(Snapshot {
            current,
            previous,
            nodes: self
                .nodes()
                .into_iter()
                .map(|(node, _)| NodeSnapshot {
                    version: instances.get(&node).map(|i| i.version.clone()),
                    state: members.get(&node).map(|m| m.state),
                    weight: members.get(&node).map(|m| m.weight),
                    node,
                })
                .collect(),
        })
    }

    /// Takes the lock; recovers a deploy left unfinished by a killed nonstop. Returns whether it did.
    fn lock(&mut self) -> Result<Option<nonstop_store::Deployment>, DeployError> {
        Ok(self.store.acquire(&self.holder)?)
    }

    fn unlock(&self) {
        let _ = self.store.release();
    }

    async fn recover(&mut self, stale: nonstop_store::Deployment) -> Result<(), DeployError> {
        let why = format!("pid {} died", stale.pid);
        self.recover_because(stale, &why).await
    }

    async fn recover_because(
        &mut self,
        stale: nonstop_store::Deployment,
        why: &str,
    ) -> Result<(), DeployError> {
        self.deploy = Some(stale.id);
        self.event(
            EventKind::RollingBack,
            None,
            format!(
                "deploy #{} of {} (by {}, pid {}) did not finish ({why}); restoring the state before it",
                stale.id, stale.version, stale.holder, stale.pid
            ),
        );
        let snapshot: Snapshot = serde_json::from_str(&stale.snapshot).map_err(|e| {
            DeployError::Failed(format!(
                "deploy #{} left an unreadable snapshot ({e}); check `nonstop status {}` and fix by hand",
                stale.id, self.service
            ))
        })?;
        let restored = self.restore(&snapshot).await;
        let reason = match &restored {
            Ok(()) => format!("interrupted ({why}); recovered by {}", self.holder.name),
            Err(e) => format!("interrupted; recovery failed: {e}"),
        };
        let outcome = if restored.is_ok() {
            Outcome::RolledBack
        } else {
            Outcome::Failed
        };
        self.store.finish(stale.id, outcome, Some(&reason))?;
        self.event(EventKind::Done, None, reason);
        self.deploy = None;
        restored
    }

    /// Stops slots kept warm past their `keep_warm` time, if the balancer sends them nothing.
    async fn reap_warm(&self) -> Result<(), DeployError> {
        let now = nonstop_store::now_ms();
        let members = self.members().await?;
        for record in self.store.instances()? {
            let Some(until) = record.warm_until_ms else {
                continue;
            };
            let idle = members
                .get(&record.instance.node)
                .is_none_or(|m| m.state == LbState::Disabled && m.in_flight == 0);
            if until <= now && idle {
                self.step(
                    "stop-warm",
                    Some(&record.instance.node),
                    format!(
                        "stop {} {} (kept warm until its keep_warm ran out)",
                        record.instance.node, record.instance.version
                    ),
                );
                self.stop_instance(&record.instance).await?;
            }
        }
        Ok(())
    }

    /// Deploys `request`: installs the release, then runs the strategy; rolls back on failure.
    pub async fn deploy(&mut self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        let strategy = request.strategy.unwrap_or(*self.config.strategy.get_ref());
        if strategy.uses_slots() && self.config.nodes.len() < 2 {
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
        if let Some(stale) = self.lock()?
            && let Err(e) = self.recover(stale).await
        {
            self.unlock();
            return Err(e);
        }
        let result = self.deploy_locked(request, strategy, "deploy").await;
        self.unlock();
        result
    }

    /// Puts the previous release back, with the service's strategy (a canary is not re-watched).
    pub async fn rollback(&mut self) -> Result<DeployReport, DeployError> {
        if let Some(stale) = self.lock()? {
            let result = self.recover(stale).await;
            self.unlock();
            result?;
            return Err(DeployError::RolledBack(
                "the interrupted deploy was rolled back; the service runs its previous state again"
                    .into(),
            ));
        }
        let result = async {
            let (_, previous) = self.store.releases()?;
            let previous = previous.ok_or_else(|| {
                DeployError::Refused(format!(
                    "{} has no previous release to roll back to (see `nonstop history {}`)",
                    self.service, self.service
                ))
            })?;
            let release = releases::load(&self.base, &previous).ok_or_else(|| {
                DeployError::Refused(format!(
                    "release {previous} is no longer on disk in {}; deploy an artifact instead",
                    releases::releases_dir(&self.base).display()
                ))
            })?;
            let strategy = match *self.config.strategy.get_ref() {
                Strategy::Canary => Strategy::BlueGreen,
                other => other,
            };
            let request = DeployRequest {
                artifact: release.artifact(),
                version: Some(previous),
                strategy: Some(strategy),
                env: release.env.clone(),
            };
            self.deploy_locked(request, strategy, "rollback").await
        }
        .await;
        self.unlock();
        result
    }

    /// Rolls back this process's own deploy after its future was dropped (Ctrl-C, SIGTERM).
    /// Every step is journaled before its effect, so the snapshot restore is always sound.
    pub async fn abandon(&mut self, why: &str) -> DeployError {
        let own = match self.store.unfinished() {
            Ok(Some(d)) if d.pid == self.holder.pid => d,
            _ => {
                self.unlock();
                return DeployError::Refused(format!("{why}; nothing had changed"));
            }
        };
        let id = own.id;
        let result = self.recover_because(own, why).await;
        self.unlock();
        match result {
            Ok(()) => DeployError::RolledBack(format!(
                "deploy #{id} {why}; rolled back, the previous state serves"
            )),
            Err(e) => e,
        }
    }

    async fn deploy_locked(
        &mut self,
        request: DeployRequest,
        strategy: Strategy,
        kind: &str,
    ) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let release = if kind == "rollback" {
            releases::load(
                &self.base,
                request.version.as_ref().expect("rollback has a version"),
            )
            .ok_or_else(|| DeployError::Refused("the previous release vanished".into()))?
        } else {
            releases::install(&self.base, &request.artifact, request.version, request.env)
                .map_err(DeployError::Refused)?
        };
        self.reap_warm().await?;
        let snapshot = self.snapshot().await?;
        let snapshot_json = serde_json::to_string(&snapshot).expect("plain data");
        let id = self.store.begin(
            kind,
            &release.version,
            snapshot.current.as_ref(),
            strategy.as_str(),
            &self.holder,
            &snapshot_json,
        )?;
        self.deploy = Some(id);
        self.event(
            EventKind::Begin,
            None,
            format!(
                "{kind} #{id}: {} {} → {} ({strategy})",
                self.service,
                snapshot.current.as_ref().map_or("nothing", |v| v.as_str()),
                release.version
            ),
        );
        let run = match strategy {
            Strategy::BlueGreen => self.blue_green(&release, &snapshot, false).await,
            Strategy::Canary => self.blue_green(&release, &snapshot, true).await,
            Strategy::Rolling => self.rolling(&release, &snapshot).await,
        };
        let result = match run {
            Ok((nodes, switch_ms)) => {
                self.store.set_releases(
                    &release.version,
                    snapshot
                        .current
                        .as_ref()
                        .filter(|c| **c != release.version)
                        .or(snapshot.previous.as_ref()),
                )?;
                let (current, previous) = self.store.releases()?;
                let mut protect: Vec<Version> = current.into_iter().chain(previous).collect();
                protect.extend(
                    self.live_instances()
                        .await?
                        .into_values()
                        .map(|i| i.version),
                );
                for gone in
                    releases::prune(&self.base, *self.config.releases.keep.get_ref(), &protect)
                {
                    self.event(EventKind::Step, None, format!("pruned release {gone}"));
                }
                self.store.finish(id, Outcome::Succeeded, None)?;
                let report = DeployReport {
                    deploy: id,
                    version: release.version.clone(),
                    from: snapshot.current.clone(),
                    strategy: strategy.as_str().to_string(),
                    switch_ms,
                    duration_ms: ms(started.elapsed()),
                    nodes,
                };
                self.event(
                    EventKind::Done,
                    None,
                    format!(
                        "{} now runs {} ({kind} #{id} took {:.1}s, switch {}ms after healthy)",
                        self.service,
                        release.version,
                        started.elapsed().as_secs_f64(),
                        switch_ms
                    ),
                );
                Ok(report)
            }
            Err(reason) => {
                self.event(
                    EventKind::RollingBack,
                    None,
                    format!("{reason}; rolling back"),
                );
                self.step("rollback", None, format!("rollback: {reason}"));
                match self.restore(&snapshot).await {
                    Ok(()) => {
                        let back = snapshot
                            .current
                            .as_ref()
                            .map_or("nothing".into(), |v| format!("{v}"));
                        let message = format!(
                            "{kind} #{id} of {} rolled back: {reason}; {back} serves as before",
                            release.version
                        );
                        self.store.finish(id, Outcome::RolledBack, Some(&reason))?;
                        self.event(EventKind::Done, None, message.clone());
                        Err(DeployError::RolledBack(message))
                    }
                    Err(e) => {
                        let message = format!(
                            "{kind} #{id} failed ({reason}) and the rollback failed too: {e}; check `nonstop status {}`",
                            self.service
                        );
                        self.store.finish(id, Outcome::Failed, Some(&message))?;
                        self.event(EventKind::Done, None, message.clone());
                        Err(DeployError::Failed(message))
                    }
                }
            }
        };
        self.deploy = None;
        result
    }

    async fn start_instance(&self, release: &Release, node: &NodeName) -> Result<Instance, String> {
        let port = self.port_of(node);
        let grace = self.config.runtime.shared.stop_grace.0;
        // A runtime whose server keeps the node's port (`InPlace`, `Beside`) holds it on purpose.
        if self.runtime.replacement() == Replacement::StopFirst
            && !self.config.on_hosts()
            && !wait_port_free("127.0.0.1", port, grace).await
        {
            return Err(format!(
                "port {port} of {node} is taken by a process nonstop did not start; stop it or change the port"
            ));
        }
        self.step(
            "start",
            Some(node),
            format!("start {node} {} on port {port}", release.version),
        );
        let spec = InstanceSpec {
            node: node.clone(),
            port,
            version: release.version.clone(),
            release_dir: release.dir.clone(),
            artifact: release.artifact(),
            env: release.env.clone(),
            log: release.log(node.as_str()),
        };
        let instance = self
            .runtime
            .start(&spec)
            .await
            .map_err(|e| format!("{node} did not start: {e}"))?;
        self.store
            .put_instance(&instance)
            .map_err(|e| e.to_string())?;
        Ok(instance)
    }

    async fn stop_instance(&self, instance: &Instance) -> Result<(), DeployError> {
        self.runtime
            .stop(instance, self.config.runtime.shared.stop_grace.0)
            .await
            .map_err(|e| DeployError::Failed(e.to_string()))?;
        self.store.remove_instance(&instance.node)?;
        Ok(())
    }

    /// Waits until `instance` passes the health check `successes` times in a row.
    async fn health_gate(&self, instance: &Instance) -> Result<(), String> {
        let health = &self.config.health;
        let needed = *health.successes.get_ref();
        self.step(
            "health",
            Some(&instance.node),
            format!(
                "health gate {} {}: GET {} on port {} ({} passes in a row, deadline {})",
                instance.node,
                instance.version,
                health.path.get_ref(),
                instance.port,
                needed,
                health.deadline
            ),
        );
        let ip = self.ip_of(&instance.node);
        let started = Instant::now();
        let mut passes = 0;
        let mut tries = 0u32;
        let mut last = String::from("no answer yet");
        let mut shown = Instant::now();
        loop {
            if !self.runtime.is_running(instance).await {
                return Err(format!(
                    "{} {} exited during its health gate (log: {})",
                    instance.node,
                    instance.version,
                    instance.log.display()
                ));
            }
            tries += 1;
            match self.probe.check(&ip, instance.port).await {
                Ok(()) => {
                    passes += 1;
                    if passes >= needed {
                        self.event(
                            EventKind::Progress,
                            Some(&instance.node),
                            format!(
                                "{} {} healthy after {:.1}s ({tries} tries)",
                                instance.node,
                                instance.version,
                                started.elapsed().as_secs_f64()
                            ),
                        );
                        return Ok(());
                    }
                }
                Err(e) => {
                    passes = 0;
                    last = e;
                }
            }
            if started.elapsed() >= health.deadline.0 {
                return Err(format!(
                    "{} {} failed its health gate: no {needed} passes in a row within {} (last: {last})",
                    instance.node, instance.version, health.deadline
                ));
            }
            if shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                self.event(
                    EventKind::Progress,
                    Some(&instance.node),
                    format!(
                        "waiting for {} {}: {:.0}s of {}, {tries} tries, last: {last}",
                        instance.node,
                        instance.version,
                        started.elapsed().as_secs_f64(),
                        health.deadline
                    ),
                );
            }
            tokio::time::sleep(health.interval.0).await;
        }
    }

    /// Waits until `nodes` have no requests in flight (and, with `sessions`, until the timeout).
    async fn drain(&self, nodes: &[NodeName]) -> Result<(), String> {
        if nodes.is_empty() {
            return Ok(());
        }
        let drain = &self.config.drain;
        let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        self.step(
            "drain",
            None,
            format!(
                "drain {}: wait for in-flight requests{} (at most {})",
                names.join(", "),
                if drain.sessions { " and sessions" } else { "" },
                drain.timeout
            ),
        );
        let started = Instant::now();
        loop {
            let members = self.members().await.map_err(|e| e.to_string())?;
            let in_flight: i64 = nodes
                .iter()
                .filter_map(|n| members.get(n))
                .map(|m| m.in_flight.max(0))
                .sum();
            let timed_out = started.elapsed() >= drain.timeout.0;
            if (in_flight == 0 && !drain.sessions) || timed_out {
                self.event(
                    EventKind::Progress,
                    None,
                    if in_flight == 0 {
                        format!(
                            "drained {} in {}ms",
                            names.join(", "),
                            ms(started.elapsed())
                        )
                    } else {
                        format!(
                            "drain timeout: {in_flight} request(s) still in flight on {}",
                            names.join(", ")
                        )
                    },
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Watches that `instances` stay up for `verify` after they took traffic.
    async fn verify(&self, instances: &[Instance]) -> Result<(), String> {
        let verify = self.config.verify.0;
        if verify.is_zero() {
            return Ok(());
        }
        self.step(
            "verify",
            None,
            format!(
                "verify: new instances must stay up for {}",
                self.config.verify
            ),
        );
        let until = Instant::now() + verify;
        loop {
            for instance in instances {
                if !self.runtime.is_running(instance).await {
                    return Err(format!(
                        "{} {} died after taking traffic (log: {})",
                        instance.node,
                        instance.version,
                        instance.log.display()
                    ));
                }
            }
            if Instant::now() >= until {
                return Ok(());
            }
            // Polled often: until the switch back, requests routed to a dead instance fail.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The slots of a blue-green deploy when no instance nonstop started serves: half of the
    /// nodes, passing over a node whose port a process nonstop did not start holds. On day one
    /// over an existing setup that process is the release serving now (e.g. the one an old
    /// blue-green script started): it keeps serving until the switch, and the deploy goes to
    /// the other slot (docs/balancers/nginx.md).
    pub(crate) fn first_slots(&self) -> Vec<NodeName> {
        let all: Vec<NodeName> = self.nodes().into_iter().map(|(n, _)| n).collect();
        let half = all.len().div_ceil(2);
        if self.runtime.replacement() != Replacement::StopFirst || self.config.on_hosts() {
            return all[..half].to_vec();
        }
        let free: Vec<NodeName> = all
            .iter()
            .filter(|n| std::net::TcpListener::bind(("127.0.0.1", self.port_of(n))).is_ok())
            .cloned()
            .collect();
        if free.is_empty() {
            return all[..half].to_vec();
        }
        free.into_iter().take(half).collect()
    }

    async fn register(&self, node: &NodeName) -> Result<(), String> {
        let addr = format!("{}:{}", self.ip_of(node), self.port_of(node));
        self.balancer
            .register(node, &addr)
            .await
            .map_err(|e| format!("balancer: {e}"))
    }

    /// Starts `release` on `node` (reusing a live instance of it), then health-gates it.
    ///
    /// A live instance of another release is stopped first — unless `beside` (a
    /// [`Replacement::Beside`] runtime on a node that keeps serving): then the new release starts
    /// next to it, and the old one is stopped (retired) only once the new one passed its health
    /// gate. If the gate fails, the store records the new instance and the old one still runs:
    /// [`Engine::restore`] stops the new one and re-records the old.
    async fn bring_up(
        &self,
        release: &Release,
        node: &NodeName,
        beside: bool,
    ) -> Result<Instance, String> {
        let existing = self.live_instances().await.map_err(|e| e.to_string())?;
        if let Some(instance) = existing.get(node) {
            if instance.version == release.version {
                self.step(
                    "reuse",
                    Some(node),
                    format!("{node} still runs {} (kept warm)", release.version),
                );
                self.store
                    .set_warm_until(node, None)
                    .map_err(|e| e.to_string())?;
                self.health_gate(instance).await?;
                return Ok(instance.clone());
            }
            if beside {
                // The store keeps one instance per node: `old` is held here while the new
                // instance's record replaces it.
                let old = instance.clone();
                self.step(
                    "start-beside",
                    Some(node),
                    format!(
                        "{node} keeps serving {} while {} starts beside it",
                        old.version, release.version
                    ),
                );
                let instance = self.start_instance(release, node).await?;
                self.health_gate(&instance).await?;
                self.step(
                    "retire",
                    Some(node),
                    format!(
                        "retire {node} {}: new sessions go to {}; stopped once its sessions end (at most {})",
                        old.version, release.version, self.config.runtime.shared.stop_grace
                    ),
                );
                let started = Instant::now();
                self.runtime
                    .stop(&old, self.config.runtime.shared.stop_grace.0)
                    .await
                    .map_err(|e| format!("{node}: retiring {} failed: {e}", old.version))?;
                self.event(
                    EventKind::Progress,
                    Some(node),
                    format!(
                        "{node} {} retired after {:.1}s",
                        old.version,
                        started.elapsed().as_secs_f64()
                    ),
                );
                return Ok(instance);
            }
            self.step(
                "stop",
                Some(node),
                format!("stop {node} {} to free the slot", instance.version),
            );
            self.stop_instance(instance)
                .await
                .map_err(|e| e.to_string())?;
        }
        let instance = self.start_instance(release, node).await?;
        self.health_gate(&instance).await?;
        Ok(instance)
    }

    async fn blue_green(
        &self,
        release: &Release,
        snapshot: &Snapshot,
        canary: bool,
    ) -> Result<(Vec<NodeName>, f64), String> {
        let live_instances = self.live_instances().await.map_err(|e| e.to_string())?;
        let live: Vec<NodeName> = snapshot
            .nodes
            .iter()
            .filter(|n| n.state == Some(LbState::Active) && live_instances.contains_key(&n.node))
            .map(|n| n.node.clone())
            .collect();
        let all: Vec<NodeName> = self.nodes().into_iter().map(|(n, _)| n).collect();
        let targets: Vec<NodeName> = if live.is_empty() {
            self.first_slots()
        } else {
            all.iter().filter(|n| !live.contains(n)).cloned().collect()
        };
        if targets.is_empty() {
            return Err("every slot is live: blue-green needs an idle slot (add a node)".into());
        }
        let mut started = Vec::new();
        for node in &targets {
            self.register(node).await?;
            // Never `beside`, whatever the runtime's `Replacement`: a target slot is a node the
            // balancer sends nothing, so what it still runs is stopped first (a `Beside` runtime
            // changes nothing here; the old release keeps serving on the other slots).
            let instance = self.bring_up(release, node, false).await?;
            started.push(instance);
        }
        let healthy_at = Instant::now();
        let weights: BTreeMap<NodeName, u32> = snapshot
            .nodes
            .iter()
            .filter_map(|n| n.weight.map(|w| (n.node.clone(), w)))
            .collect();
        let base_weight = live
            .iter()
            .filter_map(|n| weights.get(n))
            .copied()
            .max()
            .unwrap_or(1);
        // Others that claim traffic without a live instance (stale config) lose it in the switch.
        let others: Vec<NodeName> = snapshot
            .nodes
            .iter()
            .filter(|n| !targets.contains(&n.node) && n.state == Some(LbState::Active))
            .map(|n| n.node.clone())
            .collect();
        if canary && !live.is_empty() {
            self.canary(&targets, &live, &weights, &started).await?;
        }
        let mut changes: Vec<(NodeName, LbState, Option<u32>)> = targets
            .iter()
            .map(|n| (n.clone(), LbState::Active, Some(base_weight)))
            .collect();
        changes.extend(
            others
                .iter()
                .map(|n| (n.clone(), LbState::Draining, weights.get(n).copied())),
        );
        self.step(
            "switch",
            None,
            format!(
                "switch: {} active{}",
                names(&targets),
                if others.is_empty() {
                    String::new()
                } else {
                    format!(", {} draining", names(&others))
                }
            ),
        );
        self.balancer
            .switch(&changes)
            .await
            .map_err(|e| format!("balancer switch: {e}"))?;
        let switch_ms = fine_ms(healthy_at.elapsed());
        self.event(
            EventKind::Switched,
            None,
            format!(
                "all new traffic on {} {} ({switch_ms}ms after healthy)",
                names(&targets),
                release.version
            ),
        );
        self.drain(&others).await?;
        // The old slots stay `draining` (no new requests) through verify: sessions can finish,
        // and a balancer that falls back to draining backends has somewhere to send a retry.
        self.verify(&started).await?;
        if !others.is_empty() {
            let disable: Vec<_> = others
                .iter()
                .map(|n| (n.clone(), LbState::Disabled, None))
                .collect();
            self.balancer
                .switch(&disable)
                .await
                .map_err(|e| format!("balancer: {e}"))?;
        }
        let keep_warm = self.config.keep_warm.0;
        for node in &others {
            let Some(old) = live_instances.get(node) else {
                continue;
            };
            if keep_warm.is_zero() {
                self.step(
                    "stop",
                    Some(node),
                    format!("stop {node} {} (keep_warm = 0s)", old.version),
                );
                self.stop_instance(old).await.map_err(|e| e.to_string())?;
            } else {
                self.step(
                    "keep-warm",
                    Some(node),
                    format!(
                        "keep {node} {} running for {} so a rollback is instant",
                        old.version, self.config.keep_warm
                    ),
                );
                self.store
                    .set_warm_until(node, Some(nonstop_store::now_ms() + ms(keep_warm) as i64))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok((targets, switch_ms))
    }

    /// Gives the canaries their share of traffic for the watch window and judges them.
    async fn canary(
        &self,
        canaries: &[NodeName],
        live: &[NodeName],
        weights: &BTreeMap<NodeName, u32>,
        started: &[Instance],
    ) -> Result<(), String> {
        let cfg = &self.config.canary;
        let share = *cfg.weight.get_ref();
        let changes = canary_weights(canaries, live, weights, share);
        self.step(
            "canary",
            None,
            format!(
                "canary: {} takes {share}% of new requests for {}",
                names(canaries),
                cfg.window
            ),
        );
        let before = self.members().await.map_err(|e| e.to_string())?;
        self.balancer
            .switch(&changes)
            .await
            .map_err(|e| format!("balancer: {e}"))?;
        let until = Instant::now() + cfg.window.0;
        let mut shown = Instant::now();
        while Instant::now() < until {
            for instance in started {
                if !self.runtime.is_running(instance).await {
                    return Err(format!(
                        "canary {} {} died during its watch window (log: {})",
                        instance.node,
                        instance.version,
                        instance.log.display()
                    ));
                }
            }
            if shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                let now = self.members().await.map_err(|e| e.to_string())?;
                let c = traffic(&now, &before, canaries);
                self.event(
                    EventKind::Progress,
                    None,
                    format!(
                        "canary: {} requests, {:.2}% errors, {} left",
                        c.requests,
                        c.error_rate() * 100.0,
                        humantime::format_duration(Duration::from_secs(
                            until.saturating_duration_since(Instant::now()).as_secs()
                        ))
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = self.members().await.map_err(|e| e.to_string())?;
        let c = traffic(&after, &before, canaries);
        let o = traffic(&after, &before, live);
        let verdict = judge(&c, &o, self.config.canary.clone());
        self.step(
            "canary-verdict",
            None,
            format!(
                "canary: {} requests, {:.2}% errors, mean {:.1}ms; old: {} requests, {:.2}% errors, mean {:.1}ms",
                c.requests,
                c.error_rate() * 100.0,
                c.mean_latency_ms().unwrap_or(0.0),
                o.requests,
                o.error_rate() * 100.0,
                o.mean_latency_ms().unwrap_or(0.0)
            ),
        );
        verdict
    }

    async fn rolling(
        &self,
        release: &Release,
        snapshot: &Snapshot,
    ) -> Result<(Vec<NodeName>, f64), String> {
        let batch_size = *self.config.rolling.max_unavailable.get_ref();
        let nodes: Vec<NodeName> = self.nodes().into_iter().map(|(n, _)| n).collect();
        let weights: BTreeMap<NodeName, u32> = snapshot
            .nodes
            .iter()
            .filter_map(|n| n.weight.map(|w| (n.node.clone(), w)))
            .collect();
        let mut switch_ms: f64 = 0.0;
        let mut all_started = Vec::new();
        // A `Beside` runtime starts the new release next to the old one on a node that keeps
        // serving: draining it would only keep its sessions from ending.
        let beside = self.runtime.replacement() == Replacement::Beside;
        for batch in nodes.chunks(batch_size) {
            let serving: Vec<NodeName> = batch
                .iter()
                .filter(|n| {
                    snapshot
                        .nodes
                        .iter()
                        .any(|s| &s.node == *n && s.state.is_some())
                })
                .cloned()
                .collect();
            if beside && !serving.is_empty() {
                self.event(
                    EventKind::Progress,
                    None,
                    format!(
                        "{} keep serving: the new release starts beside the old one (no drain)",
                        names(&serving)
                    ),
                );
            } else if !serving.is_empty() {
                self.step(
                    "drain-start",
                    None,
                    format!("take {} out: draining", names(&serving)),
                );
                let draining: Vec<_> = serving
                    .iter()
                    .map(|n| (n.clone(), LbState::Draining, None))
                    .collect();
                self.balancer
                    .switch(&draining)
                    .await
                    .map_err(|e| format!("balancer: {e}"))?;
                self.drain(&serving).await?;
                let disabled: Vec<_> = serving
                    .iter()
                    .map(|n| (n.clone(), LbState::Disabled, None))
                    .collect();
                self.balancer
                    .switch(&disabled)
                    .await
                    .map_err(|e| format!("balancer: {e}"))?;
            }
            let mut started = Vec::new();
            for node in batch {
                self.register(node).await?;
                started.push(self.bring_up(release, node, beside).await?);
            }
            let healthy_at = Instant::now();
            self.step("enable", None, format!("enable {}", names(batch)));
            let enable: Vec<_> = batch
                .iter()
                .map(|n| (n.clone(), LbState::Active, weights.get(n).copied()))
                .collect();
            self.balancer
                .switch(&enable)
                .await
                .map_err(|e| format!("balancer: {e}"))?;
            switch_ms = switch_ms.max(fine_ms(healthy_at.elapsed()));
            all_started.extend(started);
        }
        self.verify(&all_started).await?;
        Ok((nodes, switch_ms))
    }

    /// Brings the service back to `snapshot`: old instances serve, new ones are drained and stopped.
    ///
    /// With a [`Replacement::Beside`] runtime, a node whose old release still runs next to the
    /// new one (the deploy failed before retiring it) is neither disabled nor drained: the new
    /// instance is stopped and the old one started again, which the runtime answers by adopting
    /// the release it still runs (Tomcat: the `CONTEXT##OLD` still deployed). A node whose old
    /// release was retired already is drained and restarted as with any other runtime.
    pub async fn restore(&self, snapshot: &Snapshot) -> Result<(), DeployError> {
        let live = self.live_instances().await?;
        let members = self.members().await?;
        let beside = self.runtime.replacement() == Replacement::Beside;
        let mut changes = Vec::new();
        let mut to_stop = Vec::new();
        for node in &snapshot.nodes {
            let now = live.get(&node.node);
            let was_serving = node.state == Some(LbState::Active) && node.version.is_some();
            if was_serving {
                let version = node.version.clone().expect("checked");
                let ok = now.is_some_and(|i| i.version == version);
                // The old release, as the same server's instance of that version.
                let old_beside = match now {
                    Some(new) if beside && !ok => {
                        let old = Instance {
                            version: version.clone(),
                            ..new.clone()
                        };
                        self.runtime.is_running(&old).await
                    }
                    _ => false,
                };
                if !ok {
                    if old_beside {
                        self.step(
                            "restore-beside",
                            Some(&node.node),
                            format!(
                                "{} still runs {version} beside {}: it keeps serving (no drain)",
                                node.node,
                                now.map_or("", |i| i.version.as_str())
                            ),
                        );
                    } else if members.contains_key(&node.node) {
                        self.balancer
                            .set_state(&node.node, LbState::Disabled)
                            .await
                            .map_err(|e| DeployError::Failed(format!("balancer: {e}")))?;
                        self.drain(std::slice::from_ref(&node.node))
                            .await
                            .map_err(DeployError::Failed)?;
                    }
                    let release = releases::load(&self.base, &version).ok_or_else(|| {
                        DeployError::Failed(format!("release {version} is gone from disk"))
                    })?;
                    if let Some(instance) = now {
                        self.step(
                            "stop",
                            Some(&node.node),
                            format!("stop {} {}", node.node, instance.version),
                        );
                        self.stop_instance(instance).await?;
                    }
                    let instance = self
                        .start_instance(&release, &node.node)
                        .await
                        .map_err(DeployError::Failed)?;
                    self.health_gate(&instance)
                        .await
                        .map_err(DeployError::Failed)?;
                }
                self.register(&node.node)
                    .await
                    .map_err(DeployError::Failed)?;
                changes.push((node.node.clone(), LbState::Active, node.weight));
            } else {
                if members.contains_key(&node.node) {
                    let state = match node.state {
                        Some(LbState::Active) | None => LbState::Disabled,
                        Some(other) => other,
                    };
                    changes.push((node.node.clone(), state, node.weight));
                }
                if let Some(instance) = now
                    && node.version.as_ref() != Some(&instance.version)
                {
                    to_stop.push(instance.clone());
                }
            }
        }
        self.step(
            "restore",
            None,
            "restore the balancer to its state before the deploy",
        );
        self.balancer
            .switch(&changes)
            .await
            .map_err(|e| DeployError::Failed(format!("balancer: {e}")))?;
        let stopping: Vec<NodeName> = to_stop.iter().map(|i| i.node.clone()).collect();
        self.drain(&stopping).await.map_err(DeployError::Failed)?;
        for instance in &to_stop {
            self.step(
                "stop",
                Some(&instance.node),
                format!("stop {} {}", instance.node, instance.version),
            );
            self.stop_instance(instance).await?;
        }
        if let Some(current) = &snapshot.current {
            self.store
                .set_releases(current, snapshot.previous.as_ref())?;
        }
        Ok(())
    }
}

fn names(nodes: &[NodeName]) -> String {
    nodes
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn traffic(
    after: &BTreeMap<NodeName, Member>,
    before: &BTreeMap<NodeName, Member>,
    nodes: &[NodeName],
) -> Traffic {
    let mut total = Traffic::default();
    for node in nodes {
        let Some(a) = after.get(node) else { continue };
        let b = before.get(node).map(|m| m.traffic).unwrap_or_default();
        let d = a.traffic.since(&b);
        total.requests += d.requests;
        total.errors += d.errors;
        total.latency_ms_sum += d.latency_ms_sum;
    }
    total
}

/// Weights that give `canaries` `share` percent of new requests next to `live`: the old weights
/// × (100 − share) against canary weights summing to the old total × share.
pub fn canary_weights(
    canaries: &[NodeName],
    live: &[NodeName],
    weights: &BTreeMap<NodeName, u32>,
    share: u32,
) -> Vec<(NodeName, LbState, Option<u32>)> {
    let weight_of = |n: &NodeName| weights.get(n).copied().unwrap_or(1);
    let live_total: u32 = live.iter().map(weight_of).sum();
    let canary_weight = (live_total * share / canaries.len().max(1) as u32).clamp(1, 10_000);
    live.iter()
        .map(|n| {
            let scaled = (weight_of(n) * (100 - share)).clamp(1, 10_000);
            (n.clone(), LbState::Active, Some(scaled))
        })
        .chain(
            canaries
                .iter()
                .map(|n| (n.clone(), LbState::Active, Some(canary_weight))),
        )
        .collect()
}

/// The canary verdict: `Err` says why it must not be promoted.
pub fn judge(
    canary: &Traffic,
    old: &Traffic,
    cfg: nonstop_config::service::CanaryConfig,
) -> Result<(), String> {
    if canary.requests < cfg.min_requests {
        return Err(format!(
            "canary got {} requests in its window, fewer than min_requests = {}",
            canary.requests, cfg.min_requests
        ));
    }
    let allowed = old.error_rate() + cfg.max_error_rate.get_ref();
    if canary.error_rate() > allowed {
        return Err(format!(
            "canary error rate {:.2}% exceeds the old release's {:.2}% by more than {:.2}%",
            canary.error_rate() * 100.0,
            old.error_rate() * 100.0,
            cfg.max_error_rate.get_ref() * 100.0
        ));
    }
    if let (Some(c), Some(o)) = (canary.mean_latency_ms(), old.mean_latency_ms()) {
        // A few milliseconds of slack: at sub-millisecond latencies a ratio is only noise.
        let limit = o * cfg.max_latency_ratio.get_ref() + 5.0;
        if c > limit {
            return Err(format!(
                "canary mean latency {c:.1}ms is above {limit:.1}ms ({}× the old release's {o:.1}ms)",
                cfg.max_latency_ratio.get_ref()
            ));
        }
    }
    Ok(())
}

/// Whether `ip:port` can be bound, waiting up to `grace` for it: an instance just stopped may
/// still be exiting (a stop hook that only signals it). A port something else holds would make
/// a health check lie, so a start refuses it (on a remote host, the agent checks).
pub async fn wait_port_free(ip: &str, port: u16, grace: Duration) -> bool {
    let since = Instant::now();
    loop {
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return true;
        }
        if since.elapsed() >= grace {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where a service's store lives: next to its releases.
pub fn store_path(base: &Path) -> PathBuf {
    base.join("nonstop.db")
}

/// `releases.dir` made absolute against the directory of the config file.
pub fn service_base(config: &ServiceConfig, config_file: &Path) -> PathBuf {
    let dir = config.releases.dir.get_ref();
    if dir.is_absolute() {
        dir.clone()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(requests: u64, errors: u64, latency: f64) -> Traffic {
        Traffic {
            requests,
            errors,
            latency_ms_sum: latency * requests as f64,
        }
    }

    #[test]
    fn canary_weights_give_the_configured_share() {
        let (a, b, c) = (
            NodeName::from("a"),
            NodeName::from("b"),
            NodeName::from("c"),
        );
        let one = canary_weights(
            std::slice::from_ref(&b),
            std::slice::from_ref(&a),
            &BTreeMap::new(),
            10,
        );
        assert_eq!(one[0], (a.clone(), LbState::Active, Some(90)));
        assert_eq!(one[1], (b.clone(), LbState::Active, Some(10)));
        let weights = BTreeMap::from([(a.clone(), 3), (b.clone(), 1)]);
        let two = canary_weights(std::slice::from_ref(&c), &[a, b], &weights, 20);
        let total: u32 = two.iter().filter_map(|(_, _, w)| *w).sum();
        let canary = two[2].2.unwrap();
        assert_eq!((canary * 100) / total, 20, "{two:?}");
    }

    #[test]
    fn canary_judgement() {
        let cfg = nonstop_config::service::CanaryConfig::default();
        assert!(judge(&t(100, 0, 2.0), &t(900, 0, 2.0), cfg.clone()).is_ok());
        let err = judge(&t(100, 10, 2.0), &t(900, 0, 2.0), cfg.clone()).unwrap_err();
        assert!(err.contains("error rate 10.00%"), "{err}");
        assert!(judge(&t(100, 1, 2.0), &t(900, 9, 2.0), cfg.clone()).is_ok());
        let err = judge(&t(100, 0, 200.0), &t(900, 0, 10.0), cfg.clone()).unwrap_err();
        assert!(err.contains("latency"), "{err}");
        let mut strict = cfg;
        strict.min_requests = 50;
        assert!(judge(&t(10, 0, 1.0), &t(900, 0, 1.0), strict).is_err());
    }
}
