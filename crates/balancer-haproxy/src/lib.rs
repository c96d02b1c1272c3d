//! The `haproxy` balancer driver: one backend of a running HAProxy, changed and read through
//! the Runtime API on its stats socket (docs/balancers/haproxy.md); servers must be declared in its config.

mod edge;
mod maps;
mod socket;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;

use nonstop_ports::{
    Balancer, LbState, Maintenance, Member, NodeName, PortError, PortResult, Preview,
};
use serde::Deserialize;

pub use socket::RuntimeApi;
pub use stats::{ServerStat, ServerState};

/// Where the admin-level stats socket is and which backend holds the service's servers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    /// `stats socket PATH mode 600 level admin` in HAProxy's `global` section.
    pub socket: PathBuf,
    pub backend: String,
    /// HAProxy's `server-state-file`: after every change nonstop writes `show servers state`
    /// there (atomically), so a reload keeps drains, maintenance, weights and addresses. Needs
    /// `load-server-state-from-file global` in `defaults`; without it a reload puts every server
    /// back to what haproxy.cfg says.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Map the targeted preview's `use-server` lines read (docs/balancers/haproxy.md).
    #[serde(default)]
    pub preview_map: Option<PathBuf>,
    /// Map the maintenance `http-request return` lines read: the pages and `Retry-After`.
    #[serde(default)]
    pub maintenance_map: Option<PathBuf>,
    /// This service's own `map_ip` file of the networks maintenance mode lets through.
    #[serde(default)]
    pub allow_map: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("HAProxy stats socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("HAProxy stats socket {0}: no answer in time")]
    Timeout(String),
    #[error("HAProxy refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<HaproxyError> for PortError {
    fn from(e: HaproxyError) -> Self {
        PortError::new(e.to_string())
    }
}

/// One backend of one HAProxy.
#[derive(Debug, Clone)]
pub struct HaproxyBalancer {
    api: RuntimeApi,
    backend: String,
    state_file: Option<PathBuf>,
    preview_map: Option<PathBuf>,
    maintenance_map: Option<PathBuf>,
    allow_map: Option<PathBuf>,
}

impl HaproxyBalancer {
    pub fn new(config: HaproxyConfig) -> Result<Self, HaproxyError> {
        check_name("backend", &config.backend)?;
        Ok(HaproxyBalancer {
            api: RuntimeApi::new(config.socket),
            backend: config.backend,
            state_file: config.state_file,
            preview_map: config.preview_map,
            maintenance_map: config.maintenance_map,
            allow_map: config.allow_map,
        })
    }

    pub fn api(&self) -> &RuntimeApi {
        &self.api
    }

    fn server(&self, node: &NodeName) -> Result<String, HaproxyError> {
        check_name("server", node.as_str())?;
        Ok(format!("{}/{}", self.backend, node))
    }

    async fn states(&self) -> Result<Vec<ServerState>, HaproxyError> {
        let command = format!("show servers state {}", self.backend);
        let answer = self.api.command(&command).await?;
        stats::parse_servers_state(&answer)
            .map_err(|answer| HaproxyError::Refused { command, answer })
    }

    /// Fails with what to do when `node` is not a server of the backend.
    async fn existing(&self, node: &NodeName) -> Result<ServerState, HaproxyError> {
        self.states()
            .await?
            .into_iter()
            .find(|s| s.name == node.as_str())
            .ok_or_else(|| {
                HaproxyError::Invalid(format!(
                    "HAProxy backend `{}` has no server `{node}`: the Runtime API cannot add servers \
                     here, so declare it in haproxy.cfg (e.g. `server {node} 127.0.0.1:1 disabled`, \
                     or `server-template`) and reload HAProxy",
                    self.backend
                ))
            })
    }

    async fn apply_state(&self, node: &NodeName, state: LbState) -> Result<(), HaproxyError> {
        let word = match state {
            LbState::Active => "ready",
            LbState::Draining => "drain",
            LbState::Disabled => "maint",
        };
        let server = self.server(node)?;
        self.api
            .set(&format!("set server {server} state {word}"))
            .await
    }

    /// Writes every backend's server state to `state_file` (the format HAProxy loads at start).
    async fn save_state(&self) -> Result<(), HaproxyError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let answer = self.api.command("show servers state").await?;
        let file_err = |e: std::io::Error| {
            HaproxyError::Invalid(format!(
                "cannot write the server state file {}: {e}",
                path.display()
            ))
        };
        let tmp = path.with_extension("nonstop-tmp");
        tokio::fs::write(&tmp, answer).await.map_err(file_err)?;
        tokio::fs::rename(&tmp, path).await.map_err(file_err)
    }

    /// Runs `change`, then records the resulting state, also after a change that failed halfway.
    async fn recorded<T>(&self, change: impl Future<Output = PortResult<T>>) -> PortResult<T> {
        let result = change.await;
        self.save_state().await?;
        result
    }

    async fn apply_weight(&self, node: &NodeName, weight: u32) -> Result<(), HaproxyError> {
        let server = self.server(node)?;
        self.api.set(&format!("set weight {server} {weight}")).await
    }
}

