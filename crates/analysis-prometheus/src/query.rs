//! PromQL templates: `{service}`, `{version}`, `{canary}`, `{stable}` and `{window}` filled from
//! a canary window, escaped for a double-quoted PromQL string (node lists also as a regex).

use std::time::Duration;

use nonstop_ports::{AnalysisWindow, NodeName};

/// The placeholders a query may use.
pub const PLACEHOLDERS: &[&str] = &["service", "version", "canary", "stable", "window"];

/// A query with its placeholders checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTemplate {
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placeholder `{{{name}}}` in the query; use {{{}}}", PLACEHOLDERS.join("}, {"))]
pub struct UnknownPlaceholder {
    pub name: String,
}

impl QueryTemplate {
    pub fn parse(text: &str) -> Result<QueryTemplate, UnknownPlaceholder> {
        if let Some((_, name)) = placeholders(text).find(|(_, n)| !PLACEHOLDERS.contains(n)) {
            return Err(UnknownPlaceholder {
                name: name.to_string(),
            });
        }
        Ok(QueryTemplate {
            text: text.to_string(),
        })
    }

    /// The query for one window, every placeholder replaced.
    pub fn fill(&self, window: &AnalysisWindow) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut rest = self.text.as_str();
        for (at, name) in placeholders(&self.text) {
            let start = at - (self.text.len() - rest.len());
            out.push_str(&rest[..start]);
            out.push_str(&match name {
                "service" => string_escape(&window.service),
                "version" => string_escape(&window.version.0),
                "canary" => string_escape(&alternatives(&window.canaries)),
                "stable" => string_escape(&alternatives(&window.stable)),
                _ => duration(window.window),
            });
            rest = &rest[start + name.len() + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// Each `{name}` of `text` with its byte offset: a word of lowercase letters and `_` in braces.
/// PromQL's own braces hold matchers (`{pool="shop"}`), which are never one bare word.
fn placeholders(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.match_indices('{').filter_map(|(at, _)| {
        let after = &text[at + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        let word = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        word.then_some((at, name))
    })
}

/// Node names as one RE2 alternation (`blue|green`), each name's metacharacters escaped. An
/// empty list matches nothing, not the empty label.
fn alternatives(nodes: &[NodeName]) -> String {
    if nodes.is_empty() {
        return r"[^\s\S]".to_string();
    }
    let escaped: Vec<String> = nodes.iter().map(|n| regex_escape(&n.0)).collect();
    escaped.join("|")
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `text` as the inside of a double-quoted PromQL string.
fn string_escape(text: &str) -> String {
    text.replace('\\', r"\\").replace('"', "\\\"")
}

/// A PromQL duration: whole seconds as `30s`, anything finer in milliseconds.
fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs().max(1))
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_ports::Version;

    fn window(canaries: &[&str], stable: &[&str]) -> AnalysisWindow {
        AnalysisWindow {
            service: "shop".into(),
            version: Version("2.0-rc\"1".into()),
            step: 1,
            share: 10,
            window: Duration::from_secs(30),
            canaries: canaries.iter().map(|n| NodeName::from(*n)).collect(),
            stable: stable.iter().map(|n| NodeName::from(*n)).collect(),
        }
    }

    #[test]
    fn placeholders_are_filled_and_promql_braces_left_alone() {
        let q = QueryTemplate::parse(
            r#"sum(rate(x{pool="{service}",backend=~"{canary}",v="{version}"}[{window}])) / sum(rate(x{backend=~"{stable}"}[{window}]))"#,
        )
        .unwrap();
        assert_eq!(
            q.fill(&window(&["green"], &["blue", "blue.2"])),
            r#"sum(rate(x{pool="shop",backend=~"green",v="2.0-rc\"1"}[30s])) / sum(rate(x{backend=~"blue|blue\\.2"}[30s]))"#
        );
        let plain = QueryTemplate::parse("up").unwrap();
        assert_eq!(plain.fill(&window(&["a"], &[])), "up");
        let none = QueryTemplate::parse(r#"x{b=~"{stable}"}"#).unwrap();
        assert_eq!(none.fill(&window(&["a"], &[])), r#"x{b=~"[^\\s\\S]"}"#);
    }

    #[test]
    fn regex_metacharacters_in_names_are_escaped() {
        assert_eq!(regex_escape("a.b+c(d)|e"), r"a\.b\+c\(d\)\|e");
        assert_eq!(string_escape(r"a\.b"), r"a\\.b");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(120)), "120s");
    }

    #[test]
    fn unknown_placeholders_are_named() {
        let err = QueryTemplate::parse(r#"x{b=~"{canaries}"}[{window}]"#).unwrap_err();
        assert_eq!(err.name, "canaries");
        assert!(err.to_string().contains("{canary}, {stable}"), "{err}");
        // Matchers and empty braces are PromQL, not placeholders.
        QueryTemplate::parse(r#"count({__name__=~".+"}) + vector(0) * x{}"#).unwrap();
    }
}
