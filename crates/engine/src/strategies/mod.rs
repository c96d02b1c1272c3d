//! Strategies turn (service spec, observed state, version) into a `Plan`. Planning changes
//! nothing; what it refuses (a port held by a stranger) is refused before any step runs.

mod blue_green;
mod canary;
mod rolling;

pub use canary::{canary_weights, judge};

use std::collections::BTreeMap;

use nonstop_config::service::Strategy;
use nonstop_ports::{Balancer, Instance, LbState, NodeName, Probe, Runtime, Version};

use crate::error::DeployError;
use crate::plan::{Plan, Step};
use crate::reconcile::Members;
use crate::{Engine, HookPoint};

/// What the planner looks at: the balancer's view, the live instances nonstop started, and
/// the releases the store records.
#[derive(Debug, Clone)]
pub struct Observed {
    pub members: Members,
    pub live: BTreeMap<NodeName, Instance>,
    pub warm_until: BTreeMap<NodeName, i64>,
    pub current: Option<Version>,
    pub previous: Option<Version>,
}

impl Observed {
    /// Nodes that serve now: active in the balancer with a live instance of ours.
    pub fn serving(&self, nodes: &[NodeName]) -> Vec<NodeName> {
        nodes
            .iter()
            .filter(|n| {
                self.members
                    .get(*n)
                    .is_some_and(|m| m.state == LbState::Active)
                    && self.live.contains_key(*n)
            })
            .cloned()
            .collect()
    }

    pub fn weight(&self, node: &NodeName) -> Option<u32> {
        self.members.get(node).map(|m| m.weight)
    }
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub async fn observe(&self) -> Result<Observed, DeployError> {
        let members = self
            .members()
            .await
            .map_err(|e| DeployError::Refused(e.message().to_string()))?;
        let mut live = BTreeMap::new();
        let mut warm_until = BTreeMap::new();
        for record in self.store.instances()? {
            if self.runtime.is_running(&record.instance).await {
                if let Some(until) = record.warm_until_ms {
                    warm_until.insert(record.instance.node.clone(), until);
                }
                live.insert(record.instance.node.clone(), record.instance);
            }
        }
        let (current, previous) = self.store.releases()?;
        Ok(Observed {
            members,
            live,
            warm_until,
            current,
            previous,
        })
    }

    /// The plan a deploy of `version` would run now; refused when a step could not run.
    pub async fn plan(
        &self,
        version: &Version,
        strategy: Option<Strategy>,
    ) -> Result<Plan, DeployError> {
        self.plan_with(version, strategy, false).await
    }

    /// [`Engine::plan`], with a pause before the switch (`--pause-before-switch`).
    pub async fn plan_with(
        &self,
        version: &Version,
        strategy: Option<Strategy>,
        pause_before_switch: bool,
    ) -> Result<Plan, DeployError> {
        let observed = self.observe().await?;
        let strategy = strategy.unwrap_or(self.spec.strategy);
        self.plan_from(version, strategy, observed, pause_before_switch)
            .await
    }

    pub(crate) async fn plan_from(
        &self,
        version: &Version,
        strategy: Strategy,
        mut observed: Observed,
        pause_before_switch: bool,
    ) -> Result<Plan, DeployError> {
        if pause_before_switch && strategy == Strategy::Rolling {
            return Err(DeployError::Refused(
                "a rolling deploy has no switch to pause before; use `rolling.pause_after_first_batch = true`".into(),
            ));
        }
        let mut steps = self.reap_steps(&mut observed);
        steps.extend(self.hook_step(HookPoint::BeforeDeploy, None));
        let mut notes = self
            .balancer
            .plan_notes(strategy.as_str(), self.spec.nodes.len());
        notes.extend(
            self.analyses
                .iter()
                .filter(|_| strategy == Strategy::Canary)
                .map(|a| format!("every canary step's verdict also asks {}", a.name())),
        );
        if !self.balancer.knows_health_of_disabled() {
            notes.push("this balancer judges a node's health once it is active: the engine waits for it before taking the old one out".into());
        }
        steps.extend(match strategy {
            Strategy::BlueGreen => {
                self.blue_green(version, &observed, false, pause_before_switch)
                    .await?
            }
            Strategy::Canary => {
                self.blue_green(version, &observed, true, pause_before_switch)
                    .await?
            }
            Strategy::Rolling => self.rolling(version, &observed),
        });
        if observed.current.as_ref() != Some(version) {
            self.place_migration(version, &mut steps);
        }
        steps.extend(self.hook_step(HookPoint::AfterDeploy, None));
        self.check_ports(&steps, &observed).await?;
        Ok(Plan {
            service: self.service.clone(),
            strategy,
            version: version.clone(),
            from: observed.current.clone(),
            steps,
            notes,
        })
    }

