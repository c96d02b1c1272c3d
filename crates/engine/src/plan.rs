//! `--plan`: the steps a deploy would take, worked out from the config and the current state,
//! without changing anything.

use nonstop_config::service::Strategy;
use nonstop_ports::{Balancer, LbState, NodeName, Probe, Runtime, Version};

use crate::Engine;

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Human-readable steps, in order. A balancer that cannot be reached is reported, not fatal.
    pub async fn plan(&self, version: &Version, strategy: Option<Strategy>) -> Vec<String> {
        let strategy = strategy.unwrap_or(*self.config.strategy.get_ref());
        let mut steps = Vec::new();
        let members = match self.members().await {
            Ok(m) => m,
            Err(e) => {
                steps.push(format!(
                    "(cannot read the balancer: {e}; assuming no node is live)"
                ));
                Default::default()
            }
        };
        let live_instances = self.live_instances().await.unwrap_or_default();
        let nodes: Vec<(NodeName, u16)> = self.nodes();
        let health = &self.config.health;
        let gate = |node: &NodeName, port: u16| {
            format!(
                "health gate {node}: GET {} on 127.0.0.1:{port} expecting {}{}, {} passes in a row, every {}, deadline {}",
                health.path.get_ref(),
                health.expect_status,
                health
                    .expect_body
                    .as_ref()
                    .map(|b| format!(" with `{b}`"))
                    .unwrap_or_default(),
                health.successes.get_ref(),
                health.interval,
                health.deadline
            )
        };
        let drain = format!(
            "wait for in-flight requests{} (at most {})",
            if self.config.drain.sessions {
                " and sessions"
            } else {
                ""
            },
            self.config.drain.timeout
        );
        steps.push(format!(
            "install release {version} into {}",
            crate::releases::releases_dir(&self.base)
                .join(version.as_str())
                .display()
        ));
        match strategy {
            Strategy::BlueGreen | Strategy::Canary => {
                let live: Vec<&NodeName> = nodes
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| {
                        members.get(*n).is_some_and(|m| m.state == LbState::Active)
                            && live_instances.contains_key(*n)
                    })
                    .collect();
                let targets: Vec<&(NodeName, u16)> = if live.is_empty() {
                    let first = self.first_slots();
                    nodes.iter().filter(|(n, _)| first.contains(n)).collect()
                } else {
                    nodes.iter().filter(|(n, _)| !live.contains(&n)).collect()
                };
                for (node, port) in &targets {
                    if let Some(old) = live_instances.get(node) {
                        steps.push(format!("stop {node} {} (idle slot)", old.version));
                    }
                    steps.push(format!("start {node} {version} on port {port}"));
                    steps.push(gate(node, *port));
                }
                let target_names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
                let live_names: Vec<&str> = live.iter().map(|n| n.as_str()).collect();
                if strategy == Strategy::Canary && !live.is_empty() {
                    let c = &self.config.canary;
                    steps.push(format!(
                        "canary: {} gets {}% of new requests for {}; abort if its error rate exceeds the old release's by {:.2}% or its latency is over {}×",
                        target_names.join(", "),
                        c.weight.get_ref(),
                        c.window,
                        c.max_error_rate.get_ref() * 100.0,
                        c.max_latency_ratio.get_ref()
                    ));
                }
                steps.push(format!(
                    "switch atomically: {} active{}",
                    target_names.join(", "),
                    if live.is_empty() {
                        String::new()
                    } else {
                        format!(", {} draining", live_names.join(", "))
                    }
                ));
                if !live.is_empty() {
                    steps.push(format!("drain {}: {drain}", live_names.join(", ")));
                }
                steps.push(format!(
                    "verify for {}: new instances stay up",
                    self.config.verify
                ));
                if !live.is_empty() {
                    if self.config.keep_warm.0.is_zero() {
                        steps.push(format!("disable and stop {}", live_names.join(", ")));
                    } else {
                        steps.push(format!(
                            "disable {} and keep it running for {} for an instant rollback",
                            live_names.join(", "),
                            self.config.keep_warm
                        ));
                    }
                }
            }
            Strategy::Rolling => {
                let batch = *self.config.rolling.max_unavailable.get_ref();
                for chunk in nodes.chunks(batch) {
                    let names: Vec<&str> = chunk.iter().map(|(n, _)| n.as_str()).collect();
                    if chunk.iter().any(|(n, _)| members.contains_key(n)) {
                        steps.push(format!("drain {}: {drain}, then disable", names.join(", ")));
                    }
                    for (node, port) in chunk {
                        if let Some(old) = live_instances.get(node) {
                            steps.push(format!("stop {node} {}", old.version));
                        }
                        steps.push(format!("start {node} {version} on port {port}"));
                        steps.push(gate(node, *port));
                    }
                    steps.push(format!("enable {}", names.join(", ")));
                }
                steps.push(format!(
                    "verify for {}: new instances stay up",
                    self.config.verify
                ));
            }
        }
        steps
            .push("on any failure: restore the previous release and balancer state, exit 2".into());
        steps
    }
}
