//! The driver's settings (`balancer = { kind = "nginx", ... }` minus the kind): the include, the
//! upstream or `set $VAR` it owns, how to run nginx, and what the mode costs per deploy.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{NginxError, render};

/// How to reach the nginx instance and which upstream (or variable) of it this service owns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxConfig {
    /// The include file nonstop owns, e.g. `/etc/nginx/nonstop/shop.conf`.
    pub include: PathBuf,
    /// The upstream's name, used as `proxy_pass http://NAME;` in the operator's config.
    /// Exactly one of `upstream` and `variable` is given.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The `set $VAR` style of existing blue-green scripts: the include holds one
    /// `set $VAR http://ADDR;` line for the one active member, used as `proxy_pass $VAR;`.
    /// A plain variable name without `$`, e.g. `service_url`.
    #[serde(default)]
    pub variable: Option<String>,
    /// argv prefix to run nginx, e.g. `["nginx", "-p", "/srv/nginx", "-c", "/srv/nginx/nginx.conf"]`.
    pub nginx: Vec<String>,
    /// Adds `hash $cookie_jsessionid consistent;` so a session stays on its member.
    #[serde(default)]
    pub sticky: bool,
    /// Idle upstream connections each worker keeps (`keepalive N;`); 0 leaves it out.
    #[serde(default)]
    pub keepalive: u32,
    /// The master's pid file; found in `nginx -T` (or the compiled-in default) when not given.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// How long a reload may take to show new workers, e.g. `"10s"`.
    #[serde(default = "default_reload_timeout", with = "human")]
    pub reload_timeout: Duration,
    /// An access log in nonstop's format (`access_log PATH nonstop;` with
    /// [`crate::LOG_FORMAT`]): the per-member traffic a canary is judged on.
    #[serde(default)]
    pub access_log: Option<PathBuf>,
}

fn default_reload_timeout() -> Duration {
    Duration::from_secs(10)
}

mod human {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| D::Error::custom(format!("`{text}`: {e}")))
    }
}

impl NginxConfig {
    pub fn new(include: impl Into<PathBuf>, upstream: &str, nginx: Vec<String>) -> Self {
        NginxConfig {
            include: include.into(),
            upstream: Some(upstream.to_string()),
            variable: None,
            nginx,
            sticky: false,
            keepalive: 0,
            pid_file: None,
            reload_timeout: default_reload_timeout(),
            access_log: None,
        }
    }

    /// The `set $VAR` style: `variable` is the name without `$`, e.g. `service_url`.
    pub fn with_variable(include: impl Into<PathBuf>, variable: &str, nginx: Vec<String>) -> Self {
        NginxConfig {
            upstream: None,
            variable: Some(variable.to_string()),
            ..NginxConfig::new(include, "", nginx)
        }
    }

    /// What this service owns in nginx, for messages: "upstream `shop`" or "`set $service_url`".
    pub fn target(&self) -> String {
        match (&self.variable, &self.upstream) {
            (Some(v), _) => format!("`set ${v}`"),
            (None, Some(u)) => format!("upstream `{u}`"),
            (None, None) => "nothing".into(),
        }
    }

    /// Which mode this is and what it costs, for `config check` and `--plan`: the reloads a deploy
    /// of `strategy` over `nodes` nodes needs (docs/balancers/nginx.md, "Reloads per deploy").
    pub fn mode_summary(&self, strategy: &str, nodes: usize) -> String {
        let reloads = match strategy {
            "rolling" => format!(
                "{} reloads per deploy (each node out, then back in)",
                2 * nodes
            ),
            "canary" => "2 reloads per deploy (the canary's weight, then the switch)".into(),
            _ => "1 reload per deploy (the switch)".into(),
        };
        let traffic = match &self.access_log {
            Some(log) if strategy == "canary" => format!(
                "; the canary is judged on access log {} (`{}`, `access_log {} nonstop;`)",
                log.display(),
                crate::LOG_FORMAT,
                log.display()
            ),
            _ => String::new(),
        };
        format!(
            "nginx reload mode ({}): {reloads}{traffic}; each reload closes idle keep-alive client connections, which clients that do not resend see as failed requests. For 0, put nginx in front of `nonstop proxy` (kind = \"builtin\"; docs/balancers/nginx.md, \"Two modes\")",
            self.target()
        )
    }

    /// The name kept in the state file: the upstream's, or `$VAR`.
    pub(crate) fn set_name(&self) -> String {
        match (&self.variable, &self.upstream) {
            (Some(v), _) => format!("${v}"),
            (None, u) => u.clone().unwrap_or_default(),
        }
    }

    /// The settings that do not depend on the running nginx: one of `upstream` and `variable`,
    /// names nginx accepts, and no upstream-only setting in the `set $VAR` style.
    pub fn check(&self) -> Result<(), NginxError> {
        if self.nginx.is_empty() {
            return Err(NginxError::Invalid(
                "nginx: the argv to run nginx is empty; give e.g. [\"nginx\"]".into(),
            ));
        }
        if let Some(log) = self.access_log.as_ref().filter(|l| !l.is_absolute()) {
            return Err(NginxError::Invalid(format!(
                "access_log `{}` is relative; give the absolute path the `access_log` directive writes to",
                log.display()
            )));
        }
        match (&self.upstream, &self.variable) {
            (Some(_), Some(_)) => Err(NginxError::Invalid(
                "give either `upstream` (nonstop owns an `upstream NAME { server …; }` block) or `variable` (nonstop owns one `set $VAR http://ADDR;` line), not both".into(),
            )),
            (None, None) => Err(NginxError::Invalid(
                "give `upstream = \"NAME\"` (nonstop owns an `upstream NAME { server …; }` block, used as `proxy_pass http://NAME;`) or `variable = \"service_url\"` (nonstop owns one `set $service_url http://ADDR;` line, used as `proxy_pass $service_url;`)".into(),
            )),
            (Some(upstream), None) => render::check_name(upstream),
            (None, Some(variable)) => {
                render::check_variable(variable)?;
                if self.sticky || self.keepalive > 0 || self.access_log.is_some() {
                    return Err(NginxError::Invalid(format!(
                        "`sticky`, `keepalive` and `access_log` need an upstream block; the `set ${variable}` style has none (remove them, or use `upstream`)"
                    )));
                }
                Ok(())
            }
        }
    }
}
