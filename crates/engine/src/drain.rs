//! Draining: wait until nodes taken out have nothing in flight (and, with `sessions`, until
//! the timeout), and say which counter ended it.

use nonstop_ports::{Balancer, NodeName, Probe, Runtime};
use tokio::time::{Duration, Instant};

use crate::Engine;
use crate::error::StepError;
use crate::executor::Run;

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(crate) async fn drain(
        &self,
        run: &mut Run,
        nodes: &[NodeName],
    ) -> Result<String, StepError> {
        let (live, known) = self.liveness(run).await;
        // A node whose instance is dead has nothing left to finish.
        let nodes: Vec<&NodeName> = nodes
            .iter()
            .filter(|n| !known.contains(*n) || live.contains_key(*n))
            .collect();
        if nodes.is_empty() {
            return Ok("nothing to drain (no live instance)".into());
        }
        let nodes: Vec<NodeName> = nodes.into_iter().cloned().collect();
        let started = Instant::now();
        loop {
            // The drain's own look at the balancer also notices someone else's change.
            let members = if run.undoing {
                self.members().await?
            } else {
                self.reconcile(run).await?
            };
            let in_flight: i64 = nodes
                .iter()
                .filter_map(|n| members.get(n))
                .map(|m| m.in_flight.max(0))
                .sum();
            let timed_out = started.elapsed() >= self.spec.drain_timeout;
            if in_flight == 0 && !self.spec.drain_sessions {
                return Ok(format!(
                    "drain ended on in-flight = 0 after {}ms",
                    started.elapsed().as_millis()
                ));
            }
            if timed_out {
                return Ok(if in_flight == 0 {
                    format!(
                        "drain ended on its timeout ({}, sessions = true) with nothing in flight",
                        humantime::format_duration(self.spec.drain_timeout)
                    )
                } else {
                    format!(
                        "drain ended on its timeout ({}) with {in_flight} request(s) still in flight",
                        humantime::format_duration(self.spec.drain_timeout)
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
