//! A per-node lifecycle hook run on the node's own host: what the engine asks for and what the
//! host answers (exit status and output), so a remote run reads like a local one in the log.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One hook to run for a node: its point (`after_install`, …) and the values it sees as
/// `{placeholders}` and `NONSTOP_*`. The argv is not here: the host takes it from its own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    pub point: String,
    pub values: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// How a hook ended on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutput {
    /// Exited with status 0 within its timeout.
    pub success: bool,
    /// `exit status: 3`, `still running after 5s: stopped`, …
    pub status: String,
    /// What it printed (stdout and stderr, in the order read), at most a bounded tail.
    pub lines: Vec<String>,
    /// Lines dropped from the front because there were too many.
    pub dropped: usize,
}
