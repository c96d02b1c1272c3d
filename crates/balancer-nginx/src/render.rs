//! The desired member set and its rendering as an nginx `upstream { }` block, or as the one
//! `set $VAR http://ADDR;` line of the blue-green include style; names and addresses are checked
//! here so request data never reaches the config file unvalidated.

use nonstop_ports::{LbState, NodeName};
use serde::{Deserialize, Serialize};

use crate::{NginxConfig, NginxError};

/// What the include should say; persisted beside it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredSet {
    /// The upstream's name, or `$VAR` in the `set $VAR` style.
    pub upstream: String,
    pub members: Vec<DesiredMember>,
    /// `set $VAR` style: the value the include held when nonstop first took it over (the
    /// operator's own target). While no member is active it is what the variable keeps; it is
    /// forgotten once nonstop has switched from one of its members to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredMember {
    pub node: NodeName,
    pub addr: String,
    pub state: LbState,
    pub weight: u32,
}

/// The members' states live in the JSON state file beside this one, so the text changes (and
/// nginx reloads) only when where nginx sends traffic changes.
const HEADER: &str = "# Managed by nonstop (states in the .state.json beside it): rewritten, checked with `nginx -t`\n# and reloaded only when where nginx sends traffic changes.\n";

/// The include's text for `set`; `current` is the include's text now (if it exists), from which
/// the `set $VAR` style keeps its line while no member is active.
pub fn render(
    config: &NginxConfig,
    set: &DesiredSet,
    current: Option<&str>,
) -> Result<String, NginxError> {
    match &config.variable {
        Some(variable) => render_variable(variable, set, current),
        None => render_upstream(config, set),
    }
}

fn render_upstream(config: &NginxConfig, set: &DesiredSet) -> Result<String, NginxError> {
    let upstream = config.upstream.as_deref().unwrap_or_default();
    if set.members.is_empty() {
        return Err(NginxError::Invalid(format!(
            "upstream `{upstream}` would have no server; register a member first"
        )));
    }
    let mut text = String::from(HEADER);
    text.push_str(&format!("upstream {upstream} {{\n"));
    if config.sticky {
        text.push_str("    hash $cookie_jsessionid consistent;\n");
    }
    let serving = |m: &DesiredMember| m.state == LbState::Active && m.weight > 0;
    // Without a hash, a member that is out is left out, so registering an idle slot or taking
    // a member out later changes nothing nginx reads; with none serving, all are listed `down`
    // (an upstream needs a server).
    let listed = config.sticky || !set.members.iter().any(serving);
    for m in &set.members {
        check_addr(&m.addr)?;
        check_name(m.node.as_str())?;
        if !listed && !serving(m) {
            continue;
        }
        let mut line = format!("    server {}", m.addr);
        // nginx has no drain and no weight 0: both become `down`, kept in the set so a sticky
        // hash keeps mapping the other members' sessions where they were.
        let serving = serving(m);
        if serving && m.weight != 1 {
            line.push_str(&format!(" weight={}", m.weight));
        }
        if !serving {
            line.push_str(" down");
        }
        line.push_str(&format!("; # node {}\n", m.node));
        text.push_str(&line);
    }
    if config.keepalive > 0 {
        text.push_str(&format!("    keepalive {};\n", config.keepalive));
    }
    text.push_str("}\n");
    Ok(text)
}

/// The `proxy_pass` URL of a member address (`unix:` sockets end with `:` in a URL).
pub fn url_of(addr: &str) -> String {
    if addr.starts_with("unix:") {
        format!("http://{addr}:")
    } else {
        format!("http://{addr}")
    }
}

/// The value of the first `set $VAR VALUE;` line in `text`, if any.
pub fn parse_variable(text: &str, variable: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("set")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let (name, value) = rest.trim_start().split_once([' ', '\t'])?;
        if name.strip_prefix('$')? != variable {
            return None;
        }
        let value = value.trim().strip_suffix(';')?.trim();
        let value = value.trim_matches(['"', '\'']);
        (!value.is_empty()).then(|| value.to_string())
    })
}

fn render_variable(
    variable: &str,
    set: &DesiredSet,
    current: Option<&str>,
) -> Result<String, NginxError> {
    check_variable(variable)?;
    for m in &set.members {
        check_addr(&m.addr)?;
        check_name(m.node.as_str())?;
    }
    let active: Vec<&DesiredMember> = set
        .members
        .iter()
        .filter(|m| m.state == LbState::Active)
        .collect();
    let (value, note) = match active.as_slice() {
        [one] => (
            url_of(&one.addr),
            format!("# node {}; weights are not used in this style\n", one.node),
        ),
        [] => (
            kept_value(variable, set, current)?,
            "# no member is active: the variable keeps its previous target\n".to_string(),
        ),
        many => {
            let names: Vec<&str> = many.iter().map(|m| m.node.as_str()).collect();
            return Err(NginxError::Invalid(format!(
                "`{}` would be active together, but the `set ${variable}` style sends all traffic to one node: use strategy = \"blue-green\", or an upstream block for rolling/canary",
                names.join("`, `")
            )));
        }
    };
    check_value(&value)?;
    Ok(format!("{HEADER}{note}set ${variable} {value};\n"))
}

