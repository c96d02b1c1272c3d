//! The `nginx` balancer driver: nonstop owns one include file holding one `upstream { }` block (or,
//! in the blue-green `set $VAR` style, one `set $VAR http://ADDR;` line) and changes it by atomic
//! write with backup → `nginx -t` → SIGHUP → confirmed new workers (docs/balancers/nginx.md).

mod access_log;
mod conf;
mod config;
mod files;
mod proc;
mod render;

use std::path::PathBuf;

use nonstop_ports::{Balancer, LbState, Member, NodeName, PortError, PortResult};
use tokio::process::Command;

pub use access_log::{AccessLog, LOG_FORMAT};
pub use config::NginxConfig;
pub use render::{DesiredMember, DesiredSet, parse_variable, render};

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("nginx rejected the new {target} (the previous {include} is restored):\n{message}")]
    Rejected {
        target: String,
        include: String,
        message: String,
    },
    #[error(
        "nginx's own configuration is broken outside nonstop's include {include} (`nginx -t` fails with the previous include too); nothing was changed. Fix nginx's configuration, check it with `nginx -t`, then deploy again. nginx said:\n{message}"
    )]
    Broken { include: String, message: String },
    #[error("`nginx -t` fails as nginx is configured now; fix it before deploying:\n{0}")]
    Unchecked(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("nginx did not reload: {0}")]
    Reload(String),
}

impl NginxError {
    /// nginx or the host is broken whatever the deploy does: nginx's config elsewhere, no nginx
    /// binary, no running master, a file nonstop cannot write.
    pub fn is_environment(&self) -> bool {
        matches!(
            self,
            NginxError::Broken { .. }
                | NginxError::Unchecked(_)
                | NginxError::Io { .. }
                | NginxError::Spawn { .. }
                | NginxError::Reload(_)
        )
    }
}

impl From<NginxError> for PortError {
    fn from(e: NginxError) -> Self {
        if e.is_environment() {
            PortError::environment(e.to_string())
        } else {
            PortError::new(e.to_string())
        }
    }
}

/// One upstream of one nginx instance.
#[derive(Debug)]
pub struct NginxBalancer {
    config: NginxConfig,
    /// Serialises this process's changes; the file lock serialises other processes.
    local: tokio::sync::Mutex<()>,
    /// The master's pid file once found (`pid_file`, `nginx -T` or the build default).
    pid_file: tokio::sync::OnceCell<PathBuf>,
    /// Where per-member traffic comes from, when configured.
    access_log: Option<AccessLog>,
}

