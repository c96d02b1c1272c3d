//! An operator's drain or enable of one node, through the engine: under the deploy lock and
//! the same invariants a deploy keeps (never the last eligible backend, never more than
//! `max_unavailable` out with rolling).

use nonstop_ports::{Balancer, LbState, NodeName, Probe, Runtime, Version};

use crate::Engine;
use crate::error::DeployError;
use crate::executor::Run;
use crate::plan::Change;
use crate::releases::Release;

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Sets `node`'s balancer state, refused while a deploy runs or when it would break an
    /// invariant; says what it did.
    pub async fn set_node_state(
        &mut self,
        node: &NodeName,
        state: LbState,
    ) -> Result<String, DeployError> {
        if self.spec.node(node).is_none() {
            return Err(DeployError::Refused(format!(
                "service `{}` has no node `{node}`",
                self.service
            )));
        }
        if let Some(stale) = self.store.acquire(&self.holder)? {
            self.unlock();
            return Err(DeployError::Refused(format!(
                "deploy #{} of {} was interrupted; run `nonstop deploy` or `nonstop rollback` to finish undoing it first",
                stale.id, stale.version
            )));
        }
        let result = self.set_node_locked(node, state).await;
        self.unlock();
        result
    }

    async fn set_node_locked(
        &self,
        node: &NodeName,
        state: LbState,
    ) -> Result<String, DeployError> {
        let members = self
            .members()
            .await
            .map_err(|e| DeployError::Environment(e.message().to_string()))?;
        if !members.contains_key(node) {
            return Err(DeployError::Refused(format!(
                "{node} is not a member of the balancer yet (it gets one at its first deploy)"
            )));
        }
        let run = Run::new(0, placeholder_release(), &members);
        let changes = [Change::new(node, state, None)];
        if let Some((why, _)) = self.invariant_violation(&run, &members, &changes).await {
            return Err(DeployError::Refused(format!(
                "refused to set {node} {state}: {why}"
            )));
        }
        self.balancer
            .switch(&[(node.clone(), state, None)])
            .await
            .map_err(|e| DeployError::Failed(format!("balancer: {e}")))?;
        Ok(format!("{node} is {state}"))
    }
}

/// The invariant checks need a deploy's running state; an operator's change has none.
fn placeholder_release() -> Release {
    Release {
        version: Version::from("-"),
        artifact_name: String::new(),
        checksum: String::new(),
        env: Default::default(),
        created_ms: 0,
        dir: Default::default(),
    }
}
