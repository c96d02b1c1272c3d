//! The engine's per-request routing rules: the `Preview` step (testers reach the new slots
//! before the switch) and maintenance mode, set through the service's balancer.

use nonstop_ports::{Balancer, Maintenance, NodeName, Preview, Probe, Runtime};

use crate::Engine;
use crate::error::{DeployError, StepError};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// The `Preview` step: points the service's preview header/cookie at `nodes` (none: clears).
    pub(crate) async fn preview(&self, nodes: &[NodeName]) -> Result<String, StepError> {
        let Some(config) = self.config.preview.as_ref().map(|p| p.get_ref()) else {
            return Ok("no preview configured".into());
        };
        if nodes.is_empty() {
            self.balancer.set_preview(None).await?;
            return Ok("targeted preview cleared".into());
        }
        let preview = Preview {
            nodes: nodes.to_vec(),
            header: config.header.get_ref().clone(),
            cookie: config.cookie.get_ref().clone(),
        };
        self.balancer.set_preview(Some(&preview)).await?;
        Ok(format!(
            "`{}: always` or cookie `{}=always` reaches {}; `never` stays on the stable release",
            preview.header,
            preview.cookie,
            nodes
                .iter()
                .map(NodeName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Turns maintenance mode on (`Some`) or off for the whole service. It changes no member
    /// state, so it needs no deploy lock: maintenance around a deploy is what it is for.
    pub async fn set_maintenance(
        &self,
        maintenance: Option<&Maintenance>,
    ) -> Result<String, DeployError> {
        self.balancer
            .set_maintenance(maintenance)
            .await
            .map_err(|e| DeployError::Refused(format!("maintenance mode: {e}")))?;
        Ok(match maintenance {
            Some(m) if m.allow.is_empty() => format!(
                "{}: maintenance on: every request gets 503 (Retry-After: {}s)",
                self.service, m.retry_after_s
            ),
            Some(m) => format!(
                "{}: maintenance on: 503 (Retry-After: {}s) for all but {}",
                self.service,
                m.retry_after_s,
                m.allow
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!(
                "{}: maintenance off: requests reach the backends",
                self.service
            ),
        })
    }
}
