//! The `[proxy]` and `[pools.*]` sections: what `nonstop proxy` listens on and where it sends requests.
//! Validation here catches everything the proxy would otherwise find at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serialize, de};
use toml::Spanned;

use crate::{ConfigError, HumanDuration, Source};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Addresses to accept client traffic on.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Where the admin API listens: `unix:/path` (default) or `tcp:host:port` (needs a token).
    #[serde(default)]
    pub admin: AdminEndpoint,
    /// File holding the bearer token required on a TCP admin endpoint.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Optional plain-HTTP listener that serves only `/metrics`.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Caps on what one client may make the proxy hold.
    #[serde(default)]
    pub limits: Limits,
    /// How long requests still running on a removed backend may take to finish.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Worker threads; defaults to one per core.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Where runtime changes to pools (deploy switches, drains) are kept, so that a restarted
    /// proxy serves what the last deploy set up rather than the file's original backends.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(10)
}

fn default_drain_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "Timeouts::default_connect")]
    pub connect: HumanDuration,
    #[serde(default = "Timeouts::default_response_header")]
    pub response_header: HumanDuration,
    #[serde(default = "Timeouts::default_idle")]
    pub idle: HumanDuration,
    /// Longest pause between two pieces of a client's request body before it gets 408.
    #[serde(default = "Timeouts::default_request_body")]
    pub request_body: HumanDuration,
}

impl Timeouts {
    fn default_connect() -> HumanDuration {
        HumanDuration::secs(3)
    }
    fn default_response_header() -> HumanDuration {
        HumanDuration::secs(60)
    }
    fn default_idle() -> HumanDuration {
        HumanDuration::secs(60)
    }
    fn default_request_body() -> HumanDuration {
        HumanDuration::secs(30)
    }
}

/// Caps on client input and connections; defaults fit a small server.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Total size of a request's line and headers; larger gets 431 and is not forwarded.
    #[serde(default = "Limits::default_max_header_size")]
    pub max_header_size: ByteSize,
    /// Client connections one worker thread holds; more wait in the listen backlog.
    #[serde(default = "Limits::default_connections_per_worker")]
    pub connections_per_worker: usize,
}

/// hyper's smallest read buffer.
pub const MIN_HEADER_SIZE: u64 = 8 * 1024;

impl Limits {
    fn default_max_header_size() -> ByteSize {
        ByteSize::kib(64)
    }
    fn default_connections_per_worker() -> usize {
        10_000
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_size: Self::default_max_header_size(),
            connections_per_worker: Self::default_connections_per_worker(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Self::default_connect(),
            response_header: Self::default_response_header(),
            idle: Self::default_idle(),
            request_body: Self::default_request_body(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Where the admin API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminEndpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Default for AdminEndpoint {
    fn default() -> Self {
        AdminEndpoint::Unix(PathBuf::from("/run/nonstop/admin.sock"))
    }
}

impl std::str::FromStr for AdminEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "`unix:` needs a socket path, like \"unix:/run/nonstop/admin.sock\"".into(),
                );
            }
            return Ok(AdminEndpoint::Unix(PathBuf::from(path)));
        }
        let addr = s.strip_prefix("tcp:").unwrap_or(s);
        addr.parse().map(AdminEndpoint::Tcp).map_err(|_| {
            format!("invalid admin endpoint `{s}`; write \"unix:/path/admin.sock\" or \"tcp:127.0.0.1:9090\"")
        })
    }
}

impl std::fmt::Display for AdminEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            AdminEndpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl<'de> Deserialize<'de> for AdminEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

/// Sends requests whose Host and path match to a pool; the first matching route wins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host name to match (without port); absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match, on segment boundaries.
    #[serde(default = "root_path")]
    pub path: String,
    pub pool: Spanned<String>,
}

fn root_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub sticky: Option<Sticky>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub eject: EjectConfig,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round-robin, as nginx does it; weights behave like mod_jk's `lbfactor`.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConn,
}

