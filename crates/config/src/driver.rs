//! The `balancer` and `runtime` tables of a service: a `kind` plus that driver's own settings.
//! Settings are read with their spans intact, so a typo in a driver field still names its line.

use std::ops::Range;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Error as _};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::{ConfigError, HumanDuration, Source};

/// A driver table as first read: its kind, where it is, and which service it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverTable<K> {
    pub kind: K,
    /// The whole table in the file, for errors about it.
    pub span: Range<usize>,
    /// The keys of the table, for telling a user which settings were given.
    pub keys: Vec<String>,
}

/// Kinds are named in lower case in the file; `list` is what the error suggests.
pub trait DriverKind: Sized + Copy + 'static {
    const WHAT: &'static str;
    const ALL: &'static [(&'static str, Self)];
}

impl<'de, K: DriverKind> Deserialize<'de> for DriverTable<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = Spanned::<toml::Table>::deserialize(d)?;
        let span = table.span();
        let table = table.into_inner();
        let names: Vec<&str> = K::ALL.iter().map(|(n, _)| *n).collect();
        let kind = match table.get("kind") {
            None => {
                return Err(D::Error::custom(format!(
                    "this {} table has no `kind`; use one of {}",
                    K::WHAT,
                    names.join(", ")
                )));
            }
            Some(toml::Value::String(s)) => K::ALL
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "unknown {} kind `{s}`; use one of {}",
                        K::WHAT,
                        names.join(", ")
                    ))
                })?,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{} `kind` must be a string, not {}",
                    K::WHAT,
                    other.type_str()
                )));
            }
        };
        Ok(DriverTable {
            kind,
            span,
            keys: table.keys().cloned().collect(),
        })
    }
}

impl<K> DriverTable<K> {
    /// Reads the keys of this table that `keep` accepts as `T` (never `kind`).
    /// `path` is the table's place in the document, e.g. `["services", "shop", "balancer"]`.
    pub fn settings<T: DeserializeOwned>(
        &self,
        source: &Source,
        path: &[&str],
        keep: impl Fn(&str) -> bool,
    ) -> Result<T, ConfigError> {
        let mut document = DeTable::parse(&source.text).map_err(|e| syntax(source, &e))?;
        document.get_mut().make_owned();
        let mut node = DeValue::Table(document.into_inner());
        let mut span = 0..0;
        for key in path {
            let DeValue::Table(mut table) = node else {
                return Err(source.error_at(
                    self.span.clone(),
                    format!("`{key}` is not a table"),
                    None,
                ));
            };
            let Some(found) = table.remove(*key) else {
                return Err(source.error_at(
                    self.span.clone(),
                    format!("`{key}` is missing"),
                    None,
                ));
            };
            span = found.span();
            node = found.into_inner();
        }
        let DeValue::Table(mut table) = node else {
            return Err(source.error_at(
                span,
                format!("`{}` must be a table", path.join(".")),
                None,
            ));
        };
        let dropped: Vec<String> = table
            .iter()
            .map(|(k, _)| k.get_ref().to_string())
            .filter(|k| k == "kind" || !keep(k))
            .collect();
        for key in dropped {
            table.remove(key.as_str());
        }
        let value = Spanned::new(span, DeValue::Table(table));
        T::deserialize(ValueDeserializer::from(value)).map_err(|e| syntax(source, &e))
    }
}

fn syntax(source: &Source, e: &toml::de::Error) -> ConfigError {
    source.error_at(
        e.span().unwrap_or(0..0),
        e.message().trim().to_string(),
        None,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    /// nonstop's own proxy, through its admin API.
    Builtin,
    /// An include file with one `upstream`, checked with `nginx -t` and reloaded.
    Nginx,
    /// The Runtime API on HAProxy's stats socket.
    Haproxy,
    /// Apache mod_jk: the JkMountFile's rule extensions or the jkstatus worker.
    Modjk,
    /// The operator's own argv hooks (an L4 switch's CLI, a cloud balancer's tool).
    Command,
}

impl DriverKind for BalancerKind {
    const WHAT: &'static str = "balancer";
    const ALL: &'static [(&'static str, Self)] = &[
        ("builtin", BalancerKind::Builtin),
        ("nginx", BalancerKind::Nginx),
        ("haproxy", BalancerKind::Haproxy),
        ("modjk", BalancerKind::Modjk),
        ("command", BalancerKind::Command),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Any program started from an argv template (a jar, a binary, a script).
    Process,
    /// A WAR in a Tomcat instance per node.
    Tomcat,
    /// The operator's argv hooks: install, start, stop, status.
    Command,
    /// A systemd unit per node, pointed at the release by a runtime drop-in and restarted.
    Systemd,
}

impl DriverKind for RuntimeKind {
    const WHAT: &'static str = "runtime";
    const ALL: &'static [(&'static str, Self)] = &[
        ("process", RuntimeKind::Process),
        ("tomcat", RuntimeKind::Tomcat),
        ("command", RuntimeKind::Command),
        ("systemd", RuntimeKind::Systemd),
    ];
}

/// Keys every runtime table may hold besides its driver's own settings.
pub const RUNTIME_SHARED_KEYS: &[&str] = &["stop_grace", "env", "env_files", "inherit_env"];

/// The settings every runtime shares, read from the same table as the driver's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RuntimeShared {
    /// Time between asking an instance to stop and forcing it.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: HumanDuration,
    /// Extra environment for every instance.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Secrets: absolute paths of `KEY=VALUE` files read on the host where each instance starts
    /// (see [`crate::env_file`]); never read where the instance does not run.
    #[serde(default)]
    pub env_files: Vec<std::path::PathBuf>,
    /// Which of nonstop's own environment instances and hooks inherit (docs/lifecycle.md).
    #[serde(default)]
    pub inherit_env: nonstop_ports::InheritEnv,
}

impl Default for RuntimeShared {
    fn default() -> Self {
        RuntimeShared {
            stop_grace: default_stop_grace(),
            env: Default::default(),
            env_files: Vec::new(),
            inherit_env: Default::default(),
        }
    }
}

fn default_stop_grace() -> HumanDuration {
    HumanDuration::secs(10)
}
