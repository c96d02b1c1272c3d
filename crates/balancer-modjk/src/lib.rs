//! The Apache mod_jk balancer driver: drives one lb worker either by rewriting the JkMountFile's
//! rule extensions (`;disabled=`/`;stopped=`) or through the jkstatus status worker on loopback.

mod config;
mod files;
mod status;
mod urimap;
mod workers;

use std::path::{Path, PathBuf};

use files::{read, write_atomic};
use std::time::{Duration, Instant};

use nonstop_http_client as http;
use nonstop_ports::{Balancer, LbState, Member, NodeName, PortError, PortResult, Traffic};

pub use config::{ModjkConfig, ModjkMode, StatusWorker};
pub use status::{StatusClient, StatusMember};
pub use urimap::RuleActivations;
pub use workers::{
    Activation, ImportError, ImportedLb, ImportedMember, SharedWith, import_workers_properties,
};

#[derive(Debug, thiserror::Error)]
pub enum ModjkError {
    #[error("mod_jk driver config: {0}")]
    Config(String),
    #[error("mod_jk status worker: {0}")]
    Status(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    NotApplied(String),
}

impl From<ModjkError> for PortError {
    fn from(e: ModjkError) -> Self {
        match e {
            // A site the driver refuses to change (a shared member, a mount rule in the way):
            // no release or rollback fixes it, so the deploy ends as an environment error (3).
            ModjkError::Config(_) => PortError::environment(e.to_string()),
            _ => PortError::new(e.to_string()),
        }
    }
}

enum Backend {
    Urimap {
        file: PathBuf,
        reload: Duration,
        workers_file: PathBuf,
        status: Option<StatusClient>,
    },
    Status(StatusClient),
}

/// One mod_jk lb worker as a `Balancer`.
pub struct ModjkBalancer {
    lb: String,
    backend: Backend,
    probe: Option<http::Url>,
    cookie: String,
    confirm_timeout: Duration,
    confirm_requests: u32,
    /// Serialises read-modify-write of the JkMountFile within this process.
    write_lock: tokio::sync::Mutex<()>,
}

impl ModjkBalancer {
    pub fn new(config: ModjkConfig) -> Result<ModjkBalancer, ModjkError> {
        let confirm_timeout = humantime::parse_duration(&config.confirm_timeout).map_err(|e| {
            ModjkError::Config(format!("confirm_timeout `{}`: {e}", config.confirm_timeout))
        })?;
        let probe = config
            .probe_url
            .as_deref()
            .map(http::Url::parse)
            .transpose()
            .map_err(|e| ModjkError::Config(format!("probe_url: {e}")))?;
        let backend = match config.mode {
            ModjkMode::Uriworkermap {
                file,
                reload_secs,
                workers_file,
                status,
            } => {
                if probe.is_none() {
                    return Err(ModjkError::Config(
                        "the uriworkermap mode needs `probe_url`, a page through Apache that creates a session: \
                         Apache applies the rewritten file per child process, so only probing confirms it"
                            .into(),
                    ));
                }
                if reload_secs == 0 {
                    return Err(ModjkError::Config(
                        "reload_secs = 0 means Apache never reloads the JkMountFile; set JkMountFileReload".into(),
                    ));
                }
                let status = status
                    .map(|s| StatusClient::new(&s.url, s.user, s.password_file))
                    .transpose()?;
                Backend::Urimap {
                    file,
                    reload: Duration::from_secs(reload_secs),
                    workers_file,
                    status,
                }
            }
            ModjkMode::Jkstatus {
                url,
                user,
                password_file,
            } => Backend::Status(StatusClient::new(&url, user, password_file)?),
        };
        Ok(ModjkBalancer {
            lb: config.lb_worker,
            backend,
            probe,
            cookie: config.session_cookie,
            confirm_timeout,
            confirm_requests: config.confirm_requests.max(1),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn workers(&self, workers_file: &Path) -> Result<ImportedLb, ModjkError> {
        let text = std::fs::read_to_string(workers_file).map_err(|e| ModjkError::File {
            path: workers_file.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        import_workers_properties(&text, Some(&self.lb)).map_err(|e| ModjkError::File {
            path: workers_file.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// For `config check`: the files exist and name the lb worker, a mount rule maps it, and the
    /// status worker (if any) answers with it; returns what was verified. Nothing is changed.
    pub async fn check_environment(&self) -> Result<String, ModjkError> {
        let status = match &self.backend {
            Backend::Status(client) => Some(client),
            Backend::Urimap {
                file,
                workers_file,
                status,
                ..
            } => {
                let lb = self.workers(workers_file)?;
                RuleActivations::read(&read(file)?, &self.lb).ok_or_else(|| ModjkError::File {
                    path: file.clone(),
                    message: format!(
                        "no mount rule maps to `{}`; add e.g. `/app/*={}`",
                        self.lb, self.lb
                    ),
                })?;
                if let Some(m) = lb.members.iter().find(|m| !m.also_in.is_empty()) {
                    return Err(shared_member(&m.name, &self.lb, &m.also_in[0]));
                }
                status.as_ref()
            }
        };
        let members = match status {
            Some(client) => {
                let listed = client.list(&self.lb).await?;
                if let Some(m) = listed.iter().find(|m| !m.also_in.is_empty()) {
                    return Err(shared_member(&m.name, &self.lb, &m.also_in[0]));
                }
                if matches!(self.backend, Backend::Status(_)) {
                    overriding_rule(&self.lb, &listed)?;
                }
                format!("; jkstatus answers with {} member(s)", listed.len())
            }
            None => String::new(),
        };
        Ok(format!("mod_jk lb worker `{}` found{members}", self.lb))
    }

    async fn list(&self) -> Result<Vec<Member>, ModjkError> {
        match &self.backend {
            Backend::Status(client) => {
                let listed = client.list(&self.lb).await?;
                overriding_rule(&self.lb, &listed)?;
                Ok(listed.iter().map(|s| member(s, s.activation)).collect())
            }
            Backend::Urimap {
                file,
                workers_file,
                status,
                ..
            } => {
                let lb = self.workers(workers_file)?;
                let rules = RuleActivations::read(&read(file)?, &self.lb).unwrap_or_default();
                let live = match status {
                    Some(client) => client.list(&self.lb).await?,
                    None => Vec::new(),
                };
                Ok(lb
                    .members
                    .iter()
                    .map(|m| {
                        let mut activation = rules.effective(&m.name, m.activation);
                        match live.iter().find(|s| s.name == m.name) {
                            Some(s) => {
                                activation = stricter(activation, s.activation);
                                member(s, activation)
                            }
                            None => Member {
                                node: NodeName(m.name.clone()),
                                addr: format!("{}:{}", m.host, m.port),
                                state: activation.lb_state(),
                                weight: m.lbfactor,
                                in_flight: 0,
                                healthy: true,
                                traffic: Traffic::default(),
                            },
                        }
                    })
                    .collect())
            }
        }
    }

    async fn apply(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> Result<(), ModjkError> {
        match &self.backend {
            Backend::Status(client) => {
                // Activate first so the pool never has a moment with no active member.
                let mut ordered: Vec<_> = changes.iter().collect();
                ordered.sort_by_key(|(_, state, _)| *state != LbState::Active);
                let known = client.list(&self.lb).await?;
                overriding_rule(&self.lb, &known)?;
                // Every change is checked before the first is made.
                for (node, state, _) in &ordered {
                    let m = known
                        .iter()
                        .find(|m| m.name == node.0)
                        .ok_or_else(|| not_a_member(node, &self.lb))?;
                    if m.activation != activation(*state)
                        && let Some(shared) = m.also_in.first()
                    {
                        return Err(shared_member(&m.name, &self.lb, shared));
                    }
                }
                for (node, state, weight) in ordered {
                    if let Some(w) = weight {
                        client.set_lbfactor(&self.lb, node.as_str(), *w).await?;
                    }
                    client
                        .set_activation(&self.lb, node.as_str(), activation(*state))
                        .await?;
                    if *state == LbState::Active {
                        client.reset(&self.lb, node.as_str()).await?;
                    }
                }
                let after = client.list(&self.lb).await?;
                for (node, state, _) in changes {
                    let seen = after
                        .iter()
                        .find(|m| m.name == node.0)
                        .map(|m| m.activation);
                    if seen != Some(activation(*state)) {
                        return Err(ModjkError::NotApplied(format!(
                            "jkstatus accepted the change but reports {node} as {seen:?}, not {state}"
                        )));
                    }
                }
                Ok(())
            }
            Backend::Urimap {
                file,
                reload,
                workers_file,
                status,
            } => {
                let lb = self.workers(workers_file)?;
                // A stopped member is enabled in two steps, stopped -> disabled -> active, each
                // confirmed. Apache's children re-read the file one by one: a child still on the
                // old file fails a *stopped* member's sticky requests over to another member,
                // which loses the sessions that already reloaded children have just created on
                // it; a *disabled* member keeps its sessions in every child.
                let current = RuleActivations::read(&read(file)?, &self.lb).unwrap_or_default();
                let via_disabled: Vec<(NodeName, LbState, Option<u32>)> = changes
                    .iter()
                    .filter(|(node, state, _)| {
                        *state == LbState::Active
                            && lb.members.iter().any(|m| {
                                m.name == node.0
                                    && current.effective(&m.name, m.activation)
                                        == Activation::Stopped
                            })
                    })
                    .map(|(node, _, _)| (node.clone(), LbState::Draining, None))
                    .collect();
                if !via_disabled.is_empty() {
                    self.rewrite_and_confirm(file, *reload, &lb, status.as_ref(), &via_disabled)
                        .await?;
                }
                self.rewrite_and_confirm(file, *reload, &lb, status.as_ref(), changes)
                    .await
            }
        }
    }

    /// Rewrites the JkMountFile's rule extensions for `changes`, then confirms each by probing.
    async fn rewrite_and_confirm(
        &self,
        file: &Path,
        reload: Duration,
        lb: &ImportedLb,
        status: Option<&StatusClient>,
        changes: &[(NodeName, LbState, Option<u32>)],
    ) -> Result<(), ModjkError> {
        let mut routes = Vec::new();
        let written_at;
        {
            let _guard = self.write_lock.lock().await;
            let text = read(file)?;
            let mut rules =
                RuleActivations::read(&text, &self.lb).ok_or_else(|| ModjkError::File {
                    path: file.to_path_buf(),
                    message: format!(
                        "no mount rule maps to `{}`; add e.g. `/app/*={}`",
                        self.lb, self.lb
                    ),
                })?;
            for (node, state, weight) in changes {
                let m = lb
                    .members
                    .iter()
                    .find(|m| m.name == node.0)
                    .ok_or_else(|| not_a_member(node, &self.lb))?;
                // The engine hands back the lbfactor it read: only a new one needs jkstatus.
                match (weight, status) {
                    (Some(w), Some(client)) => client.set_lbfactor(&self.lb, &m.name, *w).await?,
                    (Some(w), None) if *w != m.lbfactor => return Err(weight_unsupported()),
                    _ => {}
                }
                let was = rules.effective(&m.name, m.activation);
                if was != activation(*state)
                    && let Some(shared) = m.also_in.first()
                {
                    return Err(shared_member(&m.name, &self.lb, shared));
                }
                rules.set(&m.name, activation(*state), m.activation);
                // Only a member whose activation changed is confirmed: an unchanged one may
                // never get the new session the confirmation waits for.
                if rules.effective(&m.name, m.activation) != was {
                    routes.push((m.route.clone(), *state));
                }
            }
            let new = rules
                .apply(&text, &self.lb)
                .expect("the lb has a mount rule");
            if new != text {
                write_atomic(file, &new)?;
            }
            if let Some(client) = status {
                for (node, state, _) in changes {
                    if *state == LbState::Active {
                        client.reset(&self.lb, node.as_str()).await?;
                    }
                }
            }
            written_at = Instant::now();
        }
        routes.sort_by_key(|(_, state)| *state != LbState::Active);
        for (route, state) in routes {
            self.confirm(
                file,
                &route,
                state,
                written_at + reload + Duration::from_secs(1),
            )
            .await?;
        }
        Ok(())
    }

    /// Probes new sessions through Apache until the change to `route` shows, counting only probes
    /// sent once every child is due to have re-read the file (`due`): for `Active` one new
    /// session lands on it, or one request sticky to it (every other probe carries a session id
    /// of its route) is served by it, not failed over: mod_jk may send every new session to a
    /// member that came back earlier until its load value catches up, and without jkstatus
    /// nothing resets it; otherwise `confirm_requests` consecutive new sessions all avoid it.
    async fn confirm(
        &self,
        file: &Path,
        route: &str,
        state: LbState,
        due: Instant,
    ) -> Result<(), ModjkError> {
        let probe = self.probe.as_ref().expect("checked in new");
        let deadline = Instant::now() + self.confirm_timeout;
        let mut avoided = 0u32;
        let mut last = String::from("no probe answered");
        let mut sticky = false;
        while Instant::now() < deadline {
            // Only a probe sent once every child is due to re-read the file counts: a child
            // re-checks the file before it maps its next request.
            let after_due = Instant::now() >= due;
            sticky = state == LbState::Active && !sticky;
            let session = sticky.then(|| format!("{}=nonstop-probe.{route}", self.cookie));
            match self.probe_route(probe, session).await {
                Ok(Some(seen)) => {
                    let on_route = seen == route;
                    if state == LbState::Active && on_route && after_due {
                        return Ok(());
                    }
                    if on_route {
                        avoided = 0;
                    } else if after_due {
                        avoided += 1;
                        if state != LbState::Active && avoided >= self.confirm_requests {
                            return Ok(());
                        }
                    }
                    last = format!("last new session went to route `{seen}`");
                }
                Ok(None) => last = "the probe's answer set no session cookie with a route".into(),
                // mod_jk answers 503 when no member can serve (say, on a first deploy, before
                // any Tomcat runs): then the member being taken out gets no new session either.
                Err(e) if state != LbState::Active && e.ends_with("HTTP 503") => {
                    if Instant::now() >= due {
                        avoided += 1;
                        if avoided >= self.confirm_requests {
                            return Ok(());
                        }
                    }
                    last = e;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ModjkError::NotApplied(format!(
            "Apache did not apply {} (route `{route}` {state}) within {:?}: {last}; check JkMountFileReload, \
             that Apache's user can read the file, and that probe_url creates a session",
            file.display(),
            self.confirm_timeout
        )))
    }

    async fn probe_route(
        &self,
        probe: &http::Url,
        cookie: Option<String>,
    ) -> Result<Option<String>, String> {
        let headers = cookie.into_iter().map(|c| ("Cookie", c)).collect();
        let response = http::get(probe, headers, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        if response.status >= 500 {
            return Err(format!("probe answered HTTP {}", response.status));
        }
        let prefix = format!("{}=", self.cookie);
        Ok(response
            .header_values("Set-Cookie")
            .filter_map(|c| c.strip_prefix(&prefix))
            .filter_map(|c| c.split(';').next())
            .find_map(|id| id.rsplit_once('.').map(|(_, route)| route.to_string())))
    }
}

fn member(s: &StatusMember, activation: Activation) -> Member {
    Member {
        node: NodeName(s.name.clone()),
        addr: s.address.clone(),
        state: activation.lb_state(),
        weight: s.lbfactor,
        in_flight: s.busy,
        healthy: !s.state.starts_with("ERR"),
        traffic: Traffic {
            requests: s.elected,
            errors: s.errors,
            latency_ms_sum: 0.0,
        },
    }
}

fn stricter(a: Activation, b: Activation) -> Activation {
    let rank = |x: Activation| match x {
        Activation::Active => 0,
        Activation::Disabled => 1,
        Activation::Stopped => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

fn activation(state: LbState) -> Activation {
    match state {
        LbState::Active => Activation::Active,
        LbState::Draining => Activation::Disabled,
        LbState::Disabled => Activation::Stopped,
    }
}

fn not_a_member(node: &NodeName, lb: &str) -> ModjkError {
    ModjkError::Config(format!(
        "`{node}` is not a member of mod_jk worker `{lb}`; add it to `worker.{lb}.balance_workers` in \
         workers.properties and restart Apache (mod_jk cannot add members at runtime)"
    ))
}

/// A member another lb worker routes to: its mounts would keep sending to it while nonstop
/// restarts it (rule extensions act per lb worker), so nothing is changed.
/// In jkstatus mode a mount's rule extension naming a member wins over what jkstatus sets on
/// that mount, so the member's state would be told (and set) wrongly: refused, with the rule.
fn overriding_rule(lb: &str, listed: &[status::StatusMember]) -> Result<(), ModjkError> {
    let Some((member, rule)) = listed
        .iter()
        .find_map(|m| m.mount_rules.first().map(|r| (&m.name, r)))
    else {
        return Ok(());
    };
    Err(ModjkError::Config(format!(
        "mount `{}` of lb worker `{lb}` (from {}) has the rule extension `{}={member}`: on that mount it wins over the activation jkstatus sets, so nonstop would report and set `{member}` wrongly. Nothing was changed; remove the extension from that mount (`{}={lb}`; Apache re-reads a JkMountFile by itself), or use mode `uriworkermap`, which writes those extensions",
        rule.uri,
        if rule.source == "uriworkermap" {
            "the JkMountFile".to_string()
        } else {
            format!("`{}`", rule.source)
        },
        rule.extension,
        rule.uri
    )))
}

fn shared_member(member: &str, lb: &str, shared: &SharedWith) -> ModjkError {
    let only = if shared.members == 1 {
        ", as its only member"
    } else {
        ""
    };
    let seen = if shared.line == 0 {
        format!(
            "jkstatus lists it in `worker.{}.balance_workers`",
            shared.lb
        )
    } else {
        format!("workers.properties line {}", shared.line)
    };
    ModjkError::Config(format!(
        "`{member}` is also a member of lb worker `{}` ({seen}{only}): taking it out of `{lb}` would leave requests mounted on `{}` going to it while its Tomcat restarts. Nothing was changed; give `{}` its own member workers (or remove `{member}` from it), then deploy again",
        shared.lb, shared.lb, shared.lb
    ))
}

fn weight_unsupported() -> ModjkError {
    ModjkError::Config(
        "rule extensions cannot change an lbfactor (only the one in workers.properties is used): configure `status` (jkstatus) for weights"
            .into(),
    )
}

impl Balancer for ModjkBalancer {
    /// Only the status worker counts requests per member (`elected`, `errors`).
    fn reports_traffic(&self) -> bool {
        !matches!(&self.backend, Backend::Urimap { status: None, .. })
    }

    async fn members(&self) -> PortResult<Vec<Member>> {
        Ok(self.list().await?)
    }

    /// mod_jk members come from workers.properties: a known member is left as it is.
    async fn register(&self, node: &NodeName, _addr: &str) -> PortResult<()> {
        if self.list().await?.iter().any(|m| &m.node == node) {
            Ok(())
        } else {
            Err(not_a_member(node, &self.lb).into())
        }
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        Ok(self.apply(&[(node.clone(), state, None)]).await?)
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        let client = match &self.backend {
            Backend::Status(client) => client,
            Backend::Urimap {
                status: Some(client),
                ..
            } => client,
            Backend::Urimap {
                status: None,
                workers_file,
                ..
            } => {
                let configured = self.workers(workers_file)?;
                return match configured.members.iter().find(|m| m.name == node.0) {
                    Some(m) if m.lbfactor == weight => Ok(()),
                    Some(_) => Err(weight_unsupported().into()),
                    None => Err(not_a_member(node, &self.lb).into()),
                };
            }
        };
        Ok(client.set_lbfactor(&self.lb, node.as_str(), weight).await?)
    }

    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        Ok(self.apply(changes).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<ModjkConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn config_modes_parse_and_validate() {
        let c = config(
            "lb_worker = \"lb\"\nprobe_url = \"http://127.0.0.1:80/app/\"\n\
             mode = { kind = \"uriworkermap\", file = \"/etc/apache2/uriworkermap.properties\", \
             reload_secs = 5, workers_file = \"/etc/apache2/workers.properties\" }\n",
        )
        .unwrap();
        assert!(ModjkBalancer::new(c).is_ok());
        let c = config("lb_worker = \"lb\"\nmode = { kind = \"jkstatus\", url = \"http://127.0.0.1/jkstatus\", user = \"nonstop\", password_file = \"/etc/nonstop/jk.pw\" }\n").unwrap();
        assert!(ModjkBalancer::new(c).is_ok());
        let c = config("lb_worker = \"lb\"\nmode = { kind = \"jkstatus\", url = \"http://192.168.1.5/jkstatus\" }\n").unwrap();
        assert!(
            ModjkBalancer::new(c)
                .err()
                .unwrap()
                .to_string()
                .contains("loopback")
        );
        let c = config("lb_worker = \"lb\"\nmode = { kind = \"uriworkermap\", file = \"/u\", workers_file = \"/w\" }\n").unwrap();
        assert!(
            ModjkBalancer::new(c)
                .err()
                .unwrap()
                .to_string()
                .contains("probe_url")
        );
        assert!(config("lb_worker = \"lb\"\nmode = { kind = \"jkstatus\", url = \"http://127.0.0.1/\", pasword = \"x\" }\n").is_err());
        assert!(config("lb_worker = \"lb\"\ntypo = 1\nmode = { kind = \"jkstatus\", url = \"http://127.0.0.1/\" }\n").is_err());
    }
}
