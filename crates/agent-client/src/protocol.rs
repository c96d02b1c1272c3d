//! The agent protocol's messages and routes, shared by the client here and the agent's server.
//! Only typed operations on configured services: no command, path or pid is taken from the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use nonstop_ports::{Instance, LbState, Member, NodeName, Version};
use serde::{Deserialize, Serialize};

/// Header carrying the artifact's SHA-256 (hex) on an upload; the agent refuses a mismatch.
pub const SHA256_HEADER: &str = "x-nonstop-sha256";
/// Header carrying the artifact's file name (a plain name, no directories).
pub const ARTIFACT_NAME_HEADER: &str = "x-nonstop-artifact-name";

/// Routes, relative to the agent's root; `{service}`, `{node}`, `{version}` are path parameters.
pub mod routes {
    pub const INSTANCES: &str = "/v1/instances";
    pub const RELEASE: &str = "/v1/services/{service}/releases/{version}";
    pub const START: &str = "/v1/services/{service}/nodes/{node}/start";
    pub const STOP: &str = "/v1/services/{service}/nodes/{node}/stop";
    pub const STATUS: &str = "/v1/services/{service}/nodes/{node}/status";
    pub const LOGS: &str = "/v1/services/{service}/nodes/{node}/logs";
    pub const HOOK: &str = "/v1/services/{service}/nodes/{node}/hooks/{hook}";
    pub const MEMBERS: &str = "/v1/services/{service}/balancer/members";
    pub const REGISTER: &str = "/v1/services/{service}/balancer/register";
    pub const STATE: &str = "/v1/services/{service}/balancer/state";
    pub const WEIGHT: &str = "/v1/services/{service}/balancer/weight";
    pub const SWITCH: &str = "/v1/services/{service}/balancer/switch";

    /// Every route with its method: what the security tests enumerate.
    pub const ALL: &[(&str, &str)] = &[
        ("GET", INSTANCES),
        ("PUT", RELEASE),
        ("POST", START),
        ("POST", STOP),
        ("POST", STATUS),
        ("GET", LOGS),
        ("POST", HOOK),
        ("GET", MEMBERS),
        ("POST", REGISTER),
        ("POST", STATE),
        ("POST", WEIGHT),
        ("POST", SWITCH),
    ];
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    pub version: Version,
    /// The release's own environment (`--env`), on top of the service's `env` and `env_files`
    /// the agent reads from its own config and host.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Runs the node's hook `{hook}` as the agent's own config defines it (argv, timeout): the
/// caller sends only the deploy's values; the service, node, port and release paths are the
/// agent's own. The answer is a [`nonstop_ports::HookOutput`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRequest {
    pub version: Version,
    #[serde(default)]
    pub old_version: Option<Version>,
    pub deploy: i64,
    pub strategy: String,
}

/// Names the instance the caller means; the agent acts only if its own record matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRef {
    pub version: Version,
    pub pid: i32,
    pub start_ticks: u64,
}

/// The longest grace a stop asks for; the agent caps `grace_ms` there.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopRequest {
    pub instance: InstanceRef,
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub running: bool,
}

/// What runs on a host, as its agent re-reports it (also after a restart).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInstance {
    pub service: String,
    pub instance: Instance,
    pub running: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uploaded {
    pub version: Version,
    pub checksum: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub node: NodeName,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateRequest {
    pub node: NodeName,
    pub state: LbState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightRequest {
    pub node: NodeName,
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchChange {
    pub node: NodeName,
    pub state: LbState,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchRequest {
    pub changes: Vec<SwitchChange>,
}

pub type Members = Vec<Member>;

/// Every error answer: one sentence for the operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A plain file name: what an uploaded artifact may be called.
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    if nonstop_ports::is_plain_name(name, 128) {
        Ok(())
    } else {
        Err(format!(
            "artifact name `{name}` is not a plain file name; use letters, digits, . _ - + (at most 128, not starting with .)"
        ))
    }
}
