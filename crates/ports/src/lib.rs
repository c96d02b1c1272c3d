//! The seams the deploy engine drives: a `Balancer` (who gets traffic), a `Runtime` (which
//! process runs where) and a `Probe` (is it healthy). Drivers live in their own crates.

pub mod analysis;
pub mod edge;
pub mod env;
pub mod hook;
pub mod template;

pub use analysis::{Analysis, AnalysisWindow, Verdict};
pub use edge::{Maintenance, Preview};
pub use env::InheritEnv;
pub use hook::{HookOutput, HookRun};

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node (instance slot) of a service; also its backend name in the balancer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(pub String);

/// A release version, as given with `--version` or derived from the artifact's checksum.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub String);

macro_rules! string_type {
    ($t:ident) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(s.to_string())
            }
        }
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}
string_type!(NodeName);
string_type!(Version);

/// Whether `name` is safe as one path component: 1 to `max` of letters, digits, `.`, `_`, `-`
/// and `+`, not starting with `.` (so never `..`, a hidden file or a separator).
pub fn is_plain_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// What the balancer sends to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbState {
    /// New and sticky requests.
    Active,
    /// Only requests bound to it by a session; in-flight ones finish.
    Draining,
    /// Nothing.
    Disabled,
}

impl std::fmt::Display for LbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LbState::Active => "active",
            LbState::Draining => "draining",
            LbState::Disabled => "disabled",
        })
    }
}

/// Cumulative traffic counters of one member, for canary comparisons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub requests: u64,
    /// 5xx answers plus connection errors and timeouts.
    pub errors: u64,
    pub latency_ms_sum: f64,
}

impl Traffic {
    /// The traffic between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_ms_sum: (self.latency_ms_sum - earlier.latency_ms_sum).max(0.0),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    pub fn mean_latency_ms(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.latency_ms_sum / self.requests as f64)
    }
}

/// One backend of the service's pool, as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub node: NodeName,
    pub addr: String,
    pub state: LbState,
    pub weight: u32,
    pub in_flight: i64,
    /// The balancer's own health view (active checks, ejection).
    pub healthy: bool,
    pub traffic: Traffic,
}

/// Whose fault a failed port call is: it decides whether a deploy "rolled back" (the release or
/// the step failed) or stopped on an environment error (the balancer or host itself is broken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortErrorKind {
    /// The call failed; retrying or rolling back may help.
    #[default]
    Failed,
    /// The environment is broken independently of the deploy (e.g. `nginx -t` fails on a file
    /// nonstop does not manage): nothing the release did, nothing a rollback fixes.
    Environment,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub kind: PortErrorKind,
    pub message: String,
}

impl PortError {
    pub fn new(message: impl Into<String>) -> Self {
        PortError {
            kind: PortErrorKind::Failed,
            message: message.into(),
        }
    }

    /// An error of the environment, not of the deploy (see [`PortErrorKind::Environment`]).
    pub fn environment(message: impl Into<String>) -> Self {
        PortError {
            kind: PortErrorKind::Environment,
            message: message.into(),
        }
    }