impl NginxBalancer {
    pub fn new(config: NginxConfig) -> Result<Self, NginxError> {
        config.check()?;
        Ok(NginxBalancer {
            pid_file: tokio::sync::OnceCell::new_with(config.pid_file.clone()),
            access_log: config.access_log.clone().map(AccessLog::new),
            config,
            local: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &NginxConfig {
        &self.config
    }

    /// The desired set as last applied (from the state file beside the include).
    pub async fn desired(&self) -> Result<DesiredSet, NginxError> {
        files::read_state(&files::state_path(&self.config.include)).await
    }

    /// Reads the set, lets `edit` change it, and applies it; nothing is written if `edit` fails.
    /// `edit` also gets the value the include's `set $VAR` line has now (`set $VAR` style).
    async fn change<F>(&self, edit: F) -> Result<(), NginxError>
    where
        F: FnOnce(&mut DesiredSet, Option<&str>) -> Result<(), NginxError>,
    {
        let _local = self.local.lock().await;
        let _lock = files::lock(&self.config.include).await?;
        let state_path = files::state_path(&self.config.include);
        let mut set = files::read_state(&state_path).await?;
        let current = files::read_text(&self.config.include).await?;
        let value = match &self.config.variable {
            Some(v) => current.as_deref().and_then(|t| parse_variable(t, v)),
            None => None,
        };
        if set == DesiredSet::default() && self.config.variable.is_some() {
            // Day one over an existing setup: the line the operator's script wrote is what serves.
            set.adopted = value.clone();
        }
        let before = set.clone();
        edit(&mut set, value.as_deref())?;
        if set == before {
            return Ok(());
        }
        if self.config.variable.is_some() && active_moved(&before, &set) {
            // nonstop switched between its own members: the operator's old target is history.
            set.adopted = None;
        }
        let text = render(&self.config, &set, current.as_deref())?;
        match current.as_deref() {
            // nginx would read the new file as it reads the one it runs: no test, no reload
            // (a reload closes every idle keep-alive connection of the old workers).
            Some(old) if conf::same_directives(old, &text) => {
                if old != text {
                    files::replace_with_backup(&self.config.include, text.as_bytes()).await?;
                }
            }
            _ => self.apply(&text, current.as_deref()).await?,
        }
        files::write_atomic(&state_path, &serde_json::to_vec_pretty(&set).expect("json")).await
    }

    /// Writes the include, validates it with nginx, reloads and waits for the new workers.
    async fn apply(&self, text: &str, current: Option<&str>) -> Result<(), NginxError> {
        let include = &self.config.include;
        let previous = files::replace_with_backup(include, text.as_bytes()).await?;
        let restore = || async {
            match &previous {
                Some(old) => files::write_atomic(include, old).await,
                None => files::remove(include).await,
            }
        };
        let test = self.nginx(&["-T"]).await?;
        if !test.success {
            restore().await?;
            let message = test.stderr.trim().to_string();
            if self.broken_without_us(current.is_some(), &message).await? {
                return Err(NginxError::Broken {
                    include: include.display().to_string(),
                    message,
                });
            }
            return Err(NginxError::Rejected {
                target: self.config.target(),
                include: include.display().to_string(),
                message,
            });
        }
        let pid_file = self
            .pid_file
            .get_or_try_init(|| self.find_pid_file(&test.stdout))
            .await?;
        if let Err(e) = proc::reload(pid_file, self.config.reload_timeout).await {
            // The running nginx still has the old set: keep the file saying so.
            restore().await?;
            return Err(e);
        }
        Ok(())
    }

    /// For `config check`: nginx runs, `nginx -t` passes as configured now, and the include's
    /// directory exists; returns what was verified. Nothing is changed.
    pub async fn check_environment(&self) -> Result<String, NginxError> {
        let include = &self.config.include;
        let dir = include.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            return Err(NginxError::Io {
                what: "no directory for the include",
                path: dir.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let test = self.nginx(&["-t"]).await?;
        if !test.success {
            return Err(NginxError::Unchecked(test.stderr.trim().to_string()));
        }
        let mut found = format!(
            "`{} -t` passes; nonstop writes {}",
            self.config.nginx.join(" "),
            include.display()
        );
        if let Some(log) = &self.access_log {
            log.counts().await?;
            found.push_str(&format!(
                "; the canary reads access log {} (`{LOG_FORMAT}`)",
                log.path().display()
            ));
        }
        Ok(found)
    }

    /// Whether `nginx -t` fails for a reason outside nonstop's change: it still fails with the
    /// previous include back (or, with no previous include, its error names another file).
    async fn broken_without_us(&self, restored: bool, message: &str) -> Result<bool, NginxError> {
        if restored {
            return Ok(!self.nginx(&["-t"]).await?.success);
        }
        let include = self.config.include.display().to_string();
        Ok(!message.contains(&include))
    }

    async fn find_pid_file(&self, dump: &str) -> Result<PathBuf, NginxError> {
        if let Some(path) = proc::pid_from_dump(dump) {
            return Ok(self.prefixed(path));
        }
        let version = self.nginx(&["-V"]).await?;
        proc::pid_from_build(&version.stderr)
            .map(|p| self.prefixed(p))
            .ok_or_else(|| {
                NginxError::Reload(
                    "no `pid` directive in the config and no --pid-path in `nginx -V`; set pid_file"
                        .into(),
                )
            })
    }

    /// Relative paths in nginx are relative to its prefix (`-p`).
    fn prefixed(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            return path;
        }
        let argv = &self.config.nginx;
        match argv.iter().position(|a| a == "-p") {
            Some(i) if i + 1 < argv.len() => PathBuf::from(&argv[i + 1]).join(path),
            _ => path,
        }
    }

    async fn nginx(&self, args: &[&str]) -> Result<Output, NginxError> {
        let argv = &self.config.nginx;
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| NginxError::Spawn {
                argv: format!("{} {}", argv.join(" "), args.join(" ")),
                source,
            })?;
        Ok(Output {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// One member active before and another one after.
fn active_moved(before: &DesiredSet, after: &DesiredSet) -> bool {
    let active = |set: &DesiredSet| -> Vec<NodeName> {
        set.members
            .iter()
            .filter(|m| m.state == LbState::Active)
            .map(|m| m.node.clone())
            .collect()
    };
    matches!((active(before).as_slice(), active(after).as_slice()), ([a], [b]) if a != b)
}

fn member<'a>(
    set: &'a mut DesiredSet,
    node: &NodeName,
) -> Result<&'a mut DesiredMember, NginxError> {
    let name = set.upstream.clone();
    set.members
        .iter_mut()
        .find(|m| m.node == *node)
        .ok_or_else(|| {
            NginxError::Invalid(format!(
                "`{name}` has no member `{node}`; register it first"
            ))
        })
}

impl Balancer for NginxBalancer {
    fn plan_notes(&self, strategy: &str, nodes: usize) -> Vec<String> {
        vec![self.config.mode_summary(strategy, nodes)]
    }

    fn reports_traffic(&self) -> bool {
        self.access_log.is_some()
    }

    /// nginx OSS has no per-server counters: traffic comes from the access log, if configured.
    /// A member taken out of the set is still reached by the workers of earlier generations
    /// until they have finished their requests and exited, so each of them counts as one
    /// request in flight on every member that is not active.
    async fn members(&self) -> PortResult<Vec<Member>> {
        let set = self.desired().await?;
        let counts = match &self.access_log {
            Some(log) => log.counts().await?,
            None => Default::default(),
        };
        let old_workers = match self.pid_file.get() {
            Some(pid_file) => proc::old_workers(pid_file).await.unwrap_or(0),
            None => 0,
        };
        Ok(set
            .members
            .into_iter()
            .map(|m| Member {
                state: m.state,
                weight: m.weight,
                in_flight: if m.state == LbState::Active {
                    0
                } else {
                    old_workers as i64
                },
                healthy: true,
                traffic: counts.get(&m.addr).copied().unwrap_or_default(),
                node: m.node,
                addr: m.addr,
            })
            .collect())
    }

    async fn register(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        render::check_addr(addr)?;
        render::check_name(node.as_str())?;
        let name = self.config.set_name();
        let variable_style = self.config.variable.is_some();
        self.change(|set, value| {
            set.upstream = name;
            // `set $VAR` style with nothing active yet: a member at the address the line
            // points at is what nginx sends everything to, so it is active already.
            let state = if variable_style
                && value == Some(render::url_of(addr).as_str())
                && !set.members.iter().any(|m| m.state == LbState::Active)
            {
                LbState::Active
            } else {
                LbState::Disabled
            };
            match set.members.iter_mut().find(|m| m.node == *node) {
                Some(m) if m.addr == addr => {}
                Some(m) => {
                    m.addr = addr.to_string();
                    m.state = state;
                }
                None => set.members.push(DesiredMember {
                    node: node.clone(),
                    addr: addr.to_string(),
                    state,
                    weight: 1,
                }),
            }
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        self.change(|set, _| {
            member(set, node)?.state = state;
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        self.change(|set, _| {
            member(set, node)?.weight = weight;
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    /// One file, one reload: every worker generation sees either the old or the new set.
    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        self.change(|set, _| {
            for (node, state, weight) in changes {
                let m = member(set, node)?;
                m.state = *state;
                if let Some(w) = weight {
                    m.weight = *w;
                }
            }
            Ok(())
        })
        .await
        .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver whose nginx cannot run: any change that needs `nginx -t` or a reload fails.
    fn without_nginx(dir: &std::path::Path, variable: bool) -> NginxBalancer {
        let nginx = vec![dir.join("no-nginx-here").display().to_string()];
        let include = dir.join("app.conf");
        let config = if variable {
            NginxConfig::with_variable(include, "service_url", nginx)
        } else {
            NginxConfig::new(include, "app", nginx)
        };
        NginxBalancer::new(config).unwrap()
    }

    #[tokio::test]
    async fn day_one_registration_over_the_same_set_line_needs_no_reload() {
        let dir = tempfile::tempdir().unwrap();
        let lb = without_nginx(dir.path(), true);
        let operator = "# written by deploy.sh\nset $service_url http://127.0.0.1:8081;  # blue\n";
        std::fs::write(&lb.config.include, operator).unwrap();
        lb.register(&NodeName::from("blue"), "127.0.0.1:8081")
            .await
            .unwrap();
        lb.register(&NodeName::from("green"), "127.0.0.1:8082")
            .await
            .unwrap();
        let text = std::fs::read_to_string(&lb.config.include).unwrap();
        assert!(text.starts_with("# Managed by nonstop"), "{text}");
        assert!(conf::same_directives(&text, operator), "{text}");
        let states: Vec<LbState> = lb
            .desired()
            .await
            .unwrap()
            .members
            .iter()
            .map(|m| m.state)
            .collect();
        assert_eq!(states, [LbState::Active, LbState::Disabled]);
        // Moving the line does need nginx: the missing binary is an environment error.
        let err: PortError = lb
            .switch(&[
                (NodeName::from("green"), LbState::Active, None),
                (NodeName::from("blue"), LbState::Draining, None),
            ])
            .await
            .unwrap_err();
        assert!(err.is_environment(), "{err}");
    }

    #[tokio::test]
    async fn draining_to_disabled_changes_only_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let lb = without_nginx(dir.path(), false);
        let n1 = NodeName::from("n1");
        let set = DesiredSet {
            upstream: "app".into(),
            adopted: None,
            members: [("n1", LbState::Draining), ("n2", LbState::Active)]
                .iter()
                .enumerate()
                .map(|(i, (node, state))| DesiredMember {
                    node: NodeName::from(*node),
                    addr: format!("127.0.0.1:{}", 8081 + i),
                    state: *state,
                    weight: 1,
                })
                .collect(),
        };
        let text = render(&lb.config, &set, None).unwrap();
        std::fs::write(&lb.config.include, &text).unwrap();
        let state = files::state_path(&lb.config.include);
        std::fs::write(&state, serde_json::to_vec(&set).unwrap()).unwrap();
        lb.set_state(&n1, LbState::Disabled).await.unwrap();
        assert_eq!(std::fs::read_to_string(&lb.config.include).unwrap(), text);
        let members = lb.members().await.unwrap();
        assert_eq!(members[0].state, LbState::Disabled);
        // Weight 0 is `down` too: neither it nor `active` at weight 0 changes what nginx reads.
        lb.set_weight(&n1, 0).await.unwrap();
        lb.set_state(&n1, LbState::Active).await.unwrap();
        assert_eq!(std::fs::read_to_string(&lb.config.include).unwrap(), text);
        // Serving again does: that needs nginx, which is missing here (an environment error).
        let err: PortError = lb.set_weight(&n1, 1).await.unwrap_err();
        assert!(err.is_environment(), "{err}");
    }

    #[tokio::test]
    async fn the_environment_check_says_when_nginx_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = without_nginx(dir.path(), false)
            .check_environment()
            .await
            .unwrap_err();
        assert!(err.is_environment(), "{err}");
        assert!(err.to_string().contains("cannot run"), "{err}");
        let config = NginxConfig::new("/no/such/dir/app.conf", "app", vec!["nginx".into()]);
        let err = NginxBalancer::new(config)
            .unwrap()
            .check_environment()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn the_mode_summary_names_the_reloads_and_the_way_to_zero() {
        let config = NginxConfig::new("/x/app.conf", "app", vec!["nginx".into()]);
        let rolling = config.mode_summary("rolling", 3);
        assert!(rolling.contains("upstream `app`"), "{rolling}");
        assert!(rolling.contains("6 reloads per deploy"), "{rolling}");
        assert!(rolling.contains("nonstop proxy"), "{rolling}");
        assert!(
            config
                .mode_summary("blue-green", 2)
                .contains("1 reload per deploy")
        );
    }

    #[test]
    fn environment_errors_are_told_from_rejected_changes() {
        let broken = NginxError::Broken {
            include: "/x/app.conf".into(),
            message: "nginx: [emerg] unknown directive \"bogus\" in /x/nginx.conf:3".into(),
        };
        let port: PortError = broken.into();
        assert!(port.is_environment());
        assert!(
            port.to_string().contains("unknown directive \"bogus\""),
            "{port}"
        );
        let rejected = NginxError::Rejected {
            target: "upstream `app`".into(),
            include: "/x/app.conf".into(),
            message: "invalid port".into(),
        };
        assert!(!PortError::from(rejected).is_environment());
    }
}
