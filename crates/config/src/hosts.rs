//! `[hosts.NAME]`: the machines of a fleet, each reached through its `nonstop agent`, and where
//! their apps listen. A service's nodes and balancer name the host they live on.

use serde::Deserialize;
use toml::Spanned;

use crate::{ConfigError, Source};

/// One machine with an agent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Where its agent listens, `IP:PORT`; the agent's certificate carries the host's name.
    pub agent: Spanned<String>,
    /// Where its apps are reached by the balancer and the health gate; default the agent's IP.
    #[serde(default)]
    pub address: Option<Spanned<String>>,
}

impl HostConfig {
    pub fn agent_addr(&self) -> std::net::SocketAddr {
        self.agent.get_ref().parse().expect("validated on load")
    }

    /// The IP its apps listen on.
    pub fn address(&self) -> String {
        match &self.address {
            Some(a) => a.get_ref().clone(),
            None => self.agent_addr().ip().to_string(),
        }
    }

    pub(crate) fn validate(&self, name: &str, source: &Source) -> Result<(), ConfigError> {
        if !valid_host_name(name) {
            return Err(source.error_at(
                self.agent.span(),
                format!("`{name}` is not a valid host name: it names the agent's certificate"),
                Some("use letters, digits, `-` and `.` (at most 63)".into()),
            ));
        }
        if self
            .agent
            .get_ref()
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(source.error_at(
                self.agent.span(),
                format!(
                    "host `{name}`: agent `{}` is not an IP:PORT",
                    self.agent.get_ref()
                ),
                Some("for example `agent = \"10.0.0.2:7443\"`".into()),
            ));
        }
        if let Some(address) = &self.address
            && address.get_ref().parse::<std::net::IpAddr>().is_err()
        {
            return Err(source.error_at(
                address.span(),
                format!(
                    "host `{name}`: address `{}` is not an IP address",
                    address.get_ref()
                ),
                None,
            ));
        }
        Ok(())
    }
}

/// The rule agent names follow (they are DNS names in certificates).
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
}
