//! The Tomcat runtime, one Tomcat (CATALINA_BASE) per node, in one of two ways:
//!
//! - `deploy = "restart"` (the default): installs the WAR into `webapps/` (keeping the previous
//!   one), restarts that Tomcat as a supervised `catalina.sh run` child, and waits for the app;
//! - `deploy = "manager"`: the Tomcat keeps running (started once with `catalina.sh run` if it is
//!   not) and the WAR is deployed through its Manager text API ([`manager`]), either in place
//!   (`update=true`) or beside the running one as a Tomcat parallel deployment
//!   (`parallel = true`: `CONTEXT##VERSION`, new sessions go to the newest version, existing
//!   sessions stay on theirs until the old version is undeployed).

mod environment;
mod foreign;
mod managed;
pub mod manager;

pub use environment::{BasesChecked, check_bases};

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nonstop_http_client as http;
use nonstop_ports::{
    ForeignHolder, Instance, InstanceSpec, NodeName, PortError, PortResult, Replacement, Runtime,
    Sessions,
};
use serde::Deserialize;

use managed::check_password_file;
use manager::Listed;

/// Log lines with which Tomcat reports that the context did not start, or that a connector
/// (say the AJP one the balancer talks to) could not bind: Tomcat then keeps running and the
/// HTTP health path answers, but a balancer in front of that connector cannot reach the node.
const FAILURE_MARKERS: [&str; 6] = [
    "One or more listeners failed to start",
    "startup failed due to previous errors",
    "Error deploying web application archive",
    "One or more Filters failed to start",
    "Failed to initialize component [Connector[",
    "Failed to start component [Connector[",
];

/// The runtime's config (`runtime = { kind = "tomcat", ... }` minus the kind).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TomcatConfig {
    #[serde(default = "default_home")]
    pub catalina_home: PathBuf,
    /// Node name → that Tomcat's CATALINA_BASE (conf/server.xml, webapps/, logs/).
    pub bases: BTreeMap<String, PathBuf>,
    /// The context's WAR name without `.war`: `app` serves `/app`, `ROOT` serves `/`.
    pub context: String,
    /// Path on the Tomcat's own HTTP port that answers 200 once the app is up; default `/{context}/`.
    #[serde(default)]
    pub health_path: Option<String>,
    /// Extra JVM options, passed as CATALINA_OPTS.
    #[serde(default)]
    pub java_opts: Vec<String>,
    /// Node name → JVM options for that node only, after `java_opts` (say `-DjvmRoute=tomcat1`).
    #[serde(default)]
    pub node_java_opts: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: String,
    /// `restart` (WAR into webapps/, restart Tomcat) or `manager` (the Manager text API).
    #[serde(default)]
    pub deploy: DeployMode,
    /// Manager mode: the text API, `{port}` the node's port; default [`DEFAULT_MANAGER_URL`].
    #[serde(default)]
    pub manager_url: Option<String>,
    /// Manager mode: per-node URLs that replace `manager_url`.
    #[serde(default)]
    pub manager_urls: BTreeMap<String, String>,
    /// Manager mode: a user with the role `manager-script`.
    #[serde(default)]
    pub manager_user: Option<String>,
    /// Manager mode: a file holding that user's password (never the password in the config).
    #[serde(default)]
    pub manager_password_file: Option<PathBuf>,
    /// Manager mode: Tomcat parallel deployment (`CONTEXT##VERSION`).
    #[serde(default)]
    pub parallel: bool,
}

impl Default for TomcatConfig {
    fn default() -> Self {
        TomcatConfig {
            catalina_home: default_home(),
            bases: BTreeMap::new(),
            context: String::new(),
            health_path: None,
            java_opts: Vec::new(),
            node_java_opts: BTreeMap::new(),
            startup_timeout: default_startup_timeout(),
            deploy: DeployMode::default(),
            manager_url: None,
            manager_urls: BTreeMap::new(),
            manager_user: None,
            manager_password_file: None,
            parallel: false,
        }
    }
}

/// How a WAR gets into a running Tomcat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// Copy the WAR into `webapps/` and restart that Tomcat.
    #[default]
    Restart,
    /// Deploy through the Manager text API; the Tomcat keeps running.
    Manager,
}

