//! The `[services.*]` sections: what the deploy engine deploys, where, and how.
//! Everything the engine would otherwise trip over at deploy time is checked here, with file:line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{AdminEndpoint, Config, ConfigError, HumanDuration, Source};

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
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
}

fn default_strategy() -> Spanned<Strategy> {
    Spanned::new(0..0, Strategy::BlueGreen)
}

fn default_keep_warm() -> HumanDuration {
    HumanDuration::secs(600)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerKind {
    Builtin,
}

/// Which balancer the engine drives. (A struct with a `kind`, not a tagged enum, so spans survive.)
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    pub kind: Spanned<BalancerKind>,
    /// The pool in the built-in proxy whose backends are this service's nodes.
    pub pool: Spanned<String>,
    /// The proxy's admin endpoint; defaults to `[proxy] admin` of the same file.
    #[serde(default)]
    pub admin: Option<AdminEndpoint>,
    /// Bearer token file for a TCP admin endpoint; defaults to `[proxy] admin_token_file`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    Process,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub kind: Spanned<RuntimeKind>,
    /// argv template, e.g. `["java", "-jar", "{artifact}", "--server.port={port}"]`. Never run by a shell.
    pub start: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Time between SIGTERM and SIGKILL when stopping an instance.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: HumanDuration,
}

impl RuntimeConfig {
    /// The argv template without its spans.
    pub fn argv(&self) -> Vec<String> {
        self.start
            .get_ref()
            .iter()
            .map(|a| a.get_ref().clone())
            .collect()
    }
}

fn default_stop_grace() -> HumanDuration {
    HumanDuration::secs(10)
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
}

impl Default for RollingConfig {
    fn default() -> Self {
        RollingConfig {
            max_unavailable: Spanned::new(0..0, 1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// Share of new requests the canary gets during the watch window, in percent (1-99).
    pub weight: Spanned<u32>,
    /// How long the canary is watched before it is promoted.
    pub window: HumanDuration,
    /// Largest share of failed requests (5xx or connection errors) allowed above the old release's.
    pub max_error_rate: Spanned<f64>,
    /// Largest ratio of the canary's mean latency to the old release's.
    pub max_latency_ratio: Spanned<f64>,
    /// Fewer canary requests than this in the window makes the verdict "not enough data": abort.
    pub min_requests: u64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            weight: Spanned::new(0..0, 10),
            window: HumanDuration::secs(30),
            max_error_rate: Spanned::new(0..0, 0.01),
            max_latency_ratio: Spanned::new(0..0, 3.0),
            min_requests: 0,
        }
    }
}

/// One instance slot: a name (its backend name in the pool) and the port the app listens on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: Spanned<String>,
    pub port: Spanned<u16>,
}

impl NodeConfig {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port.get_ref())
    }
}

impl ServiceConfig {
    /// The admin endpoint of the built-in proxy this service's balancer talks to.
    pub fn admin_endpoint(&self, config: &Config) -> Option<AdminEndpoint> {
        self.balancer
            .admin
            .clone()
            .or_else(|| config.proxy.as_ref().map(|p| p.admin.clone()))
    }

    pub fn admin_token_file(&self, config: &Config) -> Option<PathBuf> {
        self.balancer.admin_token_file.clone().or_else(|| {
            config
                .proxy
                .as_ref()
                .and_then(|p| p.admin_token_file.clone())
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name.get_ref() == name)
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
        let pool = &self.balancer.pool;
        if config.proxy.is_some() && !config.pools.contains_key(pool.get_ref()) {
            return Err(here(
                pool.span(),
                format!(
                    "service `{name}` uses pool `{}`, which this file does not define",
                    pool.get_ref()
                ),
                &format!(
                    "add a `[pools.{}]` section (it may have no backends; the engine adds them)",
                    pool.get_ref()
                ),
            ));
        }
        if self.admin_endpoint(config).is_none() {
            return Err(here(
                self.balancer.kind.span(),
                format!("service `{name}`: the builtin balancer needs the proxy's admin endpoint"),
                "add `admin = \"unix:/run/nonstop/admin.sock\"` to the balancer table, or a [proxy] section to this file",
            ));
        }
        let start = &self.runtime.start;
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
        let weight = *self.canary.weight.get_ref();
        if !(1..=99).contains(&weight) {
            return Err(here(
                self.canary.weight.span(),
                format!("service `{name}`: canary weight {weight} is outside 1..=99"),
                "it is the canary's share of traffic in percent, e.g. 10",
            ));
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
            if port == 0 || !ports.insert(port) {
                return Err(here(
                    node.port.span(),
                    format!(
                        "service `{name}`: port {port} of node `{node_name}` is zero or taken by another node"
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

/// Checks that every `{name}` in `arg` is a known placeholder; returns the first unknown one.
pub fn check_placeholders(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Ok(());
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(name.to_string());
        }
        rest = &after[close + 1..];
    }
    Ok(())
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
}