/// How a client keeps reaching the same backend.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Sticky {
    /// mod_jk style: the route after the last `.` of the session id selects the backend whose
    /// `route` matches (Tomcat's `jvmRoute`), from the cookie or a `;jsessionid=` path parameter.
    Jsessionid {
        #[serde(default = "Sticky::default_session_cookie")]
        cookie: String,
    },
    /// The proxy sets a cookie of its own naming the backend, for apps without a session route.
    Cookie {
        #[serde(default = "Sticky::default_route_cookie")]
        name: String,
    },
}

impl Sticky {
    fn default_session_cookie() -> String {
        "JSESSIONID".into()
    }
    fn default_route_cookie() -> String {
        "NONSTOP_ROUTE".into()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default = "HealthCheck::default_path")]
    pub path: String,
    #[serde(default = "HealthCheck::default_status")]
    pub expect_status: u16,
    #[serde(default)]
    pub expect_body: Option<String>,
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: HumanDuration,
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive passes that bring a down backend up.
    #[serde(default = "HealthCheck::default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    #[serde(default = "HealthCheck::default_fall")]
    pub fall: u32,
}

impl HealthCheck {
    fn default_path() -> String {
        "/health".into()
    }
    fn default_status() -> u16 {
        200
    }
    fn default_interval() -> HumanDuration {
        HumanDuration::secs(2)
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration::secs(1)
    }
    fn default_rise() -> u32 {
        2
    }
    fn default_fall() -> u32 {
        3
    }
}

/// Passive health: a backend that refuses connections or answers a burst of 5xx is set aside.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EjectConfig {
    /// Consecutive 5xx answers (or connection failures) that eject a backend; 0 turns it off.
    #[serde(default = "EjectConfig::default_consecutive")]
    pub consecutive_failures: u32,
    /// How long an ejected backend is left out before it is tried again.
    #[serde(default = "EjectConfig::default_cooldown")]
    pub cooldown: HumanDuration,
}

impl EjectConfig {
    fn default_consecutive() -> u32 {
        5
    }
    fn default_cooldown() -> HumanDuration {
        HumanDuration::secs(10)
    }
}

impl Default for EjectConfig {
    fn default() -> Self {
        EjectConfig {
            consecutive_failures: Self::default_consecutive(),
            cooldown: Self::default_cooldown(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: Spanned<String>,
    /// `host:port` of the backend's HTTP listener.
    pub addr: Spanned<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Session route (Tomcat `jvmRoute`); defaults to the backend's name.
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub state: AdminState,
}

fn default_weight() -> u32 {
    1
}

/// The operator-set state of a backend, independent of its health.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum AdminState {
    /// Takes new and sticky requests.
    #[default]
    Active,
    /// Takes only requests bound to it by stickiness; in-flight ones finish (mod_jk "disabled").
    Draining,
    /// Takes nothing (mod_jk "stopped", HAProxy "maint").
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" | "ready" | "enable" | "enabled" => Ok(AdminState::Active),
            "draining" | "drain" => Ok(AdminState::Draining),
            "disabled" | "disable" | "maint" | "stopped" => Ok(AdminState::Disabled),
            other => Err(format!(
                "unknown backend state `{other}`; use active, draining or disabled"
            )),
        }
    }
}

pub const MAX_WEIGHT: u32 = 10_000;

/// Names end up in URLs, metric labels and cookies, so they are kept to a safe alphabet.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a `host:port` backend address; returns why it is wrong.
pub fn check_backend_addr(addr: &str) -> Result<(), String> {
    let hint = "write it as host:port, like \"127.0.0.1:8081\"";
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("backend address `{addr}` has no port; {hint}"));
    };
    if host.is_empty() || host.contains(['/', ' ', '@', '?', '#']) {
        return Err(format!(
            "backend address `{addr}` has no valid host; {hint}"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "backend address `{addr}` has an invalid port; {hint}"
        )),
    }
}