/// The settings of `deploy = "manager"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// The manager's text API; `{port}` is the node's port. Default
    /// `http://127.0.0.1:{port}/manager/text`.
    pub url: String,
    /// Per-node URLs that replace `url`.
    pub urls: BTreeMap<String, String>,
    /// A user with the role `manager-script`.
    pub user: String,
    /// A file holding that user's password (one line); never readable by everyone.
    pub password_file: PathBuf,
    /// Tomcat parallel deployment: `CONTEXT##VERSION` beside the running version.
    pub parallel: bool,
}

/// Default [`ManagerConfig::url`].
pub const DEFAULT_MANAGER_URL: &str = "http://127.0.0.1:{port}/manager/text";

impl TomcatConfig {
    /// The longest a `start` may take, for a caller that waits on it from afar (an agent's
    /// client): restart mode waits once for `startup_timeout`; manager mode up to four times
    /// (the server, the deploy call with a minute more, the context, its health path).
    pub fn start_budget(&self) -> Option<Duration> {
        let once = parse_duration(&self.startup_timeout)?;
        Some(match self.deploy {
            DeployMode::Restart => once,
            DeployMode::Manager => once * 4 + Duration::from_secs(60),
        })
    }

    /// With `deploy = "manager"`, the manager's settings, checked for completeness; `None` in
    /// restart mode (where the manager keys only count sessions: [`Self::session_manager`]).
    pub fn manager_config(&self) -> Result<Option<ManagerConfig>, TomcatError> {
        match self.deploy {
            DeployMode::Restart => {
                if self.parallel {
                    return Err(TomcatError::Config(
                        "`parallel` is only used with deploy = \"manager\" (this runtime restarts Tomcat)"
                            .into(),
                    ));
                }
                self.session_manager().map(|_| None)
            }
            DeployMode::Manager => self.manager_keys("deploy = \"manager\"").map(Some),
        }
    }

    /// The manager that counts a node's open sessions, so a session drain ends when they reach
    /// 0: manager mode's own, or in restart mode the one the manager keys name (none without).
    pub fn session_manager(&self) -> Result<Option<ManagerConfig>, TomcatError> {
        match self.deploy {
            DeployMode::Manager => self.manager_config(),
            DeployMode::Restart => {
                let any = self.manager_url.is_some()
                    || !self.manager_urls.is_empty()
                    || self.manager_user.is_some()
                    || self.manager_password_file.is_some();
                if !any {
                    return Ok(None);
                }
                self.manager_keys("counting sessions in restart mode (manager_*)")
                    .map(Some)
            }
        }
    }

    fn manager_keys(&self, purpose: &str) -> Result<ManagerConfig, TomcatError> {
        let user = self.manager_user.clone().ok_or_else(|| {
            TomcatError::Config(format!(
                "{purpose} needs manager_user (a user with the role manager-script)"
            ))
        })?;
        let password_file = self.manager_password_file.clone().ok_or_else(|| {
            TomcatError::Config(format!(
                "{purpose} needs manager_password_file (a file holding the password; never the \
                 password itself in the config)"
            ))
        })?;
        Ok(ManagerConfig {
            url: self
                .manager_url
                .clone()
                .unwrap_or_else(|| DEFAULT_MANAGER_URL.to_string()),
            urls: self.manager_urls.clone(),
            user,
            password_file,
            parallel: self.parallel,
        })
    }
}

fn default_home() -> PathBuf {
    PathBuf::from("/usr/share/tomcat10")
}
fn default_startup_timeout() -> String {
    "120s".into()
}

#[derive(Debug, thiserror::Error)]
pub enum TomcatError {
    #[error("tomcat runtime config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("Tomcat manager {url}: {message}")]
    Manager { url: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("Tomcat {node} failed to start the app: {reason}; last log lines of {log}:\n{tail}")]
    StartFailed {
        node: String,
        reason: String,
        log: String,
        tail: String,
    },
}

impl From<TomcatError> for PortError {
    fn from(e: TomcatError) -> Self {
        PortError::new(e.to_string())
    }
}

/// Tomcat instances, one CATALINA_BASE per node.
#[derive(Debug, Clone)]
pub struct TomcatRuntime {
    config: TomcatConfig,
    startup_timeout: Duration,
    manager: Option<ManagerConfig>,
    /// Restart mode: the manager that counts open sessions for a session drain.
    counter: Option<ManagerConfig>,
    /// Recent `list` answers by manager URL: `is_running` is polled every few milliseconds
    /// during the engine's verify window.
    lists: ListCache,
    /// The service's `env` and `inherit_env` (docs/lifecycle.md).
    env: nonstop_runtime_process::ServiceEnv,
}

