//! A deploy as data: a `Plan` is the list of typed `Step`s a strategy derived from the service
//! and its observed state. `--plan` prints it, the executor runs it, the journal records it.

use std::time::Duration;

use nonstop_config::service::Strategy;
use nonstop_ports::{LbState, NodeName, Version};
use serde::{Deserialize, Serialize};

/// One balancer state change; a `Set` step applies several in one atomic call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub node: NodeName,
    pub state: LbState,
    pub weight: Option<u32>,
}

impl Change {
    pub fn new(node: &NodeName, state: LbState, weight: Option<u32>) -> Change {
        Change {
            node: node.clone(),
            state,
            weight,
        }
    }
}

/// Why a deploy waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PauseWhy {
    /// A `{ pause = true }` canary step.
    CanaryStep,
    /// `--pause-before-switch`: the new slots are up and healthy, traffic not yet switched.
    BeforeSwitch,
    /// Rolling's `pause_after_first_batch`: the first batch serves the new release.
    AfterFirstBatch,
}

impl PauseWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseWhy::CanaryStep => "a canary pause step",
            PauseWhy::BeforeSwitch => "before the switch: the new release is up for testers",
            PauseWhy::AfterFirstBatch => "after the first batch",
        }
    }
}

/// What a `Set` step is for: only its wording and its invariant check differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetPurpose {
    /// Blue-green: all new traffic to the new slots, the old ones drain.
    Switch,
    /// Rolling: take a batch out (draining).
    TakeOut,
    /// The drained nodes get nothing at all.
    Disable,
    /// Nodes (back) in.
    Enable,
    /// Undo: the states before the deploy.
    Restore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Makes `node` a member at `addr` (a new member starts disabled).
    Register { node: NodeName, addr: String },
    /// Stops what runs on `node`.
    Stop {
        node: NodeName,
        version: Version,
        why: String,
        /// Its undo does not start it again (a slot kept warm past its time).
        #[serde(default)]
        keep_stopped: bool,
    },
    /// Starts `version` on `node`; journaled (release, port) before the spawn.
    Start {
        node: NodeName,
        version: Version,
        port: u16,
    },
    /// The node runs `version` already (kept warm): use it.
    Reuse { node: NodeName, version: Version },
    /// A `Beside` runtime: `version` starts next to `old`, which keeps serving.
    StartBeside {
        node: NodeName,
        version: Version,
        old: Version,
    },
    /// A `Beside` runtime: the old release stops once its sessions end.
    Retire { node: NodeName, version: Version },
    /// Undo of `StartBeside`: the new release stops, the old one is the node's instance again.
    StopBeside {
        node: NodeName,
        version: Version,
        old: Version,
    },
    /// Health gate on the instance's own address.
    Gate { node: NodeName, version: Version },
    /// The balancer itself must consider `nodes` healthy before they get traffic.
    Eligible { nodes: Vec<NodeName> },
    /// Balancer states, in one atomic call.
    Set {
        purpose: SetPurpose,
        changes: Vec<Change>,
    },
    /// Waits until `nodes` have nothing in flight (and sessions, if configured).
    Drain { nodes: Vec<NodeName> },
    /// Canary: the new slots get `share` % of new requests for `window`, then a verdict.
    Canary {
        nodes: Vec<NodeName>,
        live: Vec<NodeName>,
        share: u32,
        #[serde(with = "humantime_serde_ms")]
        window: Duration,
    },
    /// Waits for `nonstop promote` (goes on) or `nonstop abort` (rolls back); aborts on its own
    /// after `limit`.
    Pause {
        why: PauseWhy,
        #[serde(with = "humantime_serde_ms")]
        limit: Duration,
    },
    /// The new instances must stay up for `window` with traffic.
    Verify {
        nodes: Vec<NodeName>,
        #[serde(with = "humantime_serde_ms")]
        window: Duration,
    },
    /// The release's database migration, once per deploy, before any node gets the release.
    Migrate { version: Version },
    /// The undo of a reversible migration: its `down` command.
    MigrateDown { version: Version },
    /// The operator's hook at `point` (for `node`, at the per-node points).
    Hook {
        point: crate::spec::HookPoint,
        node: Option<NodeName>,
    },
    /// Requests asking for the new release (the service's `preview` header or cookie) reach
    /// `nodes` at any weight; empty clears the preview.
    Preview { nodes: Vec<NodeName> },
    /// The old slot stays running (disabled) until `until_ms` for an instant rollback; `None`
    /// clears the mark (the slot serves again).
    KeepWarm {
        node: NodeName,
        until_ms: Option<i64>,
    },
}

/// Durations as milliseconds in the journal.
mod humantime_serde_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