impl PoolConfig {
    pub(crate) fn validate(&self, pool: &str, source: &Source) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        for backend in &self.backends {
            let name = backend.name.get_ref();
            if !is_valid_name(name) {
                return Err(source.error_at(
                    backend.name.span(),
                    format!("backend name `{name}` in pool `{pool}` is not allowed"),
                    Some("use letters, digits, `-`, `_` and `.` (at most 64)".into()),
                ));
            }
            if let Some(first) = seen.insert(name.clone(), backend.name.span()) {
                let line = source.error_at(first, "", None).line;
                return Err(source.error_at(
                    backend.name.span(),
                    format!(
                        "backend `{name}` appears twice in pool `{pool}` (first on line {line})"
                    ),
                    Some("give each backend of a pool its own name".into()),
                ));
            }
            if let Err(why) = check_backend_addr(backend.addr.get_ref()) {
                return Err(source.error_at(backend.addr.span(), why, None));
            }
            if backend.weight == 0 || backend.weight > MAX_WEIGHT {
                return Err(source.error_at(
                    backend.name.span(),
                    format!(
                        "backend `{name}` has weight {}; weights run from 1 to {MAX_WEIGHT}",
                        backend.weight
                    ),
                    Some("to take a backend out of rotation set state = \"disabled\"".into()),
                ));
            }
        }
        if let Some(health) = &self.health {
            if !health.path.starts_with('/') {
                return Err(pool_error(
                    source,
                    pool,
                    format!("health path `{}` must start with `/`", health.path),
                ));
            }
            if !(100..=599).contains(&health.expect_status) {
                return Err(pool_error(
                    source,
                    pool,
                    format!(
                        "health expect_status {} is not an HTTP status",
                        health.expect_status
                    ),
                ));
            }
            if health.rise == 0 || health.fall == 0 {
                return Err(pool_error(
                    source,
                    pool,
                    "health rise and fall must be at least 1".into(),
                ));
            }
            if health.timeout.0.is_zero() || health.interval.0.is_zero() {
                return Err(pool_error(
                    source,
                    pool,
                    "health interval and timeout must be longer than 0".into(),
                ));
            }
        }
        Ok(())
    }
}

fn pool_error(source: &Source, pool: &str, message: String) -> ConfigError {
    let header = format!("[pools.{pool}]");
    let at = source.text.find(&header).unwrap_or(0);
    source.error_at(at..at, format!("pool `{pool}`: {message}"), None)
}

