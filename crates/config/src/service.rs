//! The `[services.*]` sections: what the deploy engine deploys, where, and how.
//! Everything the engine would otherwise trip over at deploy time is checked here, with file:line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::driver::{BalancerKind, DriverTable, RUNTIME_SHARED_KEYS, RuntimeKind, RuntimeShared};
use crate::{AdminEndpoint, Config, ConfigError, HostConfig, HumanDuration, Source};

/// Placeholders an argv template may use.
pub const PLACEHOLDERS: &[&str] = &["artifact", "release_dir", "version", "port", "node"];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_strategy")]
    pub strategy: Spanned<Strategy>,
    pub balancer: BalancerConfig,
    pub runtime: RuntimeConfig,
    pub releases: ReleasesConfig,
    #[serde(default)]
    pub health: ServiceHealth,
    #[serde(default)]
    pub drain: DrainConfig,
    /// How long the previous blue-green slot stays running (disabled) so a rollback is instant.
    #[serde(default = "default_keep_warm")]
    pub keep_warm: HumanDuration,
    /// How long a new instance must stay alive after it takes traffic before the deploy succeeds.
    #[serde(default = "default_verify")]
    pub verify: HumanDuration,
    #[serde(default)]
    pub rolling: RollingConfig,
    #[serde(default)]
    pub canary: CanaryConfig,
    /// How long a paused deploy waits for `nonstop promote` or `abort` before it aborts itself.
    #[serde(default = "default_pause_limit")]
    pub pause_limit: HumanDuration,
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// The operator's commands at named points of every deploy.
    #[serde(default)]
    pub hooks: crate::lifecycle::LifecycleHooks,
    /// The release's database migration, run once per deploy.
    #[serde(default)]
    pub migrate: Option<crate::lifecycle::Migration>,
    /// A header or cookie that reaches the new release before the switch (docs/strategies/canary.md).
    #[serde(default)]
    pub preview: Option<Spanned<crate::preview::PreviewConfig>>,
    /// Webhooks told when a deploy starts, ends or pauses.
    #[serde(default)]
    pub notify: Vec<Spanned<crate::notify::NotifyConfig>>,
}

fn default_strategy() -> Spanned<Strategy> {
    Spanned::new(0..0, Strategy::BlueGreen)
}

fn default_keep_warm() -> HumanDuration {
    HumanDuration::secs(600)
}

fn default_pause_limit() -> HumanDuration {
    HumanDuration::secs(3600)
}

fn default_verify() -> HumanDuration {
    HumanDuration::secs(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    BlueGreen,
    Rolling,
    Canary,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Rolling => "rolling",
            Strategy::Canary => "canary",
        }
    }

    /// Blue-green and canary start the new release on idle slots next to the live ones.
    pub fn uses_slots(self) -> bool {
        !matches!(self, Strategy::Rolling)
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue-green" | "bluegreen" => Ok(Strategy::BlueGreen),
            "rolling" => Ok(Strategy::Rolling),
            "canary" => Ok(Strategy::Canary),
            _ => Err(format!(
                "unknown strategy `{s}`; use blue-green, rolling or canary"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which balancer the engine drives: a `kind` and that driver's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    pub table: DriverTable<BalancerKind>,
    pub shared: BalancerShared,
    /// Set after loading when `kind = "builtin"`.
    pub builtin: Option<BuiltinSettings>,
}

impl<'de> Deserialize<'de> for BalancerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BalancerConfig {
            table: DriverTable::deserialize(d)?,
            shared: BalancerShared::default(),
            builtin: None,
        })
    }
}

impl BalancerConfig {
    pub fn kind(&self) -> BalancerKind {
        self.table.kind
    }
}

/// Keys every balancer table may hold besides its driver's own settings.
pub const BALANCER_SHARED_KEYS: &[&str] = &["host"];

/// The settings every balancer shares, read from the same table as the driver's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BalancerShared {
    /// The `[hosts.NAME]` the balancer runs on, driven through that host's agent; none: here.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
}

