//! argv templates with `{name}` placeholders, as the process and command drivers take them:
//! each placeholder becomes part of one argument, so no value is ever split or parsed by a shell.

use std::collections::BTreeMap;

/// The first `{name}` in `arg` that is not in `known`.
pub fn unknown_placeholder(arg: &str, known: &[&str]) -> Option<String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        if !known.contains(&&after[..close]) {
            return Some(after[..close].to_string());
        }
        rest = &after[close + 1..];
    }
    None
}

/// `template` with every `{name}` of `values` replaced.
pub fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Checks every hook of a driver: a program, and only `known` placeholders.
pub fn check_hooks<'a>(
    hooks: impl IntoIterator<Item = (&'a str, Option<&'a Vec<String>>)>,
    known: &[&str],
) -> Result<(), String> {
    for (name, argv) in hooks {
        let Some(argv) = argv else { continue };
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(format!(
                "`{name}` needs a program first, e.g. [\"/usr/local/bin/ctl\", \"{name}\", \"{{node}}\"]"
            ));
        }
        if let Some(bad) = argv.iter().find_map(|a| unknown_placeholder(a, known)) {
            return Err(format!(
                "`{name}` uses unknown placeholder `{{{bad}}}`; use {{{}}}",
                known.join("}, {")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked_and_filled_whole() {
        assert_eq!(unknown_placeholder("--port={port}", &["port"]), None);
        assert_eq!(
            unknown_placeholder("{prot}", &["port"]),
            Some("prot".into())
        );
        assert_eq!(unknown_placeholder("json {", &["port"]), None);
        let values = BTreeMap::from([("node", "a b;c".to_string())]);
        assert_eq!(fill("--node={node}", &values), "--node=a b;c");
        let empty: Vec<String> = vec![];
        assert!(check_hooks([("start", Some(&empty))], &["node"]).is_err());
    }
}