/// What catalina.sh reads to find its JVM: inherited whatever `inherit_env` says.
const CATALINA_INPUTS: &[&str] = &["JAVA_HOME", "JRE_HOME"];

/// `list` answers by manager URL, with when they came.
type ListCache = std::sync::Arc<std::sync::Mutex<BTreeMap<String, (Instant, Vec<Listed>)>>>;

/// How long a `list` answer is reused by `is_running`.
const LIST_CACHE: Duration = Duration::from_millis(250);
/// Timeout of the manager call that counts sessions: a drain polls it and has its own timeout.
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one manager call other than deploy.
const MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

impl TomcatRuntime {
    /// From the whole `runtime = { kind = "tomcat", ... }` table, in the mode its `deploy` names.
    pub fn new(config: TomcatConfig) -> Result<TomcatRuntime, TomcatError> {
        match config.manager_config()? {
            Some(manager) => TomcatRuntime::with_manager(config, manager),
            None => {
                let counter = config.session_manager()?;
                let mut runtime = TomcatRuntime::restarting(config)?;
                if let Some(m) = counter {
                    runtime.check_manager(&m)?;
                    runtime.counter = Some(m);
                }
                Ok(runtime)
            }
        }
    }

    /// `deploy = "manager"`: deploys through the Manager text API of a Tomcat that keeps running.
    pub fn with_manager(
        config: TomcatConfig,
        manager: ManagerConfig,
    ) -> Result<TomcatRuntime, TomcatError> {
        let mut runtime = TomcatRuntime::restarting(config)?;
        if runtime.config.context.contains('#') {
            return Err(TomcatError::Config(format!(
                "context `{}`: with deploy = \"manager\" name the context without `##`; \
                 parallel = true adds `##VERSION` itself",
                runtime.config.context
            )));
        }
        runtime.check_manager(&manager)?;
        runtime.manager = Some(manager);
        Ok(runtime)
    }

    /// A manager's settings that a config check cannot judge alone: its user, loopback URLs and
    /// a private password file.
    fn check_manager(&self, m: &ManagerConfig) -> Result<(), TomcatError> {
        if m.user.is_empty() || m.user.contains([':', '\r', '\n']) {
            return Err(TomcatError::Config(format!(
                "manager_user `{}` must be a non-empty name without `:`",
                m.user
            )));
        }
        for (node, url) in std::iter::once(("*", &m.url))
            .chain(m.urls.iter().map(|(node, url)| (node.as_str(), url)))
        {
            if node != "*" && !self.config.bases.contains_key(node) {
                return Err(TomcatError::Config(format!(
                    "manager_urls names node `{node}`, which has no CATALINA_BASE in `bases`"
                )));
            }
            let parsed = http::Url::parse(&url.replace("{port}", "1"))
                .map_err(|e| TomcatError::Config(format!("manager_url `{url}`: {e}")))?;
            // Basic auth over plain HTTP: only where it cannot be sniffed. A remote Tomcat is
            // deployed to by the nonstop agent on its own host.
            if !parsed.is_loopback() {
                return Err(TomcatError::Config(format!(
                    "manager_url `{url}` is not on loopback: the manager password would cross the \
                     network in clear text; run `nonstop agent` on the Tomcat's host instead"
                )));
            }
        }
        check_password_file(&m.password_file)?;
        Ok(())
    }