impl ProxyConfig {
    pub(crate) fn validate(
        &self,
        pools: &BTreeMap<String, PoolConfig>,
        source: &Source,
    ) -> Result<(), ConfigError> {
        let at_proxy = || {
            let at = source.text.find("[proxy]").unwrap_or(0);
            at..at
        };
        if self.listen.is_empty() {
            return Err(source.error_at(
                at_proxy(),
                "`listen` is empty: the proxy needs at least one address",
                Some("add listen = \"127.0.0.1:8080\"".into()),
            ));
        }
        if matches!(self.admin, AdminEndpoint::Tcp(_)) && self.admin_token_file.is_none() {
            return Err(source.error_at(
                at_proxy(),
                format!("the admin API on {} would be open to anyone who can connect", self.admin),
                Some("set admin_token_file = \"/etc/nonstop/admin.token\", or use admin = \"unix:/run/nonstop/admin.sock\"".into()),
            ));
        }
        if self.workers == Some(0) {
            return Err(source.error_at(at_proxy(), "`workers` must be at least 1", None));
        }
        if self.limits.max_header_size.as_u64() < MIN_HEADER_SIZE {
            return Err(source.error_at(
                at_proxy(),
                format!(
                    "`limits.max_header_size` is {}; it must be at least 8KiB",
                    self.limits.max_header_size
                ),
                Some("the default is \"64KiB\"".into()),
            ));
        }
        if self.limits.connections_per_worker == 0 {
            return Err(source.error_at(
                at_proxy(),
                "`limits.connections_per_worker` must be at least 1",
                Some("the default is 10000".into()),
            ));
        }
        if self.timeouts.request_body.0.is_zero() {
            return Err(source.error_at(
                at_proxy(),
                "`timeouts.request_body` must be longer than 0",
                None,
            ));
        }
        for route in &self.routes {
            let pool = route.pool.get_ref();
            if !pools.contains_key(pool) {
                let known: Vec<_> = pools.keys().map(String::as_str).collect();
                return Err(source.error_at(
                    route.pool.span(),
                    format!("route points at pool `{pool}`, which is not defined"),
                    Some(if known.is_empty() {
                        format!("add a [pools.{pool}] section with its backends")
                    } else {
                        format!("defined pools: {}", known.join(", "))
                    }),
                ));
            }
            if !route.path.starts_with('/') {
                return Err(source.error_at(
                    route.pool.span(),
                    format!("route path `{}` must start with `/`", route.path),
                    None,
                ));
            }
        }
        if self.routes.is_empty() && pools.len() > 1 {
            return Err(source.error_at(
                at_proxy(),
                format!(
                    "{} pools are defined but no [[proxy.routes]] say which serves what",
                    pools.len()
                ),
                Some("add [[proxy.routes]] entries with host/path and pool".into()),
            ));
        }
        Ok(())
    }
}

fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

#[cfg(test)]
mod tests {
    use crate::tests::parse;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
admin = "unix:/tmp/nonstop.sock"

[[proxy.routes]]
host = "shop.example.com"
pool = "shop"

[pools.shop]
balance = "least-conn"
sticky = { kind = "jsessionid" }
health = { path = "/health", interval = "1s" }

[[pools.shop.backends]]
name = "tomcat1"
addr = "127.0.0.1:8081"
weight = 2

[[pools.shop.backends]]
name = "tomcat2"
addr = "127.0.0.1:8082"
state = "draining"
"#;

    #[test]
    fn full_example_parses() {
        let config = parse(GOOD).unwrap();
        let pool = &config.pools["shop"];
        assert_eq!(pool.backends.len(), 2);
        assert_eq!(pool.balance, super::Balance::LeastConn);
        assert_eq!(pool.backends[1].state, super::AdminState::Draining);
    }

    #[test]
    fn unknown_pool_in_route_names_line_and_known_pools() {
        let text = GOOD.replace("pool = \"shop\"", "pool = \"shpo\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, 8, "{err}");
        assert!(err.message.contains("shpo"));
        assert_eq!(err.hint.as_deref(), Some("defined pools: shop"));
    }

    #[test]
    fn duplicate_backend_is_refused() {
        let text = GOOD.replace("\"tomcat2\"", "\"tomcat1\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, 21, "{err}");
        assert!(err.message.contains("first on line 16"), "{err}");
    }

    #[test]
    fn bad_address_and_duration_point_at_the_value() {
        let err = parse(&GOOD.replace("127.0.0.1:8082", "127.0.0.1")).unwrap_err();
        assert_eq!(err.line, 22, "{err}");
        assert!(err.message.contains("no port"), "{err}");
        let err = parse(&GOOD.replace("\"1s\"", "\"soon\"")).unwrap_err();
        assert_eq!(err.line, 13, "{err}");
        assert!(err.message.contains("invalid duration"), "{err}");
    }

    #[test]
    fn tcp_admin_without_token_is_refused() {
        let err = parse(&GOOD.replace("unix:/tmp/nonstop.sock", "tcp:127.0.0.1:9090")).unwrap_err();
        assert!(err.message.contains("open to anyone"), "{err}");
        assert!(err.hint.unwrap().contains("admin_token_file"));
    }
}