/// Names end up in a Runtime API line, where spaces separate words and `;` separates commands.
fn check_name(what: &str, name: &str) -> Result<(), HaproxyError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(HaproxyError::Invalid(format!(
            "`{name}` is not a valid HAProxy {what} name: use letters, digits, `-`, `_`, `.` and `:`"
        )))
    }
}

/// The order a multi-server change runs in: no moment may leave the backend with fewer active
/// servers than needed, so activations (with their weight) go first, then drains, then maint.
fn switch_order(state: LbState) -> u8 {
    match state {
        LbState::Active => 0,
        LbState::Draining => 1,
        LbState::Disabled => 2,
    }
}

impl Balancer for HaproxyBalancer {
    async fn members(&self) -> PortResult<Vec<Member>> {
        let states = self.states().await?;
        let answer = self.api.command("show stat").await?;
        let stat =
            stats::parse_stat(&answer, &self.backend).map_err(|answer| HaproxyError::Refused {
                command: "show stat".into(),
                answer,
            })?;
        Ok(states
            .into_iter()
            .map(|s| {
                let counters = stat.iter().find(|c| c.server == s.name);
                stats::member(&s, counters)
            })
            .collect())
    }

    async fn register(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        self.recorded(self.register_addr(node, addr)).await
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        self.recorded(async { self.apply_state(node, state).await.map_err(Into::into) })
            .await
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        self.recorded(async { self.apply_weight(node, weight).await.map_err(Into::into) })
            .await
    }

    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        self.recorded(self.switch_in_order(changes)).await
    }

    async fn set_preview(&self, preview: Option<&Preview>) -> PortResult<()> {
        self.apply_preview(preview).await
    }

    async fn set_maintenance(&self, maintenance: Option<&Maintenance>) -> PortResult<()> {
        self.apply_maintenance(maintenance).await
    }

    async fn maintenance(&self) -> PortResult<Option<Maintenance>> {
        self.read_maintenance().await
    }
}

impl HaproxyBalancer {
    /// Points a declared server at `addr` (an IP literal and port), in maintenance first.
    async fn register_addr(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        let target: SocketAddr = addr.parse().map_err(|_| {
            HaproxyError::Invalid(format!(
                "member address `{addr}` must be IP:PORT (such as 127.0.0.1:8081): \
                 HAProxy's `set server addr` takes no host name"
            ))
        })?;
        let current = self.existing(node).await?;
        if current.addr == target.ip().to_string() && current.port == target.port() {
            return Ok(());
        }
        // A new member starts Disabled: never send traffic to the address being replaced.
        self.apply_state(node, LbState::Disabled).await?;
        let server = self.server(node)?;
        let command = format!(
            "set server {server} addr {} port {}",
            target.ip(),
            target.port()
        );
        let answer = self.api.command(&command).await?;
        // Unlike the other `set` commands this one reports what it did.
        if answer.contains("changed from") || answer.contains("no need to change") {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command,
                answer: answer.trim().to_string(),
            }
            .into())
        }
    }

    /// HAProxy has no multi-server transaction: every node is checked first, then the changes
    /// run one by one in `switch_order`, so a typo changes nothing and no step empties the backend.
    async fn switch_in_order(
        &self,
        changes: &[(NodeName, LbState, Option<u32>)],
    ) -> PortResult<()> {
        let names: Vec<String> = self.states().await?.into_iter().map(|s| s.name).collect();
        for (node, _, _) in changes {
            if !names.iter().any(|n| n == node.as_str()) {
                self.existing(node).await?;
            }
        }
        let mut ordered: Vec<_> = changes.iter().collect();
        ordered.sort_by_key(|(_, state, _)| switch_order(*state));
        for (i, (node, state, weight)) in ordered.iter().enumerate() {
            let step = async {
                if let Some(w) = weight {
                    self.apply_weight(node, *w).await?;
                }
                self.apply_state(node, *state).await
            };
            step.await.map_err(|e| {
                let done: Vec<String> = ordered[..i]
                    .iter()
                    .map(|(n, s, _)| format!("{n} {s}"))
                    .collect();
                PortError::new(format!(
                    "{e} (already applied: {})",
                    if done.is_empty() {
                        "nothing".into()
                    } else {
                        done.join(", ")
                    }
                ))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_smuggle_commands() {
        for bad in ["", "a b", "a;shutdown sessions", "a/b", "a\n"] {
            assert!(check_name("server", bad).is_err(), "{bad:?} accepted");
        }
        check_name("server", "blue-1.x_y").unwrap();
    }

    #[test]
    fn switch_activates_before_it_drains() {
        let mut states = [LbState::Disabled, LbState::Draining, LbState::Active];
        states.sort_by_key(|s| switch_order(*s));
        assert_eq!(
            states,
            [LbState::Active, LbState::Draining, LbState::Disabled]
        );
    }
}
