//! Per-request routing rules a balancer may hold besides member states: a targeted preview
//! (testers reach the new release at any weight) and maintenance mode (503 for all but a few).

use serde::{Deserialize, Serialize};

use crate::NodeName;

/// Requests carrying `header: always` or cookie `cookie=always` go to `nodes` (the new release)
/// whatever their weight or state; `never` keeps a request off them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub nodes: Vec<NodeName>,
    pub header: String,
    pub cookie: String,
}

impl Preview {
    pub const DEFAULT_HEADER: &'static str = "X-Nonstop-Canary";
    pub const DEFAULT_COOKIE: &'static str = "nonstop-canary";
}

/// A service answers 503 with `Retry-After` and `message` to everyone outside `allow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub message: String,
    /// Client networks that still reach the backends (an operator's own address).
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    /// Seconds a client is told to wait (`Retry-After`).
    pub retry_after_s: u32,
}

impl Maintenance {
    pub const DEFAULT_MESSAGE: &'static str =
        "This service is down for maintenance. Please try again shortly.";
    pub const DEFAULT_RETRY_AFTER_S: u32 = 120;

    /// Whether `peer` may pass (it is inside one of the allowed networks).
    pub fn allows(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// Parses `--allow` values: a CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`).
pub fn parse_allow(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| {
            format!(
                "`{text}` is neither an address nor a CIDR network (e.g. 10.0.0.0/8, 127.0.0.1)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_matches_networks_addresses_and_mapped_v4() {
        let m = Maintenance {
            message: "x".into(),
            allow: vec![
                parse_allow("10.1.0.0/16").unwrap(),
                parse_allow("127.0.0.2").unwrap(),
            ],
            retry_after_s: 5,
        };
        assert!(m.allows("10.1.2.3".parse().unwrap()));
        assert!(!m.allows("10.2.0.1".parse().unwrap()));
        assert!(m.allows("127.0.0.2".parse().unwrap()));
        assert!(!m.allows("127.0.0.1".parse().unwrap()));
        assert!(m.allows("::ffff:127.0.0.2".parse().unwrap()));
        assert!(parse_allow("10.0.0.0/33").is_err());
        assert!(parse_allow("shop").is_err());
    }
}
