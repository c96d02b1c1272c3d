//! Waiting for health: the health gate on an instance's own address, the balancer's own
//! eligibility of a node, and the verify window after a node takes traffic.

use nonstop_ports::{Balancer, Instance, NodeName, Probe, Runtime};
use tokio::time::{Duration, Instant};

use crate::error::StepError;
use crate::executor::Run;
use crate::{Engine, EventKind};

/// How often a long step (verify, drain) looks for someone else's change to the balancer.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// The last lines of a log, to quote why an instance died.
pub(crate) fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let from = text.len().saturating_sub(16 * 1024);
    let text = String::from_utf8_lossy(&text[from..]);
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(crate) fn died(&self, instance: &Instance, when: &str) -> StepError {
        let tail = log_tail(&instance.log, 3);
        StepError::Failed(format!(
            "{} {} {when} (log {}{})",
            instance.node,
            instance.version,
            instance.log.display(),
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ))
    }

    /// Waits until `instance` passes the health check `successes` times in a row.
    pub(crate) async fn health_gate(&self, instance: &Instance) -> Result<String, StepError> {
        let health = &self.spec.health;
        let ip = self.spec.ip_of(&instance.node);
        let started = Instant::now();
        let (mut passes, mut tries) = (0, 0u32);
        let mut last = String::from("no answer yet");
        let mut shown = Instant::now();
        loop {
            if !self.runtime.is_running(instance).await {
                return Err(self.died(instance, "exited during its health gate"));
            }
            tries += 1;
            match self.probe.check(&ip, instance.port).await {
                Ok(()) => {
                    passes += 1;
                    if passes >= health.successes {
                        return Ok(format!(
                            "health gate passed after {tries} tries in {:.1}s",
                            started.elapsed().as_secs_f64()
                        ));
                    }
                }
                Err(e) => {
                    passes = 0;
                    last = e;
                }
            }
            if started.elapsed() >= health.deadline {
                return Err(StepError::Failed(format!(
                    "{} {} failed its health gate: no {} passes in a row within {} (last: {last})",
                    instance.node,
                    instance.version,
                    health.successes,
                    humantime::format_duration(health.deadline)
                )));
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
                        humantime::format_duration(health.deadline)
                    ),
                );
            }
            tokio::time::sleep(health.interval).await;
        }
    }

    /// Tells the balancer the gate passed and, where it checks members without traffic, waits
    /// until its own view says healthy: traffic only moves to what the balancer would serve.
    pub(crate) async fn eligible(
        &self,
        run: &mut Run,
        nodes: &[NodeName],
    ) -> Result<String, StepError> {
        let mut confirmed = true;
        for node in nodes {
            confirmed &= self.balancer.mark_healthy(node).await?;
        }
        if !self.balancer.knows_health_of_disabled() {
            return Ok("marked healthy (this balancer judges health once a node is active)".into());
        }
        if confirmed {
            run.healthy_at.get_or_insert_with(Instant::now);
            return Ok("marked healthy; the balancer's answer shows them healthy".into());
        }
        let started = Instant::now();
        loop {
            let members = self.members().await?;
            let waiting: Vec<&NodeName> = nodes
                .iter()
                .filter(|n| members.get(*n).is_none_or(|m| !m.healthy))
                .collect();
            if waiting.is_empty() {
                run.healthy_at.get_or_insert_with(Instant::now);
                return Ok(format!(
                    "the balancer considers them healthy after {}",
                    crate::executor::took(started.elapsed())
                ));
            }
            if started.elapsed() >= self.spec.health.deadline {
                return Err(StepError::Failed(format!(
                    "the balancer does not consider {} healthy within {}",
                    waiting
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    humantime::format_duration(self.spec.health.deadline)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Watches that the new instances on `nodes` stay up for `window` after they took traffic.
    pub(crate) async fn verify(
        &self,
        run: &mut Run,
        nodes: &[NodeName],
        window: Duration,
    ) -> Result<String, StepError> {
        let instances: Vec<Instance> = nodes
            .iter()
            .filter_map(|n| run.started.get(n).cloned())
            .collect();
        let until = Instant::now() + window;
        let mut looked = Instant::now();
        loop {
            // An operator's change during the window stops the deploy now, not after it.
            if looked.elapsed() >= RECONCILE_EVERY && !run.undoing {
                looked = Instant::now();
                self.reconcile(run).await?;
            }
            for instance in &instances {
                if !self.runtime.is_running(instance).await {
                    return Err(self.died(instance, "died after taking traffic"));
                }
            }
            if Instant::now() >= until {
                return Ok(format!("{} stayed up", instances.len()));
            }
            // Polled often: until the switch back, requests routed to a dead instance fail.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
