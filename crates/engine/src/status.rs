//! What `nonstop status` and the console show: the releases the store records next to what
//! really runs and serves now (process alive, the balancer's own view, an unfinished deploy).

use nonstop_ports::{Balancer, NodeName, Probe, Runtime, Version};
use serde::Serialize;

use crate::Engine;

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: NodeName,
    pub port: u16,
    pub version: Option<Version>,
    pub pid: Option<i32>,
    /// `running`, `exited`, `none`, or `foreign` (the port is held by a process nonstop did not start).
    pub process: &'static str,
    pub warm_until: Option<String>,
    pub log: Option<std::path::PathBuf>,
    pub balancer: Option<String>,
    pub weight: Option<u32>,
    pub in_flight: Option<i64>,
    /// The engine's own check on the node's port: `up`, `down: …` or `-`.
    pub health: String,
    /// The balancer's own health view of the member.
    pub balancer_healthy: Option<bool>,
    /// Whether the balancer sends it new requests and it would answer them.
    pub eligible: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    /// The release the store records as deployed, and the one before it.
    pub current: Option<Version>,
    pub previous: Option<Version>,
    /// Versions the eligible nodes really run now (empty: nothing serves).
    pub serving: Vec<Version>,
    pub balancer_error: Option<String>,
    pub nodes: Vec<NodeStatus>,
    pub unfinished: Option<String>,
    /// The deploy that waits for `nonstop promote` or `abort`, if one does.
    pub paused: Option<crate::Paused>,
    /// The running deploy's canary steps with their numbers.
    pub canary: Option<crate::CanaryView>,
    /// Maintenance mode, when the balancer has it on.
    pub maintenance: Option<nonstop_ports::Maintenance>,
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub async fn status(&self) -> ServiceStatus {
        let (current, previous) = self.store.releases().unwrap_or_default();
        let (members, balancer_error) = match self.members().await {
            Ok(m) => (m, None),
            Err(e) => (Default::default(), Some(e.message().to_string())),
        };
        let records = self.store.instances().unwrap_or_default();
        let mut nodes = Vec::new();
        let mut serving = Vec::new();
        for spec in &self.spec.nodes {
            let record = records.iter().find(|r| r.instance.node == spec.name);
            let alive = match record {
                Some(r) => self.runtime.is_running(&r.instance).await,
                None => false,
            };
            let foreign = record.is_none()
                && self.checks_ports()
                && !self.runtime.port_free(&spec.ip, spec.port).await;
            let health = if alive || foreign {
                match self.probe.check(&spec.ip, spec.port).await {
                    Ok(()) => "up".to_string(),
                    Err(e) => format!("down: {e}"),
                }
            } else {
                "-".into()
            };
            let member = members.get(&spec.name);
            let eligible = member.is_some_and(|m| {
                m.state == nonstop_ports::LbState::Active && m.healthy && (alive || foreign)
            });
            if eligible
                && let Some(r) = record
                && !serving.contains(&r.instance.version)
            {
                serving.push(r.instance.version.clone());
            }
            nodes.push(NodeStatus {
                node: spec.name.clone(),
                port: spec.port,
                version: record.map(|r| r.instance.version.clone()),
                pid: record.map(|r| r.instance.pid),
                process: match (record, alive) {
                    (None, _) if foreign => "foreign",
                    (None, _) => "none",
                    (Some(_), true) => "running",
                    (Some(_), false) => "exited",
                },
                warm_until: record
                    .and_then(|r| r.warm_until_ms)
                    .map(nonstop_store::format_ms),
                log: record.map(|r| r.instance.log.clone()),
                balancer: member.map(|m| m.state.to_string()),
                weight: member.map(|m| m.weight),
                in_flight: member.map(|m| m.in_flight),
                health,
                balancer_healthy: member.map(|m| m.healthy),
                eligible,
            });
        }
        let paused = self.paused().ok().flatten();
        let unfinished = self.store.unfinished().ok().flatten().map(|d| {
            if paused.as_ref().is_some_and(|p| p.deploy == d.id) {
                format!(
                    "deploy #{} of {} by {} (pid {}) is paused: `nonstop promote {s}` goes on, `nonstop abort {s}` rolls back",
                    d.id,
                    d.version,
                    d.holder,
                    d.pid,
                    s = self.service
                )
            } else if nonstop_store::pid_alive(d.pid) {
                format!(
                    "deploy #{} of {} by {} (pid {}) is in progress",
                    d.id, d.version, d.holder, d.pid
                )
            } else {
                format!(
                    "deploy #{} of {} by {} (pid {}) was interrupted; the next deploy or rollback undoes it",
                    d.id, d.version, d.holder, d.pid
                )
            }
        });
        ServiceStatus {
            service: self.service.clone(),
            current,
            previous,
            serving,
            balancer_error,
            nodes,
            unfinished,
            paused,
            canary: self
                .canary_view()
                .ok()
                .flatten()
                .filter(|c| c.outcome == "running"),
            // A balancer without maintenance mode reports none; its error is in balancer_error.
            maintenance: self.balancer.maintenance().await.ok().flatten(),
        }
    }
}
