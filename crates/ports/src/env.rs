//! Which of nonstop's own environment a release's processes inherit: a short documented
//! baseline by default, plus the names a service lists in `inherit_env`, or all of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Inherited by default: what a program needs to find binaries, a home and a locale.
pub const BASELINE: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"];

/// Inherited by default as a prefix (`LC_ALL`, `LC_CTYPE`, …).
pub const BASELINE_PREFIX: &str = "LC_";

/// A service's `inherit_env`: extra names on top of [`BASELINE`], or `"all"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "InheritEnvToml", into = "InheritEnvToml")]
pub enum InheritEnv {
    /// The baseline plus these names.
    Names(Vec<String>),
    /// nonstop's whole environment (the behaviour before `inherit_env` existed).
    All,
}

impl Default for InheritEnv {
    fn default() -> Self {
        InheritEnv::Names(Vec::new())
    }
}

impl InheritEnv {
    /// Whether a variable called `name` is inherited.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            InheritEnv::All => true,
            InheritEnv::Names(extra) => {
                BASELINE.contains(&name)
                    || name.starts_with(BASELINE_PREFIX)
                    || extra.iter().any(|e| e == name)
            }
        }
    }

    /// The inherited part of `parent` (a process environment); names or values that are not
    /// UTF-8 are left out.
    pub fn select<K, V>(&self, parent: impl IntoIterator<Item = (K, V)>) -> BTreeMap<String, String>
    where
        K: Into<std::ffi::OsString>,
        V: Into<std::ffi::OsString>,
    {
        parent
            .into_iter()
            .filter_map(|(k, v)| Some((k.into().into_string().ok()?, v.into().into_string().ok()?)))
            .filter(|(k, _)| self.keeps(k))
            .collect()
    }

    /// The inherited part of this process's environment.
    pub fn from_here(&self) -> BTreeMap<String, String> {
        self.select(std::env::vars_os())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum InheritEnvToml {
    Word(String),
    Names(Vec<String>),
}

impl TryFrom<InheritEnvToml> for InheritEnv {
    type Error = String;

    fn try_from(value: InheritEnvToml) -> Result<Self, String> {
        match value {
            InheritEnvToml::Word(w) if w == "all" => Ok(InheritEnv::All),
            InheritEnvToml::Word(w) => Err(format!(
                "inherit_env = {w:?}: expected \"all\" or a list of variable names such as [\"JAVA_HOME\"]"
            )),
            InheritEnvToml::Names(names) => {
                if let Some(bad) = names
                    .iter()
                    .find(|n| n.is_empty() || n.contains(['=', '\0']))
                {
                    return Err(format!(
                        "inherit_env: {bad:?} is not a variable name (no `=`, not empty)"
                    ));
                }
                Ok(InheritEnv::Names(names))
            }
        }
    }
}

impl From<InheritEnv> for InheritEnvToml {
    fn from(value: InheritEnv) -> Self {
        match value {
            InheritEnv::All => InheritEnvToml::Word("all".into()),
            InheritEnv::Names(names) => InheritEnvToml::Names(names),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> Vec<(String, String)> {
        [
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C.UTF-8"),
            ("AWS_SECRET_ACCESS_KEY", "shh"),
            ("JAVA_HOME", "/usr/lib/jvm/x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }

    #[test]
    fn the_default_keeps_the_baseline_only() {
        let kept = InheritEnv::default().select(parent());
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["LC_ALL", "PATH"]);
    }

    #[test]
    fn listed_names_and_all_add_to_it() {
        let kept = InheritEnv::Names(vec!["JAVA_HOME".into()]).select(parent());
        assert_eq!(
            kept.keys().collect::<Vec<_>>(),
            ["JAVA_HOME", "LC_ALL", "PATH"]
        );
        assert_eq!(InheritEnv::All.select(parent()).len(), 4);
    }

    #[derive(Deserialize)]
    struct T {
        inherit_env: InheritEnv,
    }

    #[test]
    fn parses_a_list_or_all_and_names_a_bad_word() {
        let t: T = toml_like(r#"{"inherit_env": "all"}"#).unwrap();
        assert_eq!(t.inherit_env, InheritEnv::All);
        let t: T = toml_like(r#"{"inherit_env": ["JAVA_HOME"]}"#).unwrap();
        assert_eq!(t.inherit_env, InheritEnv::Names(vec!["JAVA_HOME".into()]));
        let err = toml_like::<T>(r#"{"inherit_env": "some"}"#).err().unwrap();
        assert!(err.contains("expected \"all\""), "{err}");
        let err = toml_like::<T>(r#"{"inherit_env": ["A=B"]}"#).err().unwrap();
        assert!(err.contains("not a variable name"), "{err}");
    }

    fn toml_like<D: serde::de::DeserializeOwned>(json: &str) -> Result<D, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }
}
