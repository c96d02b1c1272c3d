//! The engine's own view of a service: plain durations and typed names, read once from the
//! TOML `ServiceConfig` so no strategy or step ever touches `Spanned` config types.

use std::time::Duration;

use std::collections::BTreeMap;

use nonstop_config::service::{ServiceConfig, Strategy};
use nonstop_ports::NodeName;
use serde::{Deserialize, Serialize};

/// A named point of a deploy where the operator's hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    BeforeDeploy,
    AfterInstall,
    BeforeTraffic,
    AfterTraffic,
    AfterDeploy,
    OnRollback,
    OnFailure,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::BeforeDeploy => "before_deploy",
            HookPoint::AfterInstall => "after_install",
            HookPoint::BeforeTraffic => "before_traffic",
            HookPoint::AfterTraffic => "after_traffic",
            HookPoint::AfterDeploy => "after_deploy",
            HookPoint::OnRollback => "on_rollback",
            HookPoint::OnFailure => "on_failure",
        }
    }

    fn parse(name: &str) -> Option<HookPoint> {
        [
            HookPoint::BeforeDeploy,
            HookPoint::AfterInstall,
            HookPoint::BeforeTraffic,
            HookPoint::AfterTraffic,
            HookPoint::AfterDeploy,
            HookPoint::OnRollback,
            HookPoint::OnFailure,
        ]
        .into_iter()
        .find(|p| p.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationSpec {
    pub run: Vec<String>,
    pub down: Option<Vec<String>>,
    pub reversible: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Whether a failure rolls the deploy back (always before traffic; configurable after).
    pub aborts: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: NodeName,
    pub port: u16,
    /// The IP the balancer and the health gate reach the node at.
    pub ip: String,
}

impl NodeSpec {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub interval: Duration,
    pub deadline: Duration,
    pub successes: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    pub max_error_rate: f64,
    pub max_latency_ratio: f64,
    /// Fewer requests than this in the window is inconclusive: the canary is not promoted.
    pub min_requests: u64,
    /// Whether an inconclusive window waits for a person (else it aborts).
    pub pause_when_inconclusive: bool,
    /// The steps, in order.
    pub steps: Vec<CanaryPhase>,
}

/// One step of a canary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CanaryPhase {
    /// `share` percent of new requests for `window`, then a verdict.
    Watch { share: u32, window: Duration },
    /// Wait for `nonstop promote` (or abort).
    Pause,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub service: String,
    pub strategy: Strategy,
    pub nodes: Vec<NodeSpec>,
    pub health: HealthSpec,
    pub drain_timeout: Duration,
    pub drain_sessions: bool,
    pub keep_warm: Duration,
    pub verify: Duration,
    pub max_unavailable: usize,
    pub canary: CanarySpec,
    pub stop_grace: Duration,
    pub keep_releases: usize,
    /// Nodes run on other hosts (through agents): local port checks do not apply.
    pub on_hosts: bool,
    /// Secret `KEY=VALUE` files, read at each start on the host where the instance runs.
    pub env_files: Vec<std::path::PathBuf>,
    pub hooks: BTreeMap<HookPoint, HookSpec>,
    pub migrate: Option<MigrationSpec>,
    /// How long a pause waits for a decision before the deploy aborts itself.
    pub pause_limit: Duration,
    /// Rolling: wait for `nonstop promote` once the first batch serves the new release.
    pub pause_after_first_batch: bool,
}

impl ServiceSpec {
    pub fn from_config(service: &str, config: &ServiceConfig) -> ServiceSpec {
        let h = &config.health;
        let c = &config.canary;
        ServiceSpec {
            service: service.to_string(),
            strategy: *config.strategy.get_ref(),
            nodes: config
                .nodes
                .iter()
                .map(|n| NodeSpec {
                    name: NodeName(n.name.get_ref().clone()),
                    port: *n.port.get_ref(),
                    ip: n.ip().to_string(),
                })
                .collect(),
            health: HealthSpec {
                path: h.path.get_ref().clone(),
                expect_status: h.expect_status,
                expect_body: h.expect_body.clone(),
                interval: h.interval.0,
                deadline: h.deadline.0,
                successes: (*h.successes.get_ref()).max(1),
            },
            drain_timeout: config.drain.timeout.0,
            drain_sessions: config.drain.sessions,
            keep_warm: config.keep_warm.0,
            verify: config.verify.0,
            max_unavailable: (*config.rolling.max_unavailable.get_ref()).max(1),
            canary: CanarySpec {
                max_error_rate: *c.max_error_rate.get_ref(),
                max_latency_ratio: *c.max_latency_ratio.get_ref(),
                min_requests: c.min_requests.max(1),
                pause_when_inconclusive: c.inconclusive
                    == nonstop_config::service::Inconclusive::Pause,
                steps: if c.steps.is_empty() {
                    vec![CanaryPhase::Watch {
                        share: *c.weight.get_ref(),
                        window: c.window.0,
                    }]
                } else {
                    c.steps
                        .iter()
                        .map(|s| match (&s.weight, &s.duration) {
                            (Some(w), Some(d)) => CanaryPhase::Watch {
                                share: *w.get_ref(),
                                window: d.0,
                            },
                            _ => CanaryPhase::Pause,
                        })
                        .collect()
                },
            },
            pause_limit: config.pause_limit.0,
            pause_after_first_batch: config.rolling.pause_after_first_batch,
            stop_grace: config.runtime.shared.stop_grace.0,
            keep_releases: *config.releases.keep.get_ref(),
            on_hosts: config.on_hosts(),
            env_files: config.runtime.shared.env_files.clone(),
            hooks: config
                .hooks
                .all()
                .into_iter()
                .filter_map(|(name, hook)| {
                    let point = HookPoint::parse(name)?;
                    let hook = hook?;
                    let aborts = match point {
                        HookPoint::BeforeDeploy
                        | HookPoint::AfterInstall
                        | HookPoint::BeforeTraffic => true,
                        HookPoint::AfterTraffic | HookPoint::AfterDeploy => hook.rollback,
                        HookPoint::OnRollback | HookPoint::OnFailure => false,
                    };
                    Some((
                        point,
                        HookSpec {
                            argv: hook.run.get_ref().clone(),
                            timeout: hook.timeout.0,
                            aborts,
                        },
                    ))
                })
                .collect(),
            migrate: config.migrate.as_ref().map(|m| MigrationSpec {
                run: m.run.get_ref().clone(),
                down: m.down.as_ref().map(|d| d.get_ref().clone()),
                reversible: m.reversible,
                timeout: m.timeout.0,
            }),
        }
    }

    pub fn node(&self, name: &NodeName) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| &n.name == name)
    }

    pub fn names(&self) -> Vec<NodeName> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn port_of(&self, node: &NodeName) -> u16 {
        self.node(node).map_or(0, |n| n.port)
    }

    pub fn ip_of(&self, node: &NodeName) -> String {
        self.node(node)
            .map_or_else(|| "127.0.0.1".to_string(), |n| n.ip.clone())
    }
}