fn names(nodes: &[NodeName]) -> String {
    nodes
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Step {
    /// The journal's short name of the step.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Register { .. } => "register",
            Step::Stop { .. } => "stop",
            Step::Start { .. } => "start",
            Step::Reuse { .. } => "reuse",
            Step::StartBeside { .. } => "start-beside",
            Step::Retire { .. } => "retire",
            Step::StopBeside { .. } => "stop-beside",
            Step::Gate { .. } => "health",
            Step::Eligible { .. } => "eligible",
            Step::Set { purpose, .. } => match purpose {
                SetPurpose::Switch => "switch",
                SetPurpose::TakeOut => "take-out",
                SetPurpose::Disable => "disable",
                SetPurpose::Enable => "enable",
                SetPurpose::Restore => "restore",
            },
            Step::Drain { .. } => "drain",
            Step::Canary { .. } => "canary",
            Step::Verify { .. } => "verify",
            Step::Pause { .. } => "pause",
            Step::KeepWarm { .. } => "keep-warm",
            Step::Hook { .. } => "hook",
            Step::Migrate { .. } => "migrate",
            Step::MigrateDown { .. } => "migrate-down",
            Step::Preview { .. } => "preview",
        }
    }

    /// The node a step acts on, when it is one.
    pub fn node(&self) -> Option<&NodeName> {
        match self {
            Step::Register { node, .. }
            | Step::Stop { node, .. }
            | Step::Start { node, .. }
            | Step::Reuse { node, .. }
            | Step::StartBeside { node, .. }
            | Step::Retire { node, .. }
            | Step::StopBeside { node, .. }
            | Step::Gate { node, .. }
            | Step::KeepWarm { node, .. } => Some(node),
            Step::Hook { node, .. } => node.as_ref(),
            _ => None,
        }
    }

    /// Every node the step acts on or waits for.
    pub fn nodes(&self) -> Vec<NodeName> {
        match self {
            Step::Eligible { nodes } | Step::Drain { nodes } | Step::Verify { nodes, .. } => {
                nodes.clone()
            }
            Step::Canary { nodes, live, .. } => nodes.iter().chain(live).cloned().collect(),
            Step::Set { changes, .. } => changes.iter().map(|c| c.node.clone()).collect(),
            other => other.node().into_iter().cloned().collect(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Register { node, addr } => write!(f, "register {node} at {addr} (disabled)"),
            Step::Stop {
                node, version, why, ..
            } => write!(f, "stop {node} {version} ({why})"),
            Step::Start {
                node,
                version,
                port,
            } => write!(f, "start {node} {version} on port {port}"),
            Step::Reuse { node, version } => {
                write!(f, "{node} still runs {version} (kept warm): use it")
            }
            Step::StartBeside { node, version, old } => write!(
                f,
                "start {node} {version} beside {old} (which keeps serving)"
            ),
            Step::Retire { node, version } => {
                write!(f, "retire {node} {version} once its sessions end")
            }
            Step::StopBeside { node, version, old } => {
                write!(f, "stop {node} {version}; {old} serves there again")
            }
            Step::Gate { node, version } => write!(f, "health gate {node} {version}"),
            Step::Eligible { nodes } => write!(
                f,
                "wait until the balancer itself considers {} healthy",
                names(nodes)
            ),
            Step::Set { purpose, changes } => {
                let list = changes
                    .iter()
                    .map(|c| match c.weight {
                        Some(w) if w != 1 => format!("{} {} (weight {w})", c.node, c.state),
                        _ => format!("{} {}", c.node, c.state),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let verb = match purpose {
                    SetPurpose::Switch => "switch atomically",
                    SetPurpose::TakeOut => "take out",
                    SetPurpose::Disable => "disable",
                    SetPurpose::Enable => "enable",
                    SetPurpose::Restore => "restore",
                };
                write!(f, "{verb}: {list}")
            }
            Step::Drain { nodes } => write!(f, "drain {}", names(nodes)),
            Step::Canary {
                nodes,
                share,
                window,
                ..
            } => write!(
                f,
                "canary: {} takes {share}% of new requests for {}, then a verdict",
                names(nodes),
                humantime::format_duration(*window)
            ),
            Step::Pause { why, limit } => write!(
                f,
                "pause ({}): wait for `nonstop promote` or `abort`, abort on its own after {}",
                why.as_str(),
                humantime::format_duration(*limit)
            ),
            Step::Verify { nodes, window } => write!(
                f,
                "verify for {}: {} stay up with traffic",
                humantime::format_duration(*window),
                names(nodes)
            ),
            Step::Migrate { version } => write!(f, "migrate the database for {version} (once)"),
            Step::MigrateDown { version } => {
                write!(
                    f,
                    "undo the database migration of {version} (its down command)"
                )
            }
            Step::Hook { point, node } => match node {
                Some(node) => write!(f, "hook {} for {node}", point.as_str()),
                None => write!(f, "hook {}", point.as_str()),
            },
            Step::Preview { nodes } if nodes.is_empty() => {
                write!(f, "clear the targeted preview")
            }
            Step::Preview { nodes } => write!(
                f,
                "targeted preview: requests that ask for it reach {} at any weight",
                names(nodes)
            ),
            Step::KeepWarm { node, until_ms } => match until_ms {
                Some(_) => write!(f, "keep {node} running (disabled) for an instant rollback"),
                None => write!(f, "{node} serves again: no longer kept warm"),
            },
        }
    }
}

/// A strategy's steps for one deploy, with what it found and what it will install.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub service: String,
    pub strategy: Strategy,
    pub version: Version,
    pub from: Option<Version>,
    pub steps: Vec<Step>,
    /// Facts the planner saw that a reader should know (e.g. which mode a balancer is in).
    pub notes: Vec<String>,
}

impl Plan {
    /// The plan as numbered lines, as `--plan` prints it.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.notes.iter().map(|n| format!("({n})")).collect();
        lines.extend(
            self.steps
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{:>2}. {s}", i + 1)),
        );
        lines.push(
            "on any failure: undo the steps taken, newest first (the old release keeps or regains the traffic), exit 2".into(),
        );
        lines
    }
}