    /// Restart mode, whatever `config.deploy` says.
    fn restarting(config: TomcatConfig) -> Result<TomcatRuntime, TomcatError> {
        let startup_timeout = parse_duration(&config.startup_timeout).ok_or_else(|| {
            TomcatError::Config(format!(
                "startup_timeout `{}` is not a duration like \"90s\"",
                config.startup_timeout
            ))
        })?;
        if config.context.is_empty()
            || !config
                .context
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '#'))
        {
            return Err(TomcatError::Config(format!(
                "context `{}` must be a WAR name such as `app` or `ROOT`",
                config.context
            )));
        }
        if let Some(node) = config
            .node_java_opts
            .keys()
            .find(|n| !config.bases.contains_key(*n))
        {
            return Err(TomcatError::Config(format!(
                "node_java_opts names node `{node}`, which has no CATALINA_BASE in `bases`"
            )));
        }
        let catalina = config.catalina_home.join("bin/catalina.sh");
        if !catalina.is_file() {
            return Err(TomcatError::Config(format!(
                "{} not found: set catalina_home (Debian: apt-get install tomcat10)",
                catalina.display()
            )));
        }
        Ok(TomcatRuntime {
            config,
            startup_timeout,
            manager: None,
            counter: None,
            lists: Default::default(),
            env: Default::default(),
        })
    }

    /// Instances get `env` (the service's `env` and `inherit_env`) instead of the bare baseline.
    pub fn with_env(mut self, env: nonstop_runtime_process::ServiceEnv) -> Self {
        self.env = env;
        self
    }

    fn base(&self, node: &NodeName) -> Result<&Path, TomcatError> {
        self.config
            .bases
            .get(node.as_str())
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                TomcatError::Config(format!("no CATALINA_BASE configured for node `{node}`"))
            })
    }

    fn war(&self, base: &Path) -> PathBuf {
        base.join("webapps")
            .join(format!("{}.war", self.config.context))
    }

    /// The WAR that was installed before the last deploy of `node`, kept for rollback.
    pub fn previous_war(&self, node: &NodeName) -> Option<PathBuf> {
        let path = self.base(node).ok()?.join("nonstop/previous.war");
        path.is_file().then_some(path)
    }

    fn health_path(&self) -> String {
        self.config.health_path.clone().unwrap_or_else(|| {
            if self.config.context == "ROOT" {
                "/".into()
            } else {
                format!("/{}/", self.config.context.replace('#', "/"))
            }
        })
    }

    /// Puts `artifact` in place as the context WAR; the old WAR becomes `nonstop/previous.war`.
    pub fn install(&self, node: &NodeName, artifact: &Path) -> Result<(), TomcatError> {
        let base = self.base(node)?;
        let keep = base.join("nonstop");
        let err = |path: &Path, message: String| TomcatError::File {
            path: path.to_path_buf(),
            message,
        };
        for dir in [&keep, &base.join("webapps")] {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, format!("cannot create: {e}")))?;
        }
        // Copied aside first, so installing the backup itself (a rollback) cannot clobber it.
        let incoming = keep.join("incoming.war");
        copy_synced(artifact, &incoming).map_err(|e| {
            err(
                artifact,
                format!("cannot copy to {}: {e}", incoming.display()),
            )
        })?;
        let war = self.war(base);
        if war.is_file() {
            std::fs::rename(&war, keep.join("previous.war"))
                .map_err(|e| err(&war, format!("cannot back up: {e}")))?;
        }
        // Tomcat would otherwise keep serving a stale exploded directory.
        let exploded = base.join("webapps").join(&self.config.context);
        if exploded.is_dir() {
            std::fs::remove_dir_all(&exploded)
                .map_err(|e| err(&exploded, format!("cannot remove: {e}")))?;
        }
        std::fs::rename(&incoming, &war).map_err(|e| err(&war, format!("cannot install: {e}")))?;
        Ok(())
    }

    /// `java_opts`, then the node's own `node_java_opts`, then the port and version nonstop passes.
    fn catalina_opts(&self, spec: &InstanceSpec) -> Vec<String> {
        let mut opts = self.config.java_opts.clone();
        if let Some(own) = self.config.node_java_opts.get(spec.node.as_str()) {
            opts.extend(own.iter().cloned());
        }
        opts.push(format!("-Dnonstop.http.port={}", spec.port));
        opts.push(format!("-Dnonstop.version={}", spec.version));
        opts
    }

    fn launch(&self, spec: &InstanceSpec, base: &Path) -> Result<(Instance, u64), TomcatError> {
        for dir in ["logs", "temp", "work", "webapps"] {
            let path = base.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| TomcatError::File {
                path: path.clone(),
                message: format!("cannot create: {e}"),
            })?;
        }
        let opts = self.catalina_opts(spec);
        let mut command = Command::new(self.config.catalina_home.join("bin/catalina.sh"));
        command
            .arg("run")
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| CATALINA_INPUTS.contains(&k.as_str())))
            .envs(nonstop_runtime_process::instance_env(spec, &self.env))
            .env("CATALINA_HOME", &self.config.catalina_home)
            .env("CATALINA_BASE", base)
            .env("CATALINA_TMPDIR", base.join("temp"))
            .env("CATALINA_OPTS", opts.join(" "))
            .current_dir(base);
        let header = format!(
            "--- nonstop: starting Tomcat {} with {} {}",
            spec.node, self.config.context, spec.version
        );
        // catalina.sh `run` execs the JVM, so this pid is Tomcat itself.
        let started = nonstop_runtime_process::spawn_detached(&mut command, &spec.log, &header)
            .map_err(|e| TomcatError::Config(format!("cannot run catalina.sh: {e}")))?;
        let (pid, start_ticks, offset) = (started.pid, started.start_ticks, started.log_offset);
        Ok((
            Instance {
                node: spec.node.clone(),
                version: spec.version.clone(),
                port: spec.port,
                pid,
                start_ticks,
                log: spec.log.clone(),
            },
            offset,
        ))
    }

    /// Waits until the health path answers 200 from this JVM and every connector of
    /// `base/conf/server.xml` listens, the log shows the context or a connector failed, or time
    /// runs out.
    async fn wait_ready(
        &self,
        instance: &Instance,
        base: &Path,
        log_offset: u64,
    ) -> Result<(), TomcatError> {
        let connectors = connector_ports(base, instance.port);
        // A connector with bindOnInit="false" binds only when it starts, after the one before it.
        const LATE_BIND: Duration = Duration::from_secs(2);
        let mut healthy_since: Option<Instant> = None;
        let url = http::Url::parse(&format!(
            "http://127.0.0.1:{}{}",
            instance.port,
            self.health_path()
        ))
        .map_err(|e| TomcatError::Config(format!("health_path: {e}")))?;
        let deadline = Instant::now() + self.startup_timeout;
        let mut last = String::from("no answer yet");
        let fail = |reason: String| TomcatError::StartFailed {
            node: instance.node.to_string(),
            reason,
            log: instance.log.display().to_string(),
            tail: nonstop_runtime_process::log_tail(&instance.log, log_offset, 15),
        };
        while Instant::now() < deadline {
            if !nonstop_runtime_process::is_running(instance) {
                return Err(fail("the JVM exited".into()));
            }
            let logged = read_from(&instance.log, log_offset);
            if let Some(line) = logged
                .lines()
                .find(|l| FAILURE_MARKERS.iter().any(|m| l.contains(m)))
            {
                // The whole line: it names the context or connector that failed.
                let line: String = line.trim().chars().take(300).collect();
                return Err(fail(format!("Tomcat logged \"{line}\"")));
            }
            match http::get(&url, Vec::new(), Duration::from_secs(5)).await {
                // Only this JVM's answer counts: another process may hold the port while this
                // Tomcat failed to bind it.
                Ok(r)
                    if r.status == 200
                        && !nonstop_runtime_process::listens_on(instance.pid, instance.port) =>
                {
                    last = format!(
                        "port {} answers, but not from this Tomcat (pid {}): another process holds it",
                        instance.port, instance.pid
                    );
                }
                Ok(r) if r.status == 200 => {
                    let missing: Vec<u16> = connectors
                        .iter()
                        .copied()
                        .filter(|&p| !nonstop_runtime_process::listens_on(instance.pid, p))
                        .collect();
                    if missing.is_empty() {
                        return Ok(());
                    }
                    let since = *healthy_since.get_or_insert_with(Instant::now);
                    last = format!(
                        "the app answers, but its connector on port {missing:?} (conf/server.xml) \
                         does not listen: a balancer in front of it cannot reach this node — is the \
                         port taken by another process?"
                    );
                    if since.elapsed() > LATE_BIND {
                        return Err(fail(last));
                    }
                }
                Ok(r) => last = format!("{} answered HTTP {}", url.path, r.status),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(fail(format!(
            "not healthy within {:?}: {last}",
            self.startup_timeout
        )))
    }
}

impl Runtime for TomcatRuntime {
    /// A Tomcat of the node's CATALINA_BASE that nonstop did not start (an operator's, a
    /// distribution's service): its pid and how that base stops gracefully.
    fn foreign_holder(&self, node: &NodeName, port: u16) -> Option<ForeignHolder> {
        let base = self.base(node).ok()?;
        let pid = foreign::tomcat_of_base(base)?;
        let catalina = self.config.catalina_home.join("bin/catalina.sh");
        Some(ForeignHolder {
            what: format!(
                "a Tomcat of {node}'s CATALINA_BASE {} (pid {pid}, on port {port})",
                base.display()
            ),
            stop: match foreign::shutdown_port(base) {
                Some(_) => format!(
                    "CATALINA_BASE={} {} stop",
                    base.display(),
                    catalina.display()
                ),
                // No shutdown port: SIGTERM is Tomcat's graceful stop.
                None => format!("kill {pid}"),
            },
        })
    }

    /// Restart mode: `StopFirst` (the node's Tomcat is stopped, its port freed). Manager mode:
    /// the Tomcat keeps its port — `Beside` with `parallel` (`CONTEXT##VERSION` next to the
    /// running version), `InPlace` without (`update=true`).
    fn replacement(&self) -> Replacement {
        match &self.manager {
            None => Replacement::StopFirst,
            Some(m) if m.parallel => Replacement::Beside,
            Some(_) => Replacement::InPlace,
        }
    }

    /// Restart mode: installs `spec.artifact` as the context WAR, starts that Tomcat and waits for
    /// the app; on failure the Tomcat is stopped again and `previous_war` holds the WAR to restore.
    /// Manager mode: see [`TomcatRuntime::manager_start`].
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        if let Some(m) = &self.manager {
            return Ok(self.manager_start(spec, m).await?);
        }
        let base = self.base(&spec.node)?.to_path_buf();
        if std::net::TcpStream::connect(("127.0.0.1", spec.port)).is_ok() {
            return Err(PortError::new(format!(
                "port {} is already in use: stop the running Tomcat {} before deploying to it",
                spec.port, spec.node
            )));
        }
        self.install(&spec.node, &spec.artifact)?;
        let (instance, offset) = self.launch(spec, &base)?;
        if let Err(e) = self.wait_ready(&instance, &base, offset).await {
            let _ = nonstop_runtime_process::stop(&instance, Duration::from_secs(20)).await;
            // The JVM's main thread can be a zombie while its other threads still close the
            // connectors: the start has failed only once the port is free again.
            let freed = Instant::now() + Duration::from_secs(10);
            while std::net::TcpListener::bind(("127.0.0.1", spec.port)).is_err()
                && Instant::now() < freed
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Err(e.into());
        }
        Ok(instance)
    }

    /// Restart mode: SIGTERM (Tomcat's shutdown hook stops connectors and lets requests finish),
    /// SIGKILL after `grace`. Manager mode: see [`TomcatRuntime::manager_stop`].
    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        if let Some(m) = &self.manager {
            return Ok(self.manager_stop(instance, m, grace).await?);
        }
        nonstop_runtime_process::stop(instance, grace).await
    }

    /// Restart mode: the JVM is alive. Manager mode: the JVM is alive (when nonstop started it)
    /// and the manager lists this version's context as running.
    async fn is_running(&self, instance: &Instance) -> bool {
        match &self.manager {
            Some(m) => self.manager_is_running(instance, m).await,
            None => nonstop_runtime_process::is_running(instance),
        }
    }

    /// The active sessions of the context, from the node's manager (`list`); `None` without a
    /// manager or when it does not answer (a drain then waits for its timeout).
    async fn sessions(&self, node: &NodeName, port: u16) -> Option<Sessions> {
        let m = self.manager.as_ref().or(self.counter.as_ref())?;
        let manager = self.manager_of(m, node.as_str(), port);
        let listed = manager.list(SESSIONS_TIMEOUT).await.ok()?;
        Some(Sessions {
            open: self.ours(&listed).map(|l| l.sessions).sum(),
            source: format!(
                "Tomcat manager, context {}",
                manager::context_path(&self.config.context)
            ),
        })
    }
}

