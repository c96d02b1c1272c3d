//! Rolling: a batch of at most `max_unavailable` nodes at a time is taken out, drained,
//! replaced, gated, made eligible and enabled; nodes already out go first.

use nonstop_ports::{Balancer, LbState, NodeName, Probe, Replacement, Runtime, Version};

use super::Observed;
use crate::plan::{Change, PauseWhy, SetPurpose, Step};
use crate::{Engine, HookPoint};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(super) fn rolling(&self, version: &Version, observed: &Observed) -> Vec<Step> {
        let mut nodes = self.spec.names();
        // Nodes out already (dead, disabled) first: replacing them takes nothing more out.
        nodes.sort_by_key(|n| {
            observed.members.get(n).is_some_and(|m| {
                m.state == LbState::Active && m.healthy && observed.live.contains_key(n)
            })
        });
        // A `Beside` runtime starts the new release next to the old one on a node that keeps
        // serving: draining it would only keep its sessions from ending.
        let beside = self.runtime.replacement() == Replacement::Beside;
        let mut steps = Vec::new();
        let batches = nodes.chunks(self.spec.max_unavailable).count();
        for (b, batch) in nodes.chunks(self.spec.max_unavailable).enumerate() {
            let serving: Vec<NodeName> = batch
                .iter()
                .filter(|n| observed.members.contains_key(*n))
                .cloned()
                .collect();
            if !beside && !serving.is_empty() {
                let set = |purpose, state| Step::Set {
                    purpose,
                    changes: serving
                        .iter()
                        .map(|n| Change::new(n, state, None))
                        .collect(),
                };
                steps.push(set(SetPurpose::TakeOut, LbState::Draining));
                steps.push(Step::Drain {
                    nodes: serving.clone(),
                });
                steps.push(set(SetPurpose::Disable, LbState::Disabled));
            }
            for node in batch {
                steps.extend(self.bring_up(node, version, observed, "replace it", beside));
            }
            steps.push(Step::Eligible {
                nodes: batch.to_vec(),
            });
            for node in batch {
                steps.extend(self.hook_step(HookPoint::BeforeTraffic, Some(node)));
            }
            steps.push(Step::Set {
                purpose: SetPurpose::Enable,
                changes: batch
                    .iter()
                    .map(|n| Change::new(n, LbState::Active, observed.weight(n)))
                    .collect(),
            });
            for node in batch {
                steps.extend(self.hook_step(HookPoint::AfterTraffic, Some(node)));
            }
            // Day one has no old release to compare the first batch with.
            let old_serves = !observed.live.is_empty();
            if b == 0 && batches > 1 && old_serves && self.spec.pause_after_first_batch {
                steps.push(Step::Pause {
                    why: PauseWhy::AfterFirstBatch,
                    limit: self.spec.pause_limit,
                });
            }
        }
        if !self.spec.verify.is_zero() {
            steps.push(Step::Verify {
                nodes,
                window: self.spec.verify,
            });
        }
        steps
    }
}
