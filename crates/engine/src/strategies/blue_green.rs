//! Blue-green (and canary, which is blue-green with a watched share first): start the idle
//! slots, gate them, make them eligible, switch in one step, drain, verify, retire the old.

use nonstop_ports::{Balancer, LbState, NodeName, Probe, Runtime, Version};

use super::Observed;
use crate::error::DeployError;
use crate::plan::{Change, PauseWhy, SetPurpose, Step};
use crate::spec::CanaryPhase;
use crate::{Engine, HookPoint};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(super) async fn blue_green(
        &self,
        version: &Version,
        observed: &Observed,
        canary: bool,
        pause_before_switch: bool,
    ) -> Result<Vec<Step>, DeployError> {
        let all = self.spec.names();
        let live = observed.serving(&all);
        let targets = if live.is_empty() {
            self.first_slots(version, observed).await
        } else {
            all.iter().filter(|n| !live.contains(n)).cloned().collect()
        };
        if targets.is_empty() {
            return Err(DeployError::Refused(
                "every slot is live: blue-green needs an idle slot (add a node)".into(),
            ));
        }
        let mut steps = Vec::new();
        for node in &targets {
            steps.extend(self.bring_up(node, version, observed, "free the idle slot", false));
        }
        steps.push(Step::Eligible {
            nodes: targets.clone(),
        });
        let preview = self.config.preview.is_some() && !live.is_empty();
        if preview {
            steps.push(Step::Preview {
                nodes: targets.clone(),
            });
        }
        let pause = |why| Step::Pause {
            why,
            limit: self.spec.pause_limit,
        };
        if pause_before_switch {
            steps.push(pause(PauseWhy::BeforeSwitch));
        }
        if canary && !live.is_empty() {
            for phase in &self.spec.canary.steps {
                steps.push(match *phase {
                    CanaryPhase::Watch { share, window } => Step::Canary {
                        nodes: targets.clone(),
                        live: live.clone(),
                        share,
                        window,
                    },
                    CanaryPhase::Pause => pause(PauseWhy::CanaryStep),
                });
            }
        }
        let base_weight = live
            .iter()
            .filter_map(|n| observed.weight(n))
            .max()
            .unwrap_or(1);
        // Everything else that gets traffic now (a stale node, day one's hand-started release).
        let others: Vec<NodeName> = all
            .iter()
            .filter(|n| {
                !targets.contains(n)
                    && observed
                        .members
                        .get(*n)
                        .is_some_and(|m| m.state == LbState::Active)
            })
            .cloned()
            .collect();
        let mut switch: Vec<Change> = targets
            .iter()
            .map(|n| Change::new(n, LbState::Active, Some(base_weight)))
            .collect();
        switch.extend(
            others
                .iter()
                .map(|n| Change::new(n, LbState::Draining, observed.weight(n))),
        );
        for node in &targets {
            steps.extend(self.hook_step(HookPoint::BeforeTraffic, Some(node)));
        }
        steps.push(Step::Set {
            purpose: SetPurpose::Switch,
            changes: switch,
        });
        if preview {
            steps.push(Step::Preview { nodes: Vec::new() });
        }
        for node in &targets {
            steps.extend(self.hook_step(HookPoint::AfterTraffic, Some(node)));
        }
        if !others.is_empty() {
            steps.push(Step::Drain {
                nodes: others.clone(),
            });
        }
        // The old slots stay draining through verify: sessions finish, and a balancer that falls
        // back to draining backends has somewhere to send a retry.
        if !self.spec.verify.is_zero() {
            steps.push(Step::Verify {
                nodes: targets.clone(),
                window: self.spec.verify,
            });
        }
        if !others.is_empty() {
            steps.push(Step::Set {
                purpose: SetPurpose::Disable,
                changes: others
                    .iter()
                    .map(|n| Change::new(n, LbState::Disabled, None))
                    .collect(),
            });
        }
        for node in &others {
            let Some(old) = observed.live.get(node) else {
                continue;
            };
            if self.spec.keep_warm.is_zero() {
                steps.push(Step::Stop {
                    node: node.clone(),
                    version: old.version.clone(),
                    why: "keep_warm = 0s".into(),
                    keep_stopped: false,
                });
            } else {
                steps.push(Step::KeepWarm {
                    node: node.clone(),
                    until_ms: Some(
                        nonstop_store::now_ms() + self.spec.keep_warm.as_millis() as i64,
                    ),
                });
            }
        }
        Ok(steps)
    }

    /// The slots of a blue-green deploy when nothing of nonstop's serves: slots still running
    /// `version` first (a rollback after a crash switches to the warm slot, instantly), then
    /// half of the nodes, passing over a port a process nonstop did not start holds — on day one
    /// over an existing setup that process is the release serving now, and keeps serving until
    /// the switch (docs/balancers/nginx.md).
    async fn first_slots(&self, version: &Version, observed: &Observed) -> Vec<NodeName> {
        let all = self.spec.names();
        let half = all.len().div_ceil(2);
        let warm: Vec<NodeName> = all
            .iter()
            .filter(|n| observed.live.get(*n).is_some_and(|i| &i.version == version))
            .cloned()
            .collect();
        if !warm.is_empty() {
            return warm.into_iter().take(half).collect();
        }
        if !self.checks_ports() {
            return all[..half].to_vec();
        }
        let mut usable = Vec::new();
        for node in &all {
            if observed.live.contains_key(node)
                || self
                    .runtime
                    .port_free(&self.spec.ip_of(node), self.spec.port_of(node))
                    .await
            {
                usable.push(node.clone());
            }
        }
        if usable.is_empty() {
            return all[..half].to_vec();
        }
        usable.into_iter().take(half).collect()
    }
}