    /// The steps that give `node` the release `version`: register it, its `after_install`
    /// hook, then reuse an instance that runs it already, or — `beside` — start it next to the
    /// old one and retire that after the gate, or stop what runs there (`why`) and start it.
    fn bring_up(
        &self,
        node: &NodeName,
        version: &Version,
        observed: &Observed,
        why: &str,
        beside: bool,
    ) -> Vec<Step> {
        let mut steps = vec![Step::Register {
            node: node.clone(),
            addr: self.spec.node(node).map(|n| n.addr()).unwrap_or_default(),
        }];
        steps.extend(self.hook_step(HookPoint::AfterInstall, Some(node)));
        let gate = Step::Gate {
            node: node.clone(),
            version: version.clone(),
        };
        match observed.live.get(node) {
            Some(i) if &i.version == version => {
                steps.push(Step::Reuse {
                    node: node.clone(),
                    version: version.clone(),
                });
                steps.push(gate);
            }
            Some(old) if beside => {
                steps.push(Step::StartBeside {
                    node: node.clone(),
                    version: version.clone(),
                    old: old.version.clone(),
                });
                steps.push(gate);
                steps.push(Step::Retire {
                    node: node.clone(),
                    version: old.version.clone(),
                });
            }
            running => {
                if let Some(old) = running {
                    steps.push(Step::Stop {
                        node: node.clone(),
                        version: old.version.clone(),
                        why: why.into(),
                        keep_stopped: false,
                    });
                }
                steps.push(Step::Start {
                    node: node.clone(),
                    version: version.clone(),
                    port: self.spec.port_of(node),
                });
                steps.push(gate);
            }
        }
        steps
    }

    /// Slots kept warm past their `keep_warm` that the balancer sends nothing are stopped first.
    fn reap_steps(&self, observed: &mut Observed) -> Vec<Step> {
        let now = nonstop_store::now_ms();
        let mut steps = Vec::new();
        for (node, until) in observed.warm_until.clone() {
            let idle = observed
                .members
                .get(&node)
                .is_none_or(|m| m.state == LbState::Disabled && m.in_flight == 0);
            if until <= now
                && idle
                && let Some(instance) = observed.live.remove(&node)
            {
                observed.warm_until.remove(&node);
                steps.push(Step::Stop {
                    node,
                    version: instance.version,
                    why: "kept warm until its keep_warm ran out".into(),
                    keep_stopped: true,
                });
            }
        }
        steps
    }

    /// A start on a port some other process holds is refused now, before anything changes.
    async fn check_ports(&self, steps: &[Step], observed: &Observed) -> Result<(), DeployError> {
        if !self.checks_ports() {
            return Ok(());
        }
        for step in steps {
            if let Step::Start { node, port, .. } = step
                && !observed.live.contains_key(node)
                && !self.runtime.port_free(&self.spec.ip_of(node), *port).await
            {
                return Err(DeployError::Refused(
                    match self.runtime.foreign_holder(node, *port) {
                        Some(holder) => format!(
                            "port {port} of {node} is taken by {}, which nonstop did not start (nothing was changed). nonstop does not adopt a server it did not start: take {node} out of the balancer, stop it with `{}`, then deploy again",
                            holder.what, holder.stop
                        ),
                        None => format!(
                            "port {port} of {node} is taken by a process nonstop did not start (nothing was changed). nonstop does not adopt a server it did not start: take {node} out of the balancer, stop that process gracefully, then deploy again; or give {node} another port"
                        ),
                    },
                ));
            }
        }
        Ok(())
    }
}