fn unknown_host(service: &str, host: &Spanned<String>, source: &Source) -> ConfigError {
    source.error_at(
        host.span(),
        format!(
            "service `{service}` names host `{}`, which this file does not define",
            host.get_ref()
        ),
        Some(format!(
            "add `[hosts.{}]` with `agent = \"IP:PORT\"`",
            host.get_ref()
        )),
    )
}

/// `kind = "builtin"`: a pool of nonstop's own proxy, changed through its admin API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuiltinSettings {
    /// The pool in the built-in proxy whose backends are this service's nodes.
    pub pool: Spanned<String>,
    /// The proxy's admin endpoint; defaults to `[proxy] admin` of the same file.
    #[serde(default)]
    pub admin: Option<AdminEndpoint>,
    /// Bearer token file for a TCP admin endpoint; defaults to `[proxy] admin_token_file`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

/// Where releases run: a `kind`, the settings all runtimes share and that driver's own.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    pub table: DriverTable<RuntimeKind>,
    /// Set after loading.
    pub shared: RuntimeShared,
    /// Set after loading when `kind = "process"`.
    pub process: Option<ProcessSettings>,
}

impl<'de> Deserialize<'de> for RuntimeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RuntimeConfig {
            table: DriverTable::deserialize(d)?,
            shared: RuntimeShared::default(),
            process: None,
        })
    }
}

impl RuntimeConfig {
    pub fn kind(&self) -> RuntimeKind {
        self.table.kind
    }

    /// The process runtime's argv template without its spans (empty for other kinds).
    pub fn argv(&self) -> Vec<String> {
        self.process
            .iter()
            .flat_map(|p| p.start.get_ref().iter().map(|a| a.get_ref().clone()))
            .collect()
    }
}

/// `kind = "process"`: a program started from an argv template, never through a shell.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    /// argv template, e.g. `["java", "-jar", "{artifact}", "--server.port={port}"]`.
    pub start: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleasesConfig {
    /// Holds `releases/<version>/`, logs and the deploy journal; relative to the config file.
    pub dir: Spanned<PathBuf>,
    /// Old releases kept on disk besides the running and the previous one.
    #[serde(default = "default_keep")]
    pub keep: Spanned<usize>,
}

fn default_keep() -> Spanned<usize> {
    Spanned::new(0..0, 5)
}

/// The health gate a new instance must pass before it gets traffic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceHealth {
    pub path: Spanned<String>,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub interval: HumanDuration,
    /// Per-try timeout.
    pub timeout: HumanDuration,
    /// Overall deadline for the gate.
    pub deadline: HumanDuration,
    /// Consecutive passes required.
    pub successes: Spanned<u32>,
}

