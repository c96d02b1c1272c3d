//! Import of an existing `workers.properties`: the load-balancer worker, its members, their AJP
//! addresses, routes, lbfactors and activations, resolving `reference=` templates as mod_jk does.

use std::collections::BTreeMap;

use nonstop_ports::LbState;

/// A member's configured activation (`activation=A|D|S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Active,
    Disabled,
    Stopped,
}

impl Activation {
    pub fn lb_state(self) -> LbState {
        match self {
            Activation::Active => LbState::Active,
            Activation::Disabled => LbState::Draining,
            Activation::Stopped => LbState::Disabled,
        }
    }
}

/// One `ajp13` member of the lb worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedMember {
    pub name: String,
    pub host: String,
    /// The Tomcat's AJP port.
    pub port: u16,
    /// Must equal the Tomcat's `<Engine jvmRoute>`.
    pub route: String,
    pub lbfactor: u32,
    pub activation: Activation,
    /// Whether an AJP `secret` is configured (Tomcat 10 refuses AJP without one by default).
    pub has_secret: bool,
    /// The other lb workers that list this member too.
    pub also_in: Vec<SharedWith>,
}

/// Another lb worker a member belongs to, with its `balance_workers` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedWith {
    pub lb: String,
    pub line: usize,
    /// How many members that lb worker has in all (1: this member is its only one).
    pub members: usize,
}

/// A `type=lb` worker and its members, in `balance_workers` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedLb {
    pub name: String,
    pub sticky_session: bool,
    pub members: Vec<ImportedMember>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("no load-balancer worker (`worker.NAME.type=lb`) is defined")]
    NoLb,
    #[error("several load-balancer workers are defined ({0}); name the one to import")]
    AmbiguousLb(String),
    #[error("`{0}` is not a load-balancer worker (`worker.{0}.type=lb`)")]
    NotAnLb(String),
    #[error("load-balancer worker `{0}` has no balance_workers")]
    NoMembers(String),
    #[error("line {line}: `{key}={value}` is not a valid number")]
    BadNumber {
        line: usize,
        key: String,
        value: String,
    },
    #[error("worker `{0}` has a `reference` loop")]
    ReferenceLoop(String),
}

/// Keys whose repeated lines mod_jk concatenates instead of overriding.
const LIST_KEYS: [&str; 3] = ["list", "balance_workers", "balanced_workers"];

struct Props {
    /// `worker.NAME.KEY` → (value, line number).
    workers: BTreeMap<String, BTreeMap<String, (String, usize)>>,
}

impl Props {
    fn parse(text: &str) -> Props {
        let mut workers: BTreeMap<String, BTreeMap<String, (String, usize)>> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(rest) = key.strip_prefix("worker.") else {
                continue;
            };
            let Some((name, prop)) = rest.rsplit_once('.') else {
                continue;
            };
            let props = workers.entry(name.to_string()).or_default();
            match props.get_mut(prop) {
                Some((old, _)) if LIST_KEYS.contains(&prop) => {
                    old.push(',');
                    old.push_str(value);
                }
                _ => {
                    props.insert(prop.to_string(), (value.to_string(), index + 1));
                }
            }
        }
        Props { workers }
    }

    /// A worker's property, following `reference=worker.TEMPLATE` chains.
    fn get(&self, worker: &str, key: &str) -> Result<Option<(&str, usize)>, ImportError> {
        let mut current = worker;
        for _ in 0..16 {
            let Some(props) = self.workers.get(current) else {
                return Ok(None);
            };
            if let Some((v, line)) = props.get(key) {
                return Ok(Some((v.as_str(), *line)));
            }
            match props.get("reference") {
                Some((r, _)) => current = r.strip_prefix("worker.").unwrap_or(r),
                None => return Ok(None),
            }
        }
        Err(ImportError::ReferenceLoop(worker.to_string()))
    }

    fn number<T: std::str::FromStr>(
        &self,
        worker: &str,
        key: &str,
        default: T,
    ) -> Result<T, ImportError> {
        match self.get(worker, key)? {
            None => Ok(default),
            Some((v, line)) => v.parse().map_err(|_| ImportError::BadNumber {
                line,
                key: format!("worker.{worker}.{key}"),
                value: v.to_string(),
            }),
        }
    }

    fn flag(&self, worker: &str, key: &str, default: bool) -> Result<bool, ImportError> {
        Ok(match self.get(worker, key)? {
            Some((v, _)) => matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "on" | "yes"),
            None => default,
        })
    }
}

