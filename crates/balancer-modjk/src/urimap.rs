//! Rule extensions of `uriworkermap.properties`: reads and rewrites `;active=`, `;disabled=` and
//! `;stopped=` on the mount lines of one lb worker, leaving every other line byte for byte.

use std::collections::BTreeMap;

use crate::workers::Activation;

/// Per-member activation overrides carried by the lb worker's mount rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleActivations(pub BTreeMap<String, Activation>);

const KEYS: [(&str, Activation); 3] = [
    ("active", Activation::Active),
    ("disabled", Activation::Disabled),
    ("stopped", Activation::Stopped),
];

/// A mount rule `URI=WORKER;ext;ext` of a plain (not `!` or `-`) line.
struct Rule<'a> {
    uri: &'a str,
    worker: &'a str,
    extensions: Vec<&'a str>,
}

fn rule(line: &str) -> Option<Rule<'_>> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with(['#', '!', '-']) {
        return None;
    }
    let (uri, rest) = trimmed.split_once('=')?;
    let mut parts = rest.split(';');
    let worker = parts.next()?.trim();
    Some(Rule {
        uri: uri.trim(),
        worker,
        extensions: parts.map(str::trim).filter(|e| !e.is_empty()).collect(),
    })
}

impl RuleActivations {
    /// The overrides on the first mount rule of `lb`; `None` when no rule mounts it.
    pub fn read(text: &str, lb: &str) -> Option<RuleActivations> {
        let rule = text.lines().filter_map(rule).find(|r| r.worker == lb)?;
        let mut map = BTreeMap::new();
        for ext in &rule.extensions {
            let Some((key, value)) = ext.split_once('=') else {
                continue;
            };
            if let Some((_, activation)) = KEYS.iter().find(|(k, _)| *k == key.trim()) {
                for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    map.insert(member.to_string(), *activation);
                }
            }
        }
        Some(RuleActivations(map))
    }

    /// The member's effective activation, given its `workers.properties` one.
    pub fn effective(&self, member: &str, configured: Activation) -> Activation {
        self.0.get(member).copied().unwrap_or(configured)
    }

    /// Sets `member`, dropping the override when it equals the configured activation.
    pub fn set(&mut self, member: &str, wanted: Activation, configured: Activation) {
        if wanted == configured {
            self.0.remove(member);
        } else {
            self.0.insert(member.to_string(), wanted);
        }
    }

    fn extensions(&self) -> String {
        let mut out = String::new();
        for (key, activation) in KEYS {
            let members: Vec<&str> = self
                .0
                .iter()
                .filter(|(_, a)| **a == activation)
                .map(|(m, _)| m.as_str())
                .collect();
            if !members.is_empty() {
                out.push_str(&format!(";{key}={}", members.join(",")));
            }
        }
        out
    }

    /// `text` with every mount rule of `lb` carrying exactly these overrides; `None` when no
    /// rule mounts `lb` (nothing would take effect).
    pub fn apply(&self, text: &str, lb: &str) -> Option<String> {
        let mut found = false;
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let ending = &line[body.len()..];
            match rule(body) {
                Some(r) if r.worker == lb => {
                    found = true;
                    out.push_str(&format!("{}={}", r.uri, r.worker));
                    for ext in r.extensions.iter().filter(|e| {
                        let key = e.split_once('=').map_or(**e, |(k, _)| k).trim();
                        !KEYS.iter().any(|(k, _)| *k == key)
                    }) {
                        out.push(';');
                        out.push_str(ext);
                    }
                    out.push_str(&self.extensions());
                    out.push_str(ending);
                }
                _ => out.push_str(line),
            }
        }
        found.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "# managed in part by nonstop\n/*=balancer;reply_timeout=60000\n\
                       !/*.png=balancer\n/admin|/*=balancer_ex1\n/app/*=balancer;disabled=worker3\n";

    #[test]
    fn reads_overrides_of_the_first_rule() {
        let m = RuleActivations::read(MAP, "balancer").unwrap();
        assert!(m.0.is_empty());
        let m = RuleActivations::read("/x=lb;stopped=a,b;disabled=c\n", "lb").unwrap();
        assert_eq!(m.effective("a", Activation::Active), Activation::Stopped);
        assert_eq!(m.effective("c", Activation::Active), Activation::Disabled);
        assert_eq!(m.effective("d", Activation::Active), Activation::Active);
        assert!(RuleActivations::read(MAP, "nope").is_none());
    }

    #[test]
    fn rewrites_only_the_lb_rules_and_keeps_other_extensions() {
        let mut m = RuleActivations::read(MAP, "balancer").unwrap();
        m.set("worker1", Activation::Disabled, Activation::Active);
        m.set("worker2", Activation::Stopped, Activation::Active);
        let out = m.apply(MAP, "balancer").unwrap();
        assert_eq!(
            out,
            "# managed in part by nonstop\n/*=balancer;reply_timeout=60000;disabled=worker1;stopped=worker2\n\
             !/*.png=balancer\n/admin|/*=balancer_ex1\n/app/*=balancer;disabled=worker1;stopped=worker2\n"
        );
        let mut back = RuleActivations::read(&out, "balancer").unwrap();
        back.set("worker1", Activation::Active, Activation::Active);
        back.set("worker2", Activation::Active, Activation::Active);
        let restored = back.apply(&out, "balancer").unwrap();
        assert!(
            restored.starts_with("# managed in part by nonstop\n/*=balancer;reply_timeout=60000\n")
        );
        assert!(restored.ends_with("/app/*=balancer\n"));
    }

    #[test]
    fn a_member_disabled_in_workers_properties_is_activated_explicitly() {
        let mut m = RuleActivations::default();
        m.set("w", Activation::Active, Activation::Disabled);
        assert_eq!(m.apply("/*=lb\r\n", "lb").unwrap(), "/*=lb;active=w\r\n");
        assert!(m.apply("/*=other\n", "lb").is_none());
    }
}
