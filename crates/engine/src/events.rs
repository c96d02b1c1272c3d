//! What the engine tells its caller while it works: one `Event` per step, progress line or verdict.
//! The CLI renders them as a progress display, plain lines, or JSON lines (`--json`).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Begin,
    /// A journaled step that is about to happen.
    Step,
    /// How a wait is going (health gate, drain, canary window).
    Progress,
    /// All new traffic is on the new release.
    Switched,
    RollingBack,
    /// The deploy waits for `nonstop promote` or `abort`.
    Paused,
    Warn,
    /// The deploy ended; the message says how.
    Done,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: i64,
    pub deploy: Option<i64>,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}