impl Default for ServiceHealth {
    fn default() -> Self {
        ServiceHealth {
            path: Spanned::new(0..0, "/health".into()),
            expect_status: 200,
            expect_body: None,
            interval: HumanDuration::millis(250),
            timeout: HumanDuration::secs(2),
            deadline: HumanDuration::secs(60),
            successes: Spanned::new(0..0, 2),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Longest wait for in-flight requests (and sessions) to leave a node.
    pub timeout: HumanDuration,
    /// Keep a draining node until the timeout so sticky sessions can finish, not only in-flight requests.
    pub sessions: bool,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            timeout: HumanDuration::secs(30),
            sessions: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RollingConfig {
    /// Nodes taken out of the pool at the same time.
    pub max_unavailable: Spanned<usize>,
    /// Wait for `nonstop promote` after the first batch serves the new release.
    pub pause_after_first_batch: bool,
}

impl Default for RollingConfig {
    fn default() -> Self {
        RollingConfig {
            max_unavailable: Spanned::new(0..0, 1),
            pause_after_first_batch: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// The Prometheus server the `analysis` queries run against.
    pub prometheus: Option<crate::analysis::PrometheusSource>,
    /// PromQL queries judged at the end of every canary step, beside the balancer's counters.
    pub analysis: Vec<crate::analysis::AnalysisQuery>,
    /// Share of new requests the canary gets during the watch window, in percent (1-99).
    pub weight: Spanned<u32>,
    /// How long the canary is watched before it is promoted.
    pub window: HumanDuration,
    /// Largest share of failed requests (5xx or connection errors) allowed above the old release's.
    pub max_error_rate: Spanned<f64>,
    /// Largest ratio of the canary's mean latency to the old release's.
    pub max_latency_ratio: Spanned<f64>,
    /// Fewer canary requests than this in the window makes the verdict "not enough data".
    pub min_requests: u64,
    /// What a window without enough data does: wait for a person (`pause`) or `abort`.
    pub inconclusive: Inconclusive,
    /// Several watched steps, e.g. `[{ weight = 5, for = "2m" }, { pause = true },
    /// { weight = 25, for = "5m" }]`; each timed step is judged on its own window, a pause waits
    /// for `nonstop promote`, the last step is followed by the promotion. Empty: one step of
    /// `weight` for `window`.
    pub steps: Vec<CanaryStep>,
}

/// What a canary window with too little data to judge does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Inconclusive {
    /// Wait for a person to promote or abort (up to `pause_limit`, then abort).
    #[default]
    Pause,
    /// Roll back at once.
    Abort,
}

/// One step of a canary: a share of new requests for a while, then a verdict on that window;
/// or a pause that waits for a person.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    pub weight: Option<Spanned<u32>>,
    #[serde(rename = "for")]
    pub duration: Option<HumanDuration>,
    pub pause: Option<Spanned<bool>>,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            prometheus: None,
            analysis: Vec::new(),
            weight: Spanned::new(0..0, 10),
            window: HumanDuration::secs(30),
            max_error_rate: Spanned::new(0..0, 0.01),
            max_latency_ratio: Spanned::new(0..0, 3.0),
            min_requests: 0,
            inconclusive: Inconclusive::Pause,
            steps: Vec::new(),
        }
    }
}

/// One instance slot: a name (its backend name in the pool) and the port the app listens on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: Spanned<String>,
    pub port: Spanned<u16>,
    /// The `[hosts.NAME]` whose agent runs this node; none: this machine.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// The IP the node listens on, resolved from its host on load.
    #[serde(skip)]
    pub address: Option<String>,
}

impl NodeConfig {
    /// The IP the balancer and the health gate reach this node at.
    pub fn ip(&self) -> &str {
        self.address.as_deref().unwrap_or("127.0.0.1")
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip(), self.port.get_ref())
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_ref().map(|h| h.get_ref().as_str())
    }
}

impl ServiceConfig {
    /// The admin endpoint of the built-in proxy this service's balancer talks to.
    pub fn admin_endpoint(&self, config: &Config) -> Option<AdminEndpoint> {
        self.balancer
            .builtin
            .as_ref()
            .and_then(|b| b.admin.clone())
            .or_else(|| config.proxy.as_ref().map(|p| p.admin.clone()))
    }