/// The ports of the `<Connector>`s in `base/conf/server.xml` that can be known here: literal
/// numbers, and `${nonstop.http.port}` (the node's `port`, which nonstop passes in).
fn connector_ports(base: &Path, http_port: u16) -> Vec<u16> {
    let Ok(xml) = std::fs::read_to_string(base.join("conf/server.xml")) else {
        return Vec::new();
    };
    let xml = strip_xml_comments(&xml);
    xml.split("<Connector")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            let value = tag.split("port=\"").nth(1)?.split('"').next()?;
            match value {
                "${nonstop.http.port}" => Some(http_port),
                _ => value.parse::<u16>().ok().filter(|&p| p > 0),
            }
        })
        .collect()
}

fn strip_xml_comments(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("-->")
            .map_or("", |end| &rest[start + end + 3..]);
    }
    out.push_str(rest);
    out
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

fn copy_synced(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> TomcatRuntime {
        TomcatRuntime {
            config: TomcatConfig {
                catalina_home: default_home(),
                bases: [("t1".to_string(), dir.to_path_buf())].into(),
                context: "app".into(),
                startup_timeout: "60s".into(),
                ..TomcatConfig::default()
            },
            startup_timeout: Duration::from_secs(60),
            manager: None,
            counter: None,
            lists: Default::default(),
            env: Default::default(),
        }
    }

    #[test]
    fn a_nodes_own_java_opts_follow_the_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut tomcat = runtime(dir.path());
        tomcat.config.java_opts = vec!["-Xmx256m".into()];
        tomcat.config.node_java_opts =
            [("t1".to_string(), vec!["-DjvmRoute=t1".to_string()])].into();
        let spec = |node: &str| InstanceSpec {
            node: NodeName::from(node),
            port: 8080,
            version: nonstop_ports::Version::from("7"),
            release_dir: dir.path().into(),
            artifact: dir.path().join("app.war"),
            env: Default::default(),
            log: dir.path().join("log"),
        };
        assert_eq!(
            tomcat.catalina_opts(&spec("t1")),
            [
                "-Xmx256m",
                "-DjvmRoute=t1",
                "-Dnonstop.http.port=8080",
                "-Dnonstop.version=7"
            ]
        );
        assert_eq!(
            tomcat.catalina_opts(&spec("t2")).len(),
            3,
            "t2 has none of its own"
        );
        let mut config = tomcat.config.clone();
        config.node_java_opts = [("t9".to_string(), vec![])].into();
        let e = TomcatRuntime::new(config).unwrap_err().to_string();
        assert!(e.contains("node_java_opts names node `t9`"), "{e}");
    }

    #[tokio::test]
    async fn a_health_answer_from_another_process_on_the_port_is_not_ours() {
        use std::io::{Read, Write};
        let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = stranger.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in stranger.incoming().flatten() {
                let _ = conn.read(&mut [0u8; 1024]);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mut rt = runtime(dir.path());
        rt.startup_timeout = Duration::from_millis(800);
        // Stands in for a Tomcat that never bound its HTTP port.
        let mut jvm = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = jvm.id() as i32;
        let instance = Instance {
            node: NodeName::from("t1"),
            version: nonstop_ports::Version::from("v1"),
            port,
            pid,
            start_ticks: nonstop_runtime_process::start_ticks(pid).unwrap(),
            log: dir.path().join("t1.log"),
        };
        let result = rt.wait_ready(&instance, dir.path(), 0).await;
        let _ = jvm.kill();
        let _ = jvm.wait();
        let error = result.expect_err("a stranger's 200 is not this Tomcat being ready");
        assert!(
            error.to_string().contains("not from this Tomcat"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_app_that_answers_while_a_connector_does_not_listen_is_not_started() {
        use std::io::{Read, Write};
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = http.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in http.incoming().flatten() {
                let _ = conn.read(&mut [0u8; 1024]);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            }
        });
        let ajp = nonstop_testkit::free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::write(
            dir.path().join("conf/server.xml"),
            format!(
                "<Server><Service><Connector port=\"${{nonstop.http.port}}\" /><Connector port=\"{ajp}\" protocol=\"AJP/1.3\" /></Service></Server>"
            ),
        )
        .unwrap();
        let mut rt = runtime(dir.path());
        rt.startup_timeout = Duration::from_secs(10);
        // This test process stands in for the JVM: it answers on the HTTP port, not on `ajp`.
        let me = std::process::id() as i32;
        let instance = Instance {
            node: NodeName::from("t1"),
            version: nonstop_ports::Version::from("v1"),
            port,
            pid: me,
            start_ticks: nonstop_runtime_process::start_ticks(me).unwrap(),
            log: dir.path().join("t1.log"),
        };
        let started = Instant::now();
        let error = rt
            .wait_ready(&instance, dir.path(), 0)
            .await
            .expect_err("a node whose AJP connector does not listen is not ready");
        assert!(
            error
                .to_string()
                .contains(&format!("connector on port [{ajp}]")),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not the startup timeout"
        );
    }

    #[test]
    fn connector_ports_are_read_from_server_xml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::write(
            dir.path().join("conf/server.xml"),
            r#"<Server port="-1"><Service name="Catalina">
  <!-- <Connector port="7000" protocol="HTTP/1.1" /> -->
  <Connector port="${nonstop.http.port}" address="127.0.0.1" protocol="HTTP/1.1" />
  <Connector port="8009" address="127.0.0.1" protocol="AJP/1.3" secret="s" />
  <Connector port="${other.port}" protocol="HTTP/1.1" />
</Service></Server>"#,
        )
        .unwrap();
        assert_eq!(connector_ports(dir.path(), 8080), vec![8080, 8009]);
        assert!(connector_ports(&dir.path().join("none"), 8080).is_empty());
    }

    #[test]
    fn install_keeps_the_previous_war_and_can_reinstall_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let node = NodeName::from("t1");
        let (v1, v2) = (dir.path().join("v1.war"), dir.path().join("v2.war"));
        std::fs::write(&v1, "one").unwrap();
        std::fs::write(&v2, "two").unwrap();
        rt.install(&node, &v1).unwrap();
        assert!(rt.previous_war(&node).is_none());
        std::fs::create_dir_all(dir.path().join("webapps/app/WEB-INF")).unwrap();
        rt.install(&node, &v2).unwrap();
        assert!(
            !dir.path().join("webapps/app").exists(),
            "the stale exploded dir is removed"
        );
        let previous = rt.previous_war(&node).unwrap();
        assert_eq!(std::fs::read_to_string(&previous).unwrap(), "one");
        rt.install(&node, &previous).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("webapps/app.war")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(rt.previous_war(&node).unwrap()).unwrap(),
            "two"
        );
    }

    #[test]
    fn config_is_strict() {
        let ok: TomcatConfig =
            toml::from_str("context = \"app\"\nbases = { tomcat1 = \"/srv/t1\" }\n").unwrap();
        assert_eq!(ok.catalina_home, default_home());
        assert!(
            toml::from_str::<TomcatConfig>("context = \"app\"\nbases = {}\nport = 1\n").is_err()
        );
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    }

    #[test]
    fn a_start_budget_counts_the_waits_of_each_mode() {
        let mut config = TomcatConfig {
            startup_timeout: "30s".into(),
            ..TomcatConfig::default()
        };
        assert_eq!(config.start_budget(), Some(Duration::from_secs(30)));
        config.deploy = DeployMode::Manager;
        assert_eq!(config.start_budget(), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn manager_settings_are_checked() {
        let parse = |extra: &str| {
            toml::from_str::<TomcatConfig>(&format!(
                "context = \"app\"\nbases = {{ t1 = \"/srv/t1\" }}\n{extra}"
            ))
            .unwrap()
            .manager_config()
        };
        let m = parse("").unwrap();
        assert!(m.is_none(), "restart is the default");
        let e = parse("parallel = true").unwrap_err().to_string();
        assert!(
            e.contains("`parallel` is only used with deploy = \"manager\""),
            "{e}"
        );
        let e = parse("deploy = \"manager\"").unwrap_err().to_string();
        assert!(e.contains("needs manager_user"), "{e}");
        let m = parse(
            "deploy = \"manager\"\nmanager_user = \"deployer\"\nmanager_password_file = \"/etc/pw\"\nparallel = true",
        )
        .unwrap();
        let m = m.unwrap();
        assert_eq!(m.url, DEFAULT_MANAGER_URL);
        assert!(m.parallel);
        assert!(
            toml::from_str::<TomcatConfig>(
                "context = \"app\"\nbases = {}\nmanager_password = \"x\"\n"
            )
            .is_err(),
            "no password in the config"
        );
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = runtime(dir.path()).config;
        let manager = |url: &str| ManagerConfig {
            url: url.into(),
            urls: Default::default(),
            user: "deployer".into(),
            password_file: pw.clone(),
            parallel: false,
        };
        assert!(TomcatRuntime::with_manager(config.clone(), manager(DEFAULT_MANAGER_URL)).is_ok());
        let e = TomcatRuntime::with_manager(config, manager("http://10.0.0.5:8080/manager/text"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not on loopback"), "{e}");
    }
}
