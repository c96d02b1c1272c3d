//! In-process fakes of the engine's ports for logic tests with tokio's paused clock: one
//! `World` (members, instances, a health view, operator actions, scripted faults) seen
//! through `FakeBalancer`, `FakeRuntime` and `FakeProbe`.
//!
//! The balancer records every state its mutations pass through, judged in its own view, so a
//! test can assert the engine never broke an invariant at any instant.

mod balancer;
mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use nonstop_ports::{LbState, NodeName, Version};
use tokio::time::{Duration, Instant};

pub use balancer::FakeBalancer;
pub use runtime::{FakeProbe, FakeRuntime};

#[derive(Debug, Clone)]
pub struct FakeMember {
    pub addr: String,
    pub port: u16,
    pub state: LbState,
    pub weight: u32,
    /// Marked up by the engine (`mark_healthy`) since the instance on its port started.
    pub marked_at: Option<Instant>,
    pub requests: u64,
}

#[derive(Debug, Clone)]
pub struct FakeInstance {
    pub pid: i32,
    pub node: NodeName,
    pub version: Version,
    pub port: u16,
    pub release_dir: std::path::PathBuf,
    pub started_at: Instant,
    pub alive: bool,
}

/// One engine mutation as the balancer saw it: eligible and out members right after.
#[derive(Debug, Clone)]
pub struct Moment {
    pub call: String,
    pub eligible: Vec<NodeName>,
    pub out: Vec<NodeName>,
    pub states: Vec<(NodeName, LbState)>,
}

#[derive(Debug, Default)]
pub struct WorldState {
    pub members: BTreeMap<NodeName, FakeMember>,
    pub instances: Vec<FakeInstance>,
    /// Ports a process nonstop did not start listens on.
    pub strangers: BTreeSet<u16>,
    /// With pool health checks: how long a started instance takes to be seen up by the
    /// balancer's own checker (rise × interval); `None`: no checks, every member "healthy".
    pub pool_rise: Option<Duration>,
    /// Health endpoints failing until the given instant (by port): a flap.
    pub flapping: BTreeMap<u16, Instant>,
    /// Versions whose health check never passes.
    pub unhealthy: BTreeSet<Version>,
    /// The next mutating balancer call fails (then the flag clears).
    pub fail_next_mutation: bool,
    /// A switch zeroes the request counts of the members it makes active (mod_jk's jkstatus
    /// `cmd=reset`, which nonstop sends as it enables a member).
    pub resets_counts_on_switch: bool,
    /// `start` spawns and then never returns (the deploy is killed between spawn and record).
    pub hang_after_spawn: bool,
    pub history: Vec<Moment>,
    /// Engine mutations that broke an invariant: the last eligible member gone, or more than
    /// `max_unavailable` out where fewer were out before.
    pub violations: Vec<String>,
    pub max_unavailable: usize,
    pub service_nodes: Vec<NodeName>,
    pub next_pid: i32,
    pub reloads: usize,
    /// The targeted preview the balancer holds, and every one it was given (`None`: cleared).
    pub preview: Option<nonstop_ports::Preview>,
    pub previews: Vec<Option<Vec<NodeName>>>,
    /// `Some`: the runtime counts sessions (`Runtime::sessions`), one open on a port until its
    /// instant; `None`: it cannot count them.
    pub sessions: Option<BTreeMap<u16, Instant>>,
}

#[derive(Clone, Default)]
pub struct World(Arc<Mutex<WorldState>>);

impl World {
    pub fn new(nodes: &[&str], max_unavailable: usize) -> World {
        let world = World::default();
        {
            let mut w = world.lock();
            w.service_nodes = nodes.iter().map(|n| NodeName::from(*n)).collect();
            w.max_unavailable = max_unavailable;
            w.next_pid = 1000;
        }
        world
    }

