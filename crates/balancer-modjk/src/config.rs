//! The driver's settings (`balancer = { kind = "modjk", ... }` minus the kind): the lb worker, the
//! mode (JkMountFile rule extensions or jkstatus), and how a change is confirmed.

use std::path::PathBuf;

use serde::Deserialize;

/// The driver's config (`balancer = { kind = "modjk", ... }` minus the kind).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModjkConfig {
    /// The `type=lb` worker whose members are the service's nodes (node name = member name).
    pub lb_worker: String,
    pub mode: ModjkMode,
    /// A URL through Apache that creates a session (so its `Set-Cookie` names the route); used to
    /// confirm that Apache applied a rewritten JkMountFile. Required for `uriworkermap`.
    #[serde(default)]
    pub probe_url: Option<String>,
    #[serde(default = "default_cookie")]
    pub session_cookie: String,
    /// How long Apache may take to apply a change, e.g. `"30s"`.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: String,
    /// Consecutive new-session probes that must avoid a drained member.
    #[serde(default = "default_confirm_requests")]
    pub confirm_requests: u32,
}

fn default_cookie() -> String {
    "JSESSIONID".into()
}
fn default_confirm_timeout() -> String {
    "30s".into()
}
fn default_confirm_requests() -> u32 {
    40
}
fn default_reload_secs() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModjkMode {
    /// Rewrite the `JkMountFile`; Apache reloads it per child after `JkMountFileReload` seconds.
    Uriworkermap {
        file: PathBuf,
        /// Apache's `JkMountFileReload`.
        #[serde(default = "default_reload_secs")]
        reload_secs: u64,
        /// The `JkWorkersFile`, read only: members, routes and configured activations.
        workers_file: PathBuf,
        /// An optional status worker, read for `busy` (in-flight) and health.
        #[serde(default)]
        status: Option<StatusWorker>,
    },
    /// Set member activation through the status worker (shared memory; lost at an Apache restart).
    Jkstatus {
        url: String,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusWorker {
    pub url: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}