/// With no member active, nginx still needs the variable set (or its config test fails with
/// `unknown "VAR" variable`): keep the current line unless it points at a member nonstop has
/// just taken out, then fall back to the operator's own target from before nonstop.
fn kept_value(
    variable: &str,
    set: &DesiredSet,
    current: Option<&str>,
) -> Result<String, NginxError> {
    let taken_out = |value: &str| set.members.iter().any(|m| url_of(&m.addr) == value);
    let current = current.and_then(|text| parse_variable(text, variable));
    if let Some(value) = current.as_deref().filter(|v| !taken_out(v)) {
        return Ok(value.to_string());
    }
    if let Some(value) = &set.adopted {
        return Ok(value.clone());
    }
    Err(NginxError::Invalid(match current {
        Some(value) => format!(
            "no member would be active, and `${variable}` cannot be left on {value} (a member taken out) nor be empty: make another member active in the same switch"
        ),
        None => format!(
            "no member is active and the include has no `set ${variable} …;` line to keep (nginx would fail with unknown \"{variable}\" variable): write the line your script writes, pointing at the instance serving now, or make a member active"
        ),
    }))
}

/// A plain nginx variable name: letters, digits and `_`.
pub fn check_variable(variable: &str) -> Result<(), NginxError> {
    let ok = !variable.is_empty()
        && variable
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NginxError::Invalid(format!(
            "variable `{variable}` is not a plain nginx variable name: use letters, digits and `_`, without the `$` (e.g. variable = \"service_url\")"
        )))
    }
}