    pub fn lock(&self) -> MutexGuard<'_, WorldState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn balancer(&self) -> FakeBalancer {
        FakeBalancer(self.clone())
    }

    pub fn runtime(&self) -> FakeRuntime {
        FakeRuntime(self.clone())
    }

    pub fn probe(&self) -> FakeProbe {
        FakeProbe(self.clone())
    }

    /// An operator's `nonstop lb drain|disable` by hand (not an engine mutation).
    pub fn operator_sets(&self, node: &str, state: LbState) {
        if let Some(m) = self.lock().members.get_mut(&NodeName::from(node)) {
            m.state = state;
        }
    }

    /// The instance on `node` dies.
    pub fn crash(&self, node: &str) {
        for i in self.lock().instances.iter_mut() {
            if i.node.as_str() == node {
                i.alive = false;
            }
        }
    }

    /// `node`'s health endpoint fails for `d` (the probe and the balancer's checker both see it).
    pub fn flap(&self, node: &str, d: Duration) {
        let mut w = self.lock();
        if let Some(port) = w
            .instances
            .iter()
            .find(|i| i.node.as_str() == node && i.alive)
            .map(|i| i.port)
        {
            w.flapping.insert(port, Instant::now() + d);
        }
    }

    /// Live instances as (node, version).
    pub fn running(&self) -> Vec<(String, String)> {
        let w = self.lock();
        let mut all: Vec<(String, String)> = w
            .instances
            .iter()
            .filter(|i| i.alive)
            .map(|i| (i.node.to_string(), i.version.to_string()))
            .collect();
        all.sort();
        all
    }

    /// Versions behind the members the balancer would send new requests to.
    pub fn serving_versions(&self) -> BTreeSet<String> {
        let w = self.lock();
        w.eligible()
            .iter()
            .filter_map(|n| w.instance_on(w.members[n].port))
            .map(|i| i.version.to_string())
            .collect()
    }
}

impl WorldState {
    pub fn instance_on(&self, port: u16) -> Option<&FakeInstance> {
        self.instances.iter().find(|i| i.alive && i.port == port)
    }

    fn health_ok(&self, port: u16) -> bool {
        let now = Instant::now();
        let Some(instance) = self.instance_on(port) else {
            return self.strangers.contains(&port);
        };
        !self.unhealthy.contains(&instance.version)
            && self.flapping.get(&port).is_none_or(|until| *until <= now)
    }

    /// The balancer's own health view of `node`.
    pub fn healthy(&self, node: &NodeName) -> bool {
        let Some(m) = self.members.get(node) else {
            return false;
        };
        let Some(rise) = self.pool_rise else {
            return true;
        };
        if !self.health_ok(m.port) {
            return false;
        }
        let Some(instance) = self.instance_on(m.port) else {
            return true; // a stranger that answers
        };
        let since = instance.started_at.max(
            self.flapping
                .get(&m.port)
                .copied()
                .unwrap_or(instance.started_at),
        );
        m.marked_at.is_some_and(|at| at >= instance.started_at) || Instant::now() >= since + rise
    }

    /// Members that get new requests and would answer them.
    pub fn eligible(&self) -> Vec<NodeName> {
        self.members
            .iter()
            .filter(|(n, m)| {
                m.state == LbState::Active
                    && self.healthy(n)
                    && (self.instance_on(m.port).is_some() || self.strangers.contains(&m.port))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn out(&self) -> Vec<NodeName> {
        let eligible = self.eligible();
        self.service_nodes
            .iter()
            .filter(|n| self.members.contains_key(*n) && !eligible.contains(n))
            .cloned()
            .collect()
    }

    /// Records an engine mutation and judges it against the moment before.
    fn record(&mut self, call: String, before_eligible: usize, before_out: usize) {
        let eligible = self.eligible();
        let out = self.out();
        if before_eligible > 0 && eligible.is_empty() {
            self.violations
                .push(format!("{call}: left no eligible backend"));
        }
        if out.len() > self.max_unavailable && out.len() > before_out {
            self.violations.push(format!(
                "{call}: {} out ({out:?}), more than max_unavailable = {}",
                out.len(),
                self.max_unavailable
            ));
        }
        let states = self
            .members
            .iter()
            .map(|(n, m)| (n.clone(), m.state))
            .collect();
        self.history.push(Moment {
            call,
            eligible,
            out,
            states,
        });
    }
}