/// An lb worker's members and the line that lists them (0 when none does).
fn balance_workers<'a>(props: &'a Props, lb: &str) -> Result<(Vec<&'a str>, usize), ImportError> {
    let balance = match props.get(lb, "balance_workers")? {
        Some(v) => Some(v),
        None => props.get(lb, "balanced_workers")?,
    };
    Ok(balance
        .map(|(v, line)| {
            let names = v.split(',').map(str::trim).filter(|s| !s.is_empty());
            (names.collect(), line)
        })
        .unwrap_or_default())
}

/// Reads a `workers.properties`; `lb` names the load-balancer worker when there are several.
pub fn import_workers_properties(text: &str, lb: Option<&str>) -> Result<ImportedLb, ImportError> {
    let props = Props::parse(text);
    let mut lbs = Vec::new();
    for name in props.workers.keys() {
        if props.get(name, "type")?.is_some_and(|(t, _)| t == "lb") {
            lbs.push(name.clone());
        }
    }
    let name = match lb {
        Some(wanted) if lbs.iter().any(|l| l == wanted) => wanted.to_string(),
        Some(wanted) => return Err(ImportError::NotAnLb(wanted.to_string())),
        None => match lbs.as_slice() {
            [] => return Err(ImportError::NoLb),
            [only] => only.clone(),
            many => return Err(ImportError::AmbiguousLb(many.join(", "))),
        },
    };
    let (names, _) = balance_workers(&props, &name)?;
    let mut others = Vec::new();
    for other in lbs.iter().filter(|l| **l != name) {
        others.push((other, balance_workers(&props, other)?));
    }
    if names.is_empty() {
        return Err(ImportError::NoMembers(name));
    }
    let mut members = Vec::new();
    for m in names {
        let route = match props.get(m, "route")? {
            Some((r, _)) => r,
            None => props.get(m, "jvm_route")?.map_or(m, |(r, _)| r),
        };
        let activation = match props
            .get(m, "activation")?
            .map(|(a, _)| a.to_ascii_uppercase())
        {
            Some(a) if a.starts_with('D') => Activation::Disabled,
            Some(a) if a.starts_with('S') => Activation::Stopped,
            Some(_) => Activation::Active,
            None if props.flag(m, "stopped", false)? => Activation::Stopped,
            None if props.flag(m, "disabled", false)? => Activation::Disabled,
            None => Activation::Active,
        };
        let lbfactor = props.number(m, "lbfactor", 1)?;
        members.push(ImportedMember {
            name: m.to_string(),
            host: props
                .get(m, "host")?
                .map_or("localhost", |(h, _)| h)
                .to_string(),
            port: props.number(m, "port", 8009)?,
            route: route.to_string(),
            lbfactor,
            activation,
            has_secret: props.get(m, "secret")?.is_some_and(|(s, _)| !s.is_empty()),
            also_in: others
                .iter()
                .filter(|(_, (list, _))| list.contains(&m))
                .map(|(lb, (list, line))| SharedWith {
                    lb: lb.to_string(),
                    line: *line,
                    members: list.len(),
                })
                .collect(),
        });
    }
    Ok(ImportedLb {
        sticky_session: props.flag(&name, "sticky_session", true)?,
        name,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of a production setup: one balancer over two Tomcats sharing a template, plus
    /// one-member balancers used to pin a node during maintenance.
    const FIELD: &str = "\
worker.list=worker1,worker2,balancer,balancer_ex1,balancer_ex2
worker.list=jkstatus

worker.balancer.type=lb
worker.balancer.balance_workers=worker1,worker2
worker.balancer.sticky_session=true
worker.balancer.method=B

worker.balancer_ex1.type=lb
worker.balancer_ex1.balance_workers=worker2

worker.balancer_ex2.type=lb
worker.balancer_ex2.balance_workers=worker1

worker.worker1.reference=worker.template
worker.worker1.host=localhost
worker.worker1.port=8009
worker.worker1.route=tomcat1

worker.worker2.reference=worker.template
worker.worker2.host=10.0.0.12   # second server
worker.worker2.port=8109
worker.worker2.lbfactor=3
worker.worker2.activation=D

worker.template.type=ajp13
worker.template.socket_connect_timeout=5000
worker.template.ping_mode=A
worker.template.secret=s3cret

worker.jkstatus.type=status
";

    #[test]
    fn imports_the_named_balancer_with_templates() {
        let lb = import_workers_properties(FIELD, Some("balancer")).unwrap();
        assert_eq!(lb.name, "balancer");
        assert!(lb.sticky_session);
        assert_eq!(
            lb.members,
            vec![
                ImportedMember {
                    name: "worker1".into(),
                    host: "localhost".into(),
                    port: 8009,
                    route: "tomcat1".into(),
                    lbfactor: 1,
                    activation: Activation::Active,
                    has_secret: true,
                    also_in: vec![SharedWith {
                        lb: "balancer_ex2".into(),
                        line: 13,
                        members: 1
                    }],
                },
                ImportedMember {
                    name: "worker2".into(),
                    host: "10.0.0.12".into(),
                    port: 8109,
                    route: "worker2".into(),
                    lbfactor: 3,
                    activation: Activation::Disabled,
                    has_secret: true,
                    also_in: vec![SharedWith {
                        lb: "balancer_ex1".into(),
                        line: 10,
                        members: 1
                    }],
                },
            ]
        );
    }

    #[test]
    fn several_balancers_must_be_named() {
        assert_eq!(
            import_workers_properties(FIELD, None),
            Err(ImportError::AmbiguousLb(
                "balancer, balancer_ex1, balancer_ex2".into()
            ))
        );
        assert_eq!(
            import_workers_properties(FIELD, Some("worker1")),
            Err(ImportError::NotAnLb("worker1".into()))
        );
    }

    #[test]
    fn single_balancer_with_defaults_and_legacy_keys() {
        let text = "worker.list=lb\nworker.lb.type=lb\nworker.lb.balance_workers=a\n\
                    worker.lb.balance_workers=b\nworker.lb.sticky_session=false\n\
                    worker.a.type=ajp13\nworker.b.type=ajp13\nworker.b.jvm_route=tc2\n\
                    worker.b.stopped=true\nworker.b.port=18009\n";
        let lb = import_workers_properties(text, None).unwrap();
        assert!(!lb.sticky_session);
        let a = &lb.members[0];
        assert_eq!(
            (a.host.as_str(), a.port, a.route.as_str()),
            ("localhost", 8009, "a")
        );
        assert!(!a.has_secret);
        let b = &lb.members[1];
        assert_eq!(
            (b.port, b.route.as_str(), b.activation),
            (18009, "tc2", Activation::Stopped)
        );
    }

    #[test]
    fn bad_numbers_name_their_line() {
        let text = "worker.lb.type=lb\nworker.lb.balance_workers=a\nworker.a.port=80x9\n";
        assert_eq!(
            import_workers_properties(text, None),
            Err(ImportError::BadNumber {
                line: 3,
                key: "worker.a.port".into(),
                value: "80x9".into()
            })
        );
        let text = "worker.lb.type=lb\nworker.lb.balance_workers=a\nworker.a.reference=worker.a\n";
        assert_eq!(
            import_workers_properties(text, None),
            Err(ImportError::ReferenceLoop("a".into()))
        );
    }
}