    pub fn is_environment(&self) -> bool {
        self.kind == PortErrorKind::Environment
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// Who gets traffic. Every call acts on the service's pool.
pub trait Balancer: Send + Sync {
    fn members(&self) -> impl Future<Output = PortResult<Vec<Member>>> + Send;
    /// Makes sure `node` is a member at `addr`; a new member starts `Disabled`.
    fn register(&self, node: &NodeName, addr: &str) -> impl Future<Output = PortResult<()>> + Send;
    fn set_state(
        &self,
        node: &NodeName,
        state: LbState,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn set_weight(
        &self,
        node: &NodeName,
        weight: u32,
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Applies all `changes` in one atomic step (the blue-green switch).
    fn switch(
        &self,
        changes: &[(NodeName, LbState, Option<u32>)],
    ) -> impl Future<Output = PortResult<()>> + Send;
    /// Tells the balancer that the engine's own health gate passed for `node`, so its health
    /// view need not wait for its checker's next passes (the built-in proxy marks it up).
    /// `true` when the answer already shows the node healthy in the balancer's view (no read
    /// to confirm it); `false` to have it read.
    fn mark_healthy(&self, node: &NodeName) -> impl Future<Output = PortResult<bool>> + Send {
        let _ = node;
        async { Ok(false) }
    }
    /// Whether `Member::healthy` of a disabled member is the balancer's real view (it checks
    /// members that get no traffic). Where not, eligibility is judged once a member is active.
    fn knows_health_of_disabled(&self) -> bool {
        false
    }
    /// Whether `Member::traffic` counts each member's requests (a canary can be judged on it).
    fn reports_traffic(&self) -> bool {
        true
    }
    /// Routes requests that ask for the new release (`preview.header`/`preview.cookie` =
    /// `always`) to `preview.nodes` at any weight; `None` clears it.
    fn set_preview(
        &self,
        preview: Option<&Preview>,
    ) -> impl Future<Output = PortResult<()>> + Send {
        let _ = preview;
        async {
            Err(PortError::new(
                "this balancer cannot route a targeted preview; remove `preview` from the service \
                 (docs/strategies/canary.md#targeted-preview lists the balancers that can)",
            ))
        }
    }
    /// Turns maintenance mode on (503 for all but `allow`) or off (`None`).
    fn set_maintenance(
        &self,
        maintenance: Option<&Maintenance>,
    ) -> impl Future<Output = PortResult<()>> + Send {
        let _ = maintenance;
        async {
            Err(PortError::new(
                "this balancer has no maintenance mode nonstop can drive \
                 (docs/lifecycle.md#maintenance-mode says what to do there)",
            ))
        }
    }
    /// The maintenance mode in force, if this balancer has one.
    fn maintenance(&self) -> impl Future<Output = PortResult<Option<Maintenance>>> + Send {
        async { Ok(None) }
    }
    /// What a plan should say about this balancer (its mode and what a deploy costs there).
    fn plan_notes(&self, strategy: &str, nodes: usize) -> Vec<String> {
        let _ = (strategy, nodes);
        Vec::new()
    }
}

/// Everything needed to start one instance of a release on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub node: NodeName,
    pub port: u16,
    pub version: Version,
    pub release_dir: PathBuf,
    pub artifact: PathBuf,
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
}

/// A running (or once running) instance; enough to find, watch and stop it from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub node: NodeName,
    pub version: Version,
    pub port: u16,
    pub pid: i32,
    /// Kernel start time of the pid, so a recycled pid is never mistaken for ours.
    pub start_ticks: u64,
    pub log: PathBuf,
}

/// How a runtime replaces the release a node runs; the engine's sequence on a node follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replacement {
    /// The old instance must stop and free the node's port before the new one starts (process,
    /// command, systemd, Tomcat in restart mode). The engine drains the node, stops the old
    /// instance, checks that the port is free, starts the new one.
    StopFirst,
    /// A server that keeps the node's port swaps the release itself (Tomcat manager mode with
    /// `parallel = false`): drain, stop, start as with `StopFirst`, but the port is not checked
    /// (the server holds it on purpose).
    InPlace,
    /// The new release starts next to the old one in a server that keeps the node's port (Tomcat
    /// parallel deployment): no port check, no drain — the node keeps serving while the new
    /// release starts and passes its health gate, then the old one is stopped (retired once its
    /// sessions end). An instance of another version on the same node is the same [`Instance`]
    /// record with its `version` changed (same server, same pid), so the engine can ask
    /// `is_running` about the old release after the store recorded the new one.
    Beside,
}

/// The sessions a node's server still holds, as its runtime counts them (a session drain ends
/// when they reach 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    pub open: u64,
    /// Who counted them, for the journal: `Tomcat manager /app`.
    pub source: String,
}

/// A server on a node's port that nonstop did not start, as its runtime recognises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignHolder {
    /// `a Tomcat of tomcat1's CATALINA_BASE /srv/t1 (pid 4242)`.
    pub what: String,
    /// The command that stops it gracefully.
    pub stop: String,
}

/// Where releases run.
pub trait Runtime: Send + Sync {
    /// How this runtime replaces the release a node runs.
    fn replacement(&self) -> Replacement {
        Replacement::StopFirst
    }
    fn start(&self, spec: &InstanceSpec) -> impl Future<Output = PortResult<Instance>> + Send;
    /// Asks the instance to stop, then forces it after `grace`.
    fn stop(
        &self,
        instance: &Instance,
        grace: Duration,
    ) -> impl Future<Output = PortResult<()>> + Send;
    fn is_running(&self, instance: &Instance) -> impl Future<Output = bool> + Send;
    /// Finds an instance of `spec` that was started but never recorded (the deploy was killed
    /// between the spawn and the store), so recovery can stop it.
    fn find(&self, spec: &InstanceSpec) -> impl Future<Output = Option<Instance>> + Send {
        let _ = spec;
        async { None }
    }
    /// The sessions the server of `node` (on `port`) still holds, if this runtime can count
    /// them; `None` when it cannot (then a session drain waits for its timeout).
    fn sessions(
        &self,
        node: &NodeName,
        port: u16,
    ) -> impl Future<Output = Option<Sessions>> + Send {
        let _ = (node, port);
        async { None }
    }
    /// Whether `ip:port` is free for a new instance (nothing else listens there).
    fn port_free(&self, ip: &str, port: u16) -> impl Future<Output = bool> + Send {
        let free = std::net::TcpListener::bind((ip, port)).is_ok();
        async move { free }
    }
    /// What holds `port` of `node` when nonstop did not start it, and how to stop it, if this
    /// runtime can tell (a Tomcat of the node's CATALINA_BASE: its pid and shutdown command).
    fn foreign_holder(&self, node: &NodeName, port: u16) -> Option<ForeignHolder> {
        let _ = (node, port);
        None
    }
    /// Runs a per-node lifecycle hook on the host of `node`. `None` (the default): the node
    /// runs on this machine, and the engine spawns the hook here itself.
    fn run_hook(
        &self,
        node: &NodeName,
        run: &HookRun,
    ) -> impl Future<Output = Option<PortResult<HookOutput>>> + Send {
        let _ = (node, run);
        async { None }
    }
}

/// One health check try against an instance's own address.
pub trait Probe: Send + Sync {
    /// `Ok` when healthy; `Err` says what was seen instead. `host` is where the node runs
    /// (`127.0.0.1`, or a remote host's address).
    fn check(&self, host: &str, port: u16) -> impl Future<Output = Result<(), String>> + Send;
}
