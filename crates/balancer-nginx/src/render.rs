//! The desired member set and its rendering as an nginx `upstream { }` block; names and
//! addresses are checked here so request data never reaches the config file unvalidated.

use nonstop_ports::{LbState, NodeName};
use serde::{Deserialize, Serialize};

use crate::{NginxConfig, NginxError};

/// What the include should say; persisted beside it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredSet {
    pub upstream: String,
    pub members: Vec<DesiredMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredMember {
    pub node: NodeName,
    pub addr: String,
    pub state: LbState,
    pub weight: u32,
}

/// The include's text for `set`.
pub fn render(config: &NginxConfig, set: &DesiredSet) -> Result<String, NginxError> {
    if set.members.is_empty() {
        return Err(NginxError::Invalid(format!(
            "upstream `{}` would have no server; register a member first",
            config.upstream
        )));
    }
    let mut text = String::from(
        "# Managed by nonstop: rewritten, checked with `nginx -t` and reloaded on every change.\n",
    );
    text.push_str(&format!("upstream {} {{\n", config.upstream));
    if config.sticky {
        text.push_str("    hash $cookie_jsessionid consistent;\n");
    }
    for m in &set.members {
        check_addr(&m.addr)?;
        check_name(m.node.as_str())?;
        let mut line = format!("    server {}", m.addr);
        // nginx has no drain and no weight 0: both become `down`, kept in the set so a sticky
        // hash keeps mapping the other members' sessions where they were.
        let serving = m.state == LbState::Active && m.weight > 0;
        if serving && m.weight != 1 {
            line.push_str(&format!(" weight={}", m.weight));
        }
        if !serving {
            line.push_str(" down");
        }
        line.push_str(&format!(
            "; # node {} {} weight {}\n",
            m.node, m.state, m.weight
        ));
        text.push_str(&line);
    }
    if config.keepalive > 0 {
        text.push_str(&format!("    keepalive {};\n", config.keepalive));
    }
    text.push_str("}\n");
    Ok(text)
}

/// Node and upstream names: what nginx accepts as a bare word, nothing that could end a directive.
pub fn check_name(name: &str) -> Result<(), NginxError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NginxError::Invalid(format!(
            "`{name}` is not a valid name here: use letters, digits, `-`, `_` and `.`"
        )))
    }
}

/// `HOST:PORT` (or `[V6]:PORT`, or `unix:/path`) with no character that nginx would parse as syntax.
pub fn check_addr(addr: &str) -> Result<(), NginxError> {
    let bad = |why: &str| {
        Err(NginxError::Invalid(format!(
            "member address `{addr}` {why}; expected HOST:PORT such as 127.0.0.1:8081"
        )))
    };
    if addr.is_empty() {
        return bad("is empty");
    }
    if addr
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || ";{}#'\"$\\".contains(c))
    {
        return bad("contains a character nginx would read as syntax");
    }
    if addr.starts_with("unix:") {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() =>
        {
            Ok(())
        }
        _ => bad("has no port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, state: LbState, weight: u32) -> DesiredMember {
        DesiredMember {
            node: NodeName::from(node),
            addr: format!("127.0.0.1:{}", 8000 + node.len()),
            state,
            weight,
        }
    }

    #[test]
    fn renders_states_weights_sticky_and_keepalive() {
        let mut config = NginxConfig::new("/x/app.conf", "app", vec!["nginx".into()]);
        config.sticky = true;
        config.keepalive = 8;
        let set = DesiredSet {
            upstream: "app".into(),
            members: vec![
                member("a", LbState::Active, 1),
                member("bb", LbState::Active, 3),
                member("ccc", LbState::Draining, 1),
                member("dddd", LbState::Disabled, 1),
                member("eeeee", LbState::Active, 0),
            ],
        };
        let text = render(&config, &set).unwrap();
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "upstream app {",
                "    hash $cookie_jsessionid consistent;",
                "    server 127.0.0.1:8001; # node a active weight 1",
                "    server 127.0.0.1:8002 weight=3; # node bb active weight 3",
                "    server 127.0.0.1:8003 down; # node ccc draining weight 1",
                "    server 127.0.0.1:8004 down; # node dddd disabled weight 1",
                "    server 127.0.0.1:8005 down; # node eeeee active weight 0",
                "    keepalive 8;",
                "}",
            ]
        );
    }

    #[test]
    fn refuses_an_empty_set_and_syntax_in_addresses() {
        let config = NginxConfig::new("/x/app.conf", "app", vec!["nginx".into()]);
        assert!(render(&config, &DesiredSet::default()).is_err());
        for addr in ["", "127.0.0.1", "1.2.3.4:80; evil", "a:80}", "a:8x", "a:$x"] {
            assert!(check_addr(addr).is_err(), "{addr} accepted");
        }
        for addr in [
            "127.0.0.1:8080",
            "[::1]:80",
            "backend.local:80",
            "unix:/run/a.sock",
        ] {
            check_addr(addr).unwrap();
        }
        assert!(check_name("a b").is_err());
        check_name("blue-1.x_y").unwrap();
    }
}