    pub fn admin_token_file(&self, config: &Config) -> Option<PathBuf> {
        let own = self.balancer.builtin.as_ref();
        own.and_then(|b| b.admin_token_file.clone()).or_else(|| {
            config
                .proxy
                .as_ref()
                .and_then(|p| p.admin_token_file.clone())
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name.get_ref() == name)
    }

    /// Reads the settings of the drivers this crate knows (builtin, process) and the runtime's
    /// shared settings, with their spans; other drivers read theirs with `DriverTable::settings`.
    pub(crate) fn resolve(
        &mut self,
        name: &str,
        hosts: &BTreeMap<String, HostConfig>,
        source: &Source,
    ) -> Result<(), ConfigError> {
        self.resolve_hosts(name, hosts, source)?;
        self.hooks.check(name, source)?;
        if let Some(migrate) = &self.migrate {
            migrate.check(name, source)?;
        }
        if let Some(preview) = &self.preview {
            preview.get_ref().check(name, &self.strategy, source)?;
        }
        for hook in &self.notify {
            hook.get_ref().check(name, hook.span(), source)?;
        }
        let path = ["services", name, "runtime"];
        self.runtime.shared = self
            .runtime
            .table
            .settings(source, &path, |k| RUNTIME_SHARED_KEYS.contains(&k))?;
        if let Some(relative) = self
            .runtime
            .shared
            .env_files
            .iter()
            .find(|p| !p.is_absolute())
        {
            return Err(source.error_at(
                self.runtime.table.span.clone(),
                format!(
                    "service `{name}`: env file `{}` is not an absolute path",
                    relative.display()
                ),
                Some(
                    "give the full path on the host where the instances run, e.g. env_files = [\"/etc/nonstop/shop.env\"]"
                        .into(),
                ),
            ));
        }
        let driver_only = |k: &str| !RUNTIME_SHARED_KEYS.contains(&k);
        if self.runtime.kind() == RuntimeKind::Process {
            self.runtime.process = Some(self.runtime.table.settings(source, &path, driver_only)?);
        }
        let path = ["services", name, "balancer"];
        self.balancer.shared = self
            .balancer
            .table
            .settings(source, &path, |k| BALANCER_SHARED_KEYS.contains(&k))?;
        if let Some(host) = &self.balancer.shared.host
            && !hosts.contains_key(host.get_ref())
        {
            return Err(unknown_host(name, host, source));
        }
        if self.balancer.kind() == BalancerKind::Builtin {
            self.balancer.builtin = Some(
                self.balancer
                    .table
                    .settings(source, &path, |k| !BALANCER_SHARED_KEYS.contains(&k))?,
            );
        }
        Ok(())
    }

    /// Gives each node the address of its host; a service runs all on hosts or all here.
    fn resolve_hosts(
        &mut self,
        name: &str,
        hosts: &BTreeMap<String, HostConfig>,
        source: &Source,
    ) -> Result<(), ConfigError> {
        let placed = self.nodes.iter().filter(|n| n.host.is_some()).count();
        if placed != 0 && placed != self.nodes.len() {
            let here = self
                .nodes
                .iter()
                .find(|n| n.host.is_none())
                .expect("some node has no host");
            return Err(source.error_at(
                here.name.span(),
                format!(
                    "service `{name}`: node `{}` has no `host` while other nodes do",
                    here.name.get_ref()
                ),
                Some(
                    "give every node a `host`; for this machine, run an agent here and name it in [hosts]"
                        .into(),
                ),
            ));
        }
        for node in &mut self.nodes {
            if let Some(host) = &node.host {
                let Some(config) = hosts.get(host.get_ref()) else {
                    return Err(unknown_host(name, host, source));
                };
                node.address = Some(config.address());
            }
        }
        Ok(())
    }

    /// Whether this service's nodes run on agents' hosts.
    pub fn on_hosts(&self) -> bool {
        self.nodes.iter().any(|n| n.host.is_some())
    }

    fn validate_builtin(
        &self,
        name: &str,
        builtin: &BuiltinSettings,
        config: &Config,
        source: &Source,
    ) -> Result<(), ConfigError> {
        let pool = &builtin.pool;
        if config.proxy.is_some() && !config.pools.contains_key(pool.get_ref()) {
            return Err(source.error_at(
                pool.span(),
                format!(
                    "service `{name}` uses pool `{}`, which this file does not define",
                    pool.get_ref()
                ),
                Some(format!(
                    "add a `[pools.{}]` section (it may have no backends; the engine adds them)",
                    pool.get_ref()
                )),
            ));
        }
        if self.admin_endpoint(config).is_none() {
            return Err(source.error_at(
                self.balancer.table.span.clone(),
                format!("service `{name}`: the builtin balancer needs the proxy's admin endpoint"),
                Some("add `admin = \"unix:/run/nonstop/admin.sock\"` to the balancer table, or a [proxy] section to this file".into()),
            ));
        }
        Ok(())
    }

    pub(crate) fn validate(
        &self,
        name: &str,
        config: &Config,
        source: &Source,
    ) -> Result<(), ConfigError> {
        let here = |span: std::ops::Range<usize>, msg: String, hint: &str| {
            source.error_at(span, msg, Some(hint.to_string()))
        };
        if let Some(builtin) = &self.balancer.builtin {
            self.validate_builtin(name, builtin, config, source)?;
        }
        if let Some(process) = &self.runtime.process {
            validate_process(name, process, source)?;
        }
        crate::analysis::check(name, &self.canary, source)?;
        if *self.releases.keep.get_ref() == 0 {
            return Err(here(
                self.releases.keep.span(),
                format!("service `{name}`: `keep = 0` would delete the release a rollback needs"),
                "keep at least 1 old release",
            ));
        }
        if self.releases.dir.get_ref().as_os_str().is_empty() {
            return Err(here(
                self.releases.dir.span(),
                format!("service `{name}`: `releases.dir` is empty"),
                "give a directory nonstop may write, e.g. \"/var/lib/nonstop/shop\"",
            ));
        }
        if !self.health.path.get_ref().starts_with('/') {
            return Err(here(
                self.health.path.span(),
                format!(
                    "service `{name}`: health path `{}` does not start with /",
                    self.health.path.get_ref()
                ),
                "write it like \"/health\"",
            ));
        }
        if *self.health.successes.get_ref() == 0 {
            return Err(here(
                self.health.successes.span(),
                format!("service `{name}`: `successes = 0` would let any instance through"),
                "require at least 1 consecutive success",
            ));
        }
        if *self.rolling.max_unavailable.get_ref() == 0 {
            return Err(here(
                self.rolling.max_unavailable.span(),
                format!("service `{name}`: `max_unavailable = 0` lets a rolling deploy do nothing"),
                "use 1 (one node at a time) or more",
            ));
        }
        for step in &self.canary.steps {
            let shape = (&step.weight, &step.duration, &step.pause);
            let ok = matches!(shape, (Some(_), Some(_), None))
                || matches!(shape, (None, None, Some(p)) if *p.get_ref());
            if !ok {
                let span = step
                    .weight
                    .as_ref()
                    .map(|w| w.span())
                    .or(step.pause.as_ref().map(|p| p.span()))
                    .unwrap_or(self.strategy.span());
                return Err(here(
                    span,
                    format!("service `{name}`: a canary step is either timed or a pause"),
                    "write `{ weight = 10, for = \"2m\" }` or `{ pause = true }`",
                ));
            }
        }
        let weights = std::iter::once(&self.canary.weight)
            .chain(self.canary.steps.iter().filter_map(|s| s.weight.as_ref()));
        for spanned in weights {
            let weight = *spanned.get_ref();
            if !(1..=99).contains(&weight) {
                return Err(here(
                    spanned.span(),
                    format!("service `{name}`: canary weight {weight} is outside 1..=99"),
                    "it is the canary's share of traffic in percent, e.g. 10",
                ));
            }
        }
        let rate = *self.canary.max_error_rate.get_ref();
        if !(0.0..=1.0).contains(&rate) {
            return Err(here(
                self.canary.max_error_rate.span(),
                format!("service `{name}`: max_error_rate {rate} is not a fraction"),
                "write it between 0 and 1, e.g. 0.01 for 1 %",
            ));
        }
        if *self.canary.max_latency_ratio.get_ref() < 1.0 {
            return Err(here(
                self.canary.max_latency_ratio.span(),
                format!("service `{name}`: max_latency_ratio below 1 fails every canary"),
                "use 1.5 or more",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for node in &self.nodes {
            let node_name = node.name.get_ref();
            if node_name.is_empty()
                || !node_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(here(
                    node.name.span(),
                    format!("service `{name}`: node name `{node_name}` is not a plain name"),
                    "use letters, digits, - and _ (it becomes a backend name and a file name)",
                ));
            }
            if !names.insert(node_name.clone()) {
                return Err(here(
                    node.name.span(),
                    format!("service `{name}`: node `{node_name}` is listed twice"),
                    "give each node its own name",
                ));
            }
            let port = *node.port.get_ref();
            // Nodes on different hosts may share a port; on one host they cannot.
            if port == 0 || !ports.insert((node.host().map(str::to_string), port)) {
                return Err(here(
                    node.port.span(),
                    format!(
                        "service `{name}`: port {port} of node `{node_name}` is zero or taken by another node on its host"
                    ),
                    "give each node its own fixed port",
                ));
            }
        }
        let needed = if self.strategy.get_ref().uses_slots() {
            2
        } else {
            1
        };
        if self.nodes.len() < needed {
            return Err(here(
                self.strategy.span(),
                format!(
                    "service `{name}`: strategy {} needs at least {needed} node(s), found {}",
                    self.strategy.get_ref(),
                    self.nodes.len()
                ),
                "add [[services.NAME.nodes]] entries with `name` and `port` (blue-green: one per slot, e.g. blue and green)",
            ));
        }
        Ok(())
    }
}

fn validate_process(
    name: &str,
    process: &ProcessSettings,
    source: &Source,
) -> Result<(), ConfigError> {
    let here = |span: std::ops::Range<usize>, msg: String, hint: &str| {
        source.error_at(span, msg, Some(hint.to_string()))
    };
    let start = &process.start;
    let Some(program) = start.get_ref().first() else {
        return Err(here(
            start.span(),
            format!("service `{name}`: `start` is empty"),
            "give the command as an argv array, e.g. [\"java\", \"-jar\", \"{artifact}\", \"--server.port={port}\"]",
        ));
    };
    if program.get_ref().trim().is_empty() {
        return Err(here(
            program.span(),
            format!("service `{name}`: the program in `start` is empty"),
            "the first element must be the program to run",
        ));
    }
    for arg in start.get_ref() {
        if let Err(bad) = check_placeholders(arg.get_ref()) {
            return Err(here(
                arg.span(),
                format!("service `{name}`: unknown placeholder `{{{bad}}}` in `start`"),
                &format!("placeholders are {{{}}}", PLACEHOLDERS.join("}, {")),
            ));
        }
    }
    Ok(())
}

/// Checks that every `{name}` in `arg` is a known placeholder; returns the first unknown one.
pub fn check_placeholders(arg: &str) -> Result<(), String> {
    match nonstop_ports::template::unknown_placeholder(arg, PLACEHOLDERS) {
        Some(bad) => Err(bad),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::parse;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
admin = "unix:/tmp/admin.sock"

[pools.shop]

[services.shop]
strategy = "blue-green"
balancer = { kind = "builtin", pool = "shop" }
runtime = { kind = "process", start = ["java", "-jar", "{artifact}", "--server.port={port}"], env = { JAVA_OPTS = "-Xmx1g" } }
releases = { dir = "/var/lib/nonstop/shop", keep = 3 }
health = { path = "/health", expect_body = "UP", interval = "500ms", deadline = "30s" }
drain = { timeout = "10s", sessions = true }

[[services.shop.nodes]]
name = "blue"
port = 8081

[[services.shop.nodes]]
name = "green"
port = 8082
"#;

    #[test]
    fn canary_steps_are_timed_or_pauses() {
        let with = |steps: &str| {
            GOOD.replace(
                "drain = { timeout = \"10s\", sessions = true }",
                &format!("drain = {{ timeout = \"10s\" }}\ncanary = {{ steps = {steps} }}"),
            )
        };
        let config = parse(&with(
            r#"[{ weight = 5, for = "1m" }, { pause = true }, { weight = 50, for = "2m" }]"#,
        ))
        .unwrap();
        let canary = &config.services["shop"].canary;
        assert_eq!(canary.steps.len(), 3);
        assert!(canary.steps[1].pause.is_some());
        for bad in [
            r#"[{ weight = 5 }]"#,
            r#"[{ pause = true, weight = 5, for = "1m" }]"#,
            r#"[{ pause = false }]"#,
        ] {
            let err = parse(&with(bad)).unwrap_err();
            assert!(
                err.message.contains("either timed or a pause"),
                "{bad}: {err}"
            );
            assert_eq!(err.line, 15, "{bad}: {err}");
        }
    }

    #[test]
    fn full_service_parses_with_defaults() {
        let config = parse(GOOD).unwrap();
        let shop = &config.services["shop"];
        assert_eq!(shop.nodes.len(), 2);
        assert_eq!(*shop.releases.keep.get_ref(), 3);
        assert_eq!(*shop.health.successes.get_ref(), 2);
        assert_eq!(
            shop.admin_endpoint(&config).unwrap().to_string(),
            "unix:/tmp/admin.sock"
        );
    }

    #[test]
    fn unknown_pool_points_at_its_line() {
        let err = parse(&GOOD.replace("pool = \"shop\"", "pool = \"shpo\"")).unwrap_err();
        assert_eq!(err.line, 10, "{err}");
        assert!(err.hint.unwrap().contains("[pools.shpo]"));
    }

    #[test]
    fn unknown_placeholder_is_refused() {
        let err = parse(&GOOD.replace("{port}", "{prot}")).unwrap_err();
        assert!(err.message.contains("{prot}"), "{err}");
        assert_eq!(err.line, 11);
        assert_eq!(err.column, 70, "points at the argument itself: {err}");
    }

    #[test]
    fn duplicate_port_and_single_slot_are_refused() {
        let err = parse(&GOOD.replace("8082", "8081")).unwrap_err();
        assert_eq!(err.line, 22, "{err}");
        let one_node = GOOD
            .split("[[services.shop.nodes]]\nname = \"green\"")
            .next()
            .unwrap();
        let err = parse(one_node).unwrap_err();
        assert!(err.message.contains("at least 2"), "{err}");
        assert_eq!(err.line, 9, "{err}");
    }

    #[test]
    fn unknown_field_and_bad_strategy_name_the_line() {
        let err = parse(&GOOD.replace("keep = 3", "keep = 3, kep = 1")).unwrap_err();
        assert_eq!(err.line, 12, "{err}");
        let err = parse(&GOOD.replace("\"blue-green\"", "\"blue_green\"")).unwrap_err();
        assert_eq!(err.line, 9, "{err}");
    }

    #[test]
    fn no_admin_endpoint_is_refused() {
        let text = GOOD
            .replace(
                "[proxy]\nlisten = \"127.0.0.1:8080\"\nadmin = \"unix:/tmp/admin.sock\"\n",
                "",
            )
            .replace("[pools.shop]\n", "");
        let err = parse(&text).unwrap_err();
        assert!(err.hint.unwrap().contains("admin ="), "{}", err.message);
    }

    #[test]
    fn driver_tables_name_kind_and_field_errors_with_their_line() {
        let err = parse(&GOOD.replace("kind = \"builtin\"", "kind = \"f5\"")).unwrap_err();
        assert_eq!(err.line, 10, "{err}");
        assert!(
            err.message.contains("builtin, nginx, haproxy, modjk"),
            "{err}"
        );
        let err = parse(&GOOD.replace("pool = \"shop\"", "pol = \"shop\"")).unwrap_err();
        assert_eq!(err.line, 10, "{err}");
        assert!(err.message.contains("pol"), "{err}");
        let err = parse(&GOOD.replace("env = {", "stop_grace = \"soon\", env = {")).unwrap_err();
        assert_eq!(err.line, 11, "{err}");
    }

    #[test]
    fn runtime_shared_settings_are_read_next_to_the_driver_ones() {
        let config = parse(&GOOD.replace("env = {", "stop_grace = \"3s\", env = {")).unwrap();
        let runtime = &config.services["shop"].runtime;
        assert_eq!(
            runtime.shared.stop_grace.0,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(runtime.shared.env["JAVA_OPTS"], "-Xmx1g");
        assert_eq!(runtime.argv()[0], "java");
        assert_eq!(
            runtime.shared.inherit_env,
            nonstop_ports::InheritEnv::default()
        );
    }

    #[test]
    fn inherit_env_is_all_or_a_list_and_a_bad_word_names_its_line() {
        let config =
            parse(&GOOD.replace("env = {", "inherit_env = [\"JAVA_HOME\"], env = {")).unwrap();
        assert_eq!(
            config.services["shop"].runtime.shared.inherit_env,
            nonstop_ports::InheritEnv::Names(vec!["JAVA_HOME".into()])
        );
        let config = parse(&GOOD.replace("env = {", "inherit_env = \"all\", env = {")).unwrap();
        assert_eq!(
            config.services["shop"].runtime.shared.inherit_env,
            nonstop_ports::InheritEnv::All
        );
        let err = parse(&GOOD.replace("env = {", "inherit_env = \"most\", env = {")).unwrap_err();
        assert_eq!(err.line, 11, "{err}");
        assert!(err.message.contains("expected \"all\""), "{err}");
    }
}