/// A `proxy_pass` URL kept from the include: one word, nothing nginx would read as syntax.
fn check_value(value: &str) -> Result<(), NginxError> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ";{}#'\"$\\".contains(c))
    {
        return Err(NginxError::Invalid(format!(
            "`{value}` cannot be written as the variable's value; expected a URL such as http://127.0.0.1:8081"
        )));
    }
    Ok(())
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
            adopted: None,
            members: vec![
                member("a", LbState::Active, 1),
                member("bb", LbState::Active, 3),
                member("ccc", LbState::Draining, 1),
                member("dddd", LbState::Disabled, 1),
                member("eeeee", LbState::Active, 0),
            ],
        };
        let text = render(&config, &set, None).unwrap();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "upstream app {",
                "    hash $cookie_jsessionid consistent;",
                "    server 127.0.0.1:8001; # node a",
                "    server 127.0.0.1:8002 weight=3; # node bb",
                "    server 127.0.0.1:8003 down; # node ccc",
                "    server 127.0.0.1:8004 down; # node dddd",
                "    server 127.0.0.1:8005 down; # node eeeee",
                "    keepalive 8;",
                "}",
            ]
        );
        // Without the hash, members that are out are left out (nothing to reload for them).
        config.sticky = false;
        let plain: Vec<String> = render(&config, &set, None)
            .unwrap()
            .lines()
            .filter(|l| l.contains("server "))
            .map(String::from)
            .collect();
        assert_eq!(
            plain,
            [
                "    server 127.0.0.1:8001; # node a",
                "    server 127.0.0.1:8002 weight=3; # node bb",
            ]
        );
        let mut none = set.clone();
        none.members
            .iter_mut()
            .for_each(|m| m.state = LbState::Disabled);
        let all_down = render(&config, &none, None).unwrap();
        assert_eq!(all_down.matches(" down;").count(), 5, "{all_down}");
        config.sticky = true;
        // Draining and disabled are the same to nginx: the text is the same, so no reload.
        let mut disabled = set.clone();
        disabled.members[2].state = LbState::Disabled;
        assert_eq!(render(&config, &disabled, None).unwrap(), text);
    }

    #[test]
    fn refuses_an_empty_set_and_syntax_in_addresses() {
        let config = NginxConfig::new("/x/app.conf", "app", vec!["nginx".into()]);
        assert!(render(&config, &DesiredSet::default(), None).is_err());
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

    fn variable_set(states: &[(&str, LbState)]) -> DesiredSet {
        DesiredSet {
            upstream: "$service_url".into(),
            adopted: None,
            members: states.iter().map(|(n, s)| member(n, *s, 1)).collect(),
        }
    }

    fn variable_config() -> NginxConfig {
        NginxConfig::with_variable("/x/service-url.inc", "service_url", vec!["nginx".into()])
    }

    /// The lines nginx reads (comments left out).
    fn directives(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn variable_style_one_active_member_is_one_set_line() {
        let config = variable_config();
        let set = variable_set(&[
            ("a", LbState::Disabled),
            ("bb", LbState::Active),
            ("ccc", LbState::Draining),
        ]);
        let text = render(&config, &set, Some("set $service_url http://10.0.0.1:1;\n")).unwrap();
        assert!(text.starts_with("# Managed by nonstop"), "{text}");
        assert_eq!(
            directives(&text),
            ["set $service_url http://127.0.0.1:8002;"]
        );
        // Weights mean nothing here: the one active member gets everything.
        let mut weighted = set.clone();
        weighted.members[1].weight = 0;
        assert_eq!(render(&config, &weighted, None).unwrap(), text);
        assert_eq!(
            parse_variable(&text, "service_url").as_deref(),
            Some("http://127.0.0.1:8002")
        );
    }

    #[test]
    fn variable_style_refuses_two_active_members() {
        let set = variable_set(&[("a", LbState::Active), ("bb", LbState::Active)]);
        let err = render(&variable_config(), &set, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sends all traffic to one node"), "{err}");
        assert!(err.contains("strategy = \"blue-green\""), "{err}");
        assert!(err.contains("`a`, `bb`"), "{err}");
    }

    #[test]
    fn variable_style_with_no_active_member_keeps_the_line() {
        let config = variable_config();
        let operator = "# written by deploy.sh\nset $service_url http://127.0.0.1:8082;  # blue\n";
        // First registration over the operator's file: its target keeps serving.
        let set = variable_set(&[("a", LbState::Disabled)]);
        let text = render(&config, &set, Some(operator)).unwrap();
        assert_eq!(
            directives(&text),
            ["set $service_url http://127.0.0.1:8082;"]
        );
        // Nothing to keep: nginx would fail with `unknown "service_url" variable`.
        let err = render(&config, &set, None).unwrap_err().to_string();
        assert!(err.contains("no `set $service_url …;` line"), "{err}");
        let err = render(&config, &set, Some("upstream x { server a:1; }\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown \"service_url\" variable"), "{err}");
        // The line points at a member just taken out: it cannot stay there, nor be empty...
        let nonstop = render(&config, &variable_set(&[("a", LbState::Active)]), None).unwrap();
        let err = render(&config, &set, Some(&nonstop))
            .unwrap_err()
            .to_string();
        assert!(err.contains("make another member active"), "{err}");
        // ...unless the operator's own target from before nonstop is known: it serves again.
        let mut adopted = set.clone();
        adopted.adopted = Some("http://127.0.0.1:8082".into());
        let text = render(&config, &adopted, Some(&nonstop)).unwrap();
        assert_eq!(
            directives(&text),
            ["set $service_url http://127.0.0.1:8082;"]
        );
    }

    #[test]
    fn variable_names_and_lines_are_checked() {
        for bad in ["", "$service_url", "service-url", "a b", "x;y", "ü"] {
            let err = check_variable(bad).unwrap_err().to_string();
            assert!(err.contains("letters, digits and `_`"), "{bad}: {err}");
        }
        check_variable("service_url_2").unwrap();
        assert_eq!(
            parse_variable("set\t$service_url   http://127.0.0.1:1 ;", "service_url").as_deref(),
            Some("http://127.0.0.1:1")
        );
        for other in [
            "set $service_url_old http://a:1;",
            "# set $service_url http://a:1;",
            "set $service_url http://a:1",
            "reset $service_url http://a:1;",
        ] {
            assert_eq!(parse_variable(other, "service_url"), None, "{other}");
        }
        // A kept value that would be syntax is not written back.
        let set = variable_set(&[("a", LbState::Disabled)]);
        assert!(
            render(
                &variable_config(),
                &set,
                Some("set $service_url http://a:1$x;\n")
            )
            .is_err()
        );
        assert_eq!(url_of("unix:/run/a.sock"), "http://unix:/run/a.sock:");
    }

    #[test]
    fn config_needs_exactly_one_of_upstream_and_variable() {
        variable_config().check().unwrap();
        NginxConfig::new("/x/a.conf", "app", vec!["nginx".into()])
            .check()
            .unwrap();
        let mut both = variable_config();
        both.upstream = Some("app".into());
        assert!(both.check().unwrap_err().to_string().contains("not both"));
        let mut neither = variable_config();
        neither.variable = None;
        let err = neither.check().unwrap_err().to_string();
        assert!(
            err.contains("upstream = \"NAME\"") && err.contains("variable = \"service_url\""),
            "{err}"
        );
        let mut sticky = variable_config();
        sticky.sticky = true;
        assert!(
            sticky
                .check()
                .unwrap_err()
                .to_string()
                .contains("need an upstream block")
        );
        let mut bad = variable_config();
        bad.variable = Some("service-url".into());
        assert!(bad.check().is_err());
    }
}
