//! Draining: wait until nodes taken out have nothing in flight (and, with `sessions`, until
//! their runtime counts no open session, or the timeout), and say which signal ended it.

use nonstop_ports::{Balancer, NodeName, Probe, Runtime, Sessions};
use tokio::time::{Duration, Instant};

use crate::Engine;
use crate::error::StepError;
use crate::executor::Run;

/// How often the runtime is asked for sessions (a Tomcat manager call, not a memory read).
const SESSION_POLL: Duration = Duration::from_millis(250);

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(crate) async fn drain(
        &self,
        run: &mut Run,
        nodes: &[NodeName],
    ) -> Result<String, StepError> {
        let (live, known) = self.liveness(run).await;
        // A node whose instance is dead has nothing left to finish; so has one nonstop never
        // started where nothing listens (a first deploy).
        let mut serving = Vec::new();
        for node in nodes {
            let listened = match self.spec.nodes.iter().find(|n| &n.name == node) {
                Some(n) => !self.runtime.port_free(&n.ip, n.port).await,
                None => true,
            };
            if live.contains_key(node) || (!known.contains(node) && listened) {
                serving.push(node.clone());
            }
        }
        if serving.is_empty() {
            return Ok("nothing to drain (no live instance)".into());
        }
        let nodes = serving;
        let started = Instant::now();
        let ms = |started: Instant| started.elapsed().as_millis();
        let mut sessions: Option<Sessions> = None;
        let mut asked: Option<Instant> = None;
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
            if in_flight == 0 && !self.spec.drain_sessions {
                return Ok(format!(
                    "drain ended on in-flight = 0 after {}ms",
                    ms(started)
                ));
            }
            if in_flight == 0 && asked.is_none_or(|at| at.elapsed() >= SESSION_POLL) {
                asked = Some(Instant::now());
                sessions = self.open_sessions(&nodes).await;
                if let Some(s) = &sessions
                    && s.open == 0
                {
                    return Ok(format!(
                        "drain ended on sessions = 0 ({}) and in-flight = 0 after {}ms",
                        s.source,
                        ms(started)
                    ));
                }
            }
            if started.elapsed() >= self.spec.drain_timeout {
                let timeout = humantime::format_duration(self.spec.drain_timeout);
                return Ok(match (in_flight, &sessions) {
                    (0, Some(s)) => format!(
                        "drain ended on its timeout ({timeout}) with {} session(s) still open ({}) and nothing in flight",
                        s.open, s.source
                    ),
                    (0, None) => format!(
                        "drain ended on its timeout ({timeout}, sessions = true; the runtime cannot count sessions) with nothing in flight"
                    ),
                    _ => format!(
                        "drain ended on its timeout ({timeout}) with {in_flight} request(s) still in flight"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The open sessions of all `nodes` together, if the runtime counts every one of them.
    async fn open_sessions(&self, nodes: &[NodeName]) -> Option<Sessions> {
        let mut total = Sessions {
            open: 0,
            source: String::new(),
        };
        for node in nodes {
            let port = self.spec.nodes.iter().find(|n| &n.name == node)?.port;
            let counted = self.runtime.sessions(node, port).await?;
            total.open += counted.open;
            if total.source.is_empty() {
                total.source = counted.source;
            }
        }
        Some(total)
    }
}
