//! nonstop's configuration file: typed sections for the proxy, its pools and the services it deploys.
//! Loading never half-succeeds: every error names the file, the line and what to change.

pub mod analysis;
pub mod driver;
pub mod env_file;
mod error;
pub mod hosts;
pub mod lifecycle;
pub mod notify;
pub mod preview;
pub mod proxy;
pub mod service;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use driver::{BalancerKind, DriverTable, RuntimeKind, RuntimeShared};
pub use env_file::{EnvFileError, read_env_files};
pub use error::ConfigError;
pub use hosts::HostConfig;
pub use proxy::{
    AdminEndpoint, AdminState, BackendConfig, Balance, EjectConfig, HealthCheck, Limits, LogFormat,
    PoolConfig, ProxyConfig, RouteConfig, Sticky, Timeouts,
};
pub use service::ServiceConfig;
pub use units::HumanDuration;

/// A whole nonstop configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Machines with an agent, for services whose nodes run elsewhere than here.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
}

/// Where a configuration came from, kept so that later errors can still point at a line.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// The error for a byte span of this file, with a hint on how to fix it.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError::at(&self.path, &self.text, span, message.into(), hint)
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<(Config, Source), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
        let source = Source {
            path: path.to_path_buf(),
            text,
        };
        let config = Config::parse(&source)?;
        Ok((config, source))
    }

    /// Parses and validates configuration text; `source.path` is only used in errors.
    pub fn parse(source: &Source) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(&source.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            source.error_at(span, e.message().trim().to_string(), None)
        })?;
        for (name, host) in &config.hosts {
            host.validate(name, source)?;
        }
        for (name, service) in &mut config.services {
            service.resolve(name, &config.hosts, source)?;
        }
        config.validate(source)?;
        Ok(config)
    }

    fn validate(&self, source: &Source) -> Result<(), ConfigError> {
        for (name, pool) in &self.pools {
            pool.validate(name, source)?;
        }
        if let Some(proxy) = &self.proxy {
            proxy.validate(&self.pools, source)?;
        }
        for (name, service) in &self.services {
            service.validate(name, self, source)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(&Source {
            path: "nonstop.toml".into(),
            text: text.to_string(),
        })
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = parse("[proxy]\nlisten = [\"127.0.0.1:8080\"\n").unwrap_err();
        assert_eq!(err.file, PathBuf::from("nonstop.toml"));
        assert_eq!(err.line, 2, "{err}");
        assert!(err.to_string().starts_with("nonstop.toml:2:"), "{err}");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = parse("[pools.shop]\nbalanse = \"least-conn\"\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("balanse"), "{err}");
    }
}
