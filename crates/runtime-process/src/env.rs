//! The whole environment of an instance, built in one place for every runtime that spawns and
//! for the agent: inherited baseline < service `env` < the deploy's `--env` < `NONSTOP_*`.

use std::collections::BTreeMap;

use nonstop_ports::{InheritEnv, InstanceSpec};

/// A service's part of its instances' environment: the runtime table's `env` and `inherit_env`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEnv {
    pub env: BTreeMap<String, String>,
    pub inherit: InheritEnv,
}

impl ServiceEnv {
    pub fn new(env: BTreeMap<String, String>, inherit: InheritEnv) -> Self {
        ServiceEnv { env, inherit }
    }

    /// What this service's processes see before any release's own: the inherited part of
    /// nonstop's environment, then `env`.
    pub fn base(&self) -> BTreeMap<String, String> {
        self.base_from(std::env::vars_os())
    }

    fn base_from<K, V>(&self, parent: impl IntoIterator<Item = (K, V)>) -> BTreeMap<String, String>
    where
        K: Into<std::ffi::OsString>,
        V: Into<std::ffi::OsString>,
    {
        let mut env = self.inherit.select(parent);
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// Everything an instance of `spec` sees, to be set on a command after `env_clear()`:
/// the part of nonstop's own environment `service.inherit` keeps, then `service.env`, then
/// `spec.env` (the deploy's `--env`), then [`nonstop_vars`], which nothing overrides because
/// recovery finds an unrecorded instance by them.
pub fn instance_env(spec: &InstanceSpec, service: &ServiceEnv) -> BTreeMap<String, String> {
    instance_env_from(std::env::vars_os(), spec, service)
}

/// [`instance_env`] with `parent` standing for nonstop's own environment.
pub fn instance_env_from<K, V>(
    parent: impl IntoIterator<Item = (K, V)>,
    spec: &InstanceSpec,
    service: &ServiceEnv,
) -> BTreeMap<String, String>
where
    K: Into<std::ffi::OsString>,
    V: Into<std::ffi::OsString>,
{
    let mut env = service.base_from(parent);
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(nonstop_vars(spec).map(|(k, v)| (k.to_string(), v)));
    env
}

/// What every instance is told about itself (docs/lifecycle.md); recovery also finds an
/// instance it never recorded by these.
pub fn nonstop_vars(spec: &InstanceSpec) -> [(&'static str, String); 4] {
    [
        ("NONSTOP_NODE", spec.node.to_string()),
        ("NONSTOP_PORT", spec.port.to_string()),
        ("NONSTOP_VERSION", spec.version.to_string()),
        (
            "NONSTOP_RELEASE_DIR",
            spec.release_dir.to_string_lossy().into_owned(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_ports::{NodeName, Version};

    fn spec() -> InstanceSpec {
        InstanceSpec {
            node: NodeName::from("blue"),
            port: 8081,
            version: Version::from("7"),
            release_dir: "/srv/shop/releases/7".into(),
            artifact: "/srv/shop/releases/7/app.jar".into(),
            env: [
                ("GREETING".to_string(), "from --env".to_string()),
                ("NONSTOP_PORT".to_string(), "1".to_string()),
            ]
            .into(),
            log: "/srv/shop/logs/blue.log".into(),
        }
    }

    #[test]
    fn layers_override_in_order_and_nonstop_vars_win() {
        let parent = [
            ("PATH", "/usr/bin"),
            ("GREETING", "from the shell"),
            ("SECRET_TOKEN", "shh"),
            ("JAVA_HOME", "/jvm"),
        ];
        let service = ServiceEnv::new(
            [
                ("GREETING".to_string(), "from env".to_string()),
                ("JAVA_OPTS".to_string(), "-Xmx1g".to_string()),
            ]
            .into(),
            InheritEnv::Names(vec!["JAVA_HOME".into()]),
        );
        let env = instance_env_from(parent, &spec(), &service);
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "GREETING",
                "JAVA_HOME",
                "JAVA_OPTS",
                "NONSTOP_NODE",
                "NONSTOP_PORT",
                "NONSTOP_RELEASE_DIR",
                "NONSTOP_VERSION",
                "PATH"
            ]
        );
        assert_eq!(env["GREETING"], "from --env");
        assert_eq!(env["NONSTOP_PORT"], "8081");
        assert_eq!(env["NONSTOP_RELEASE_DIR"], "/srv/shop/releases/7");
    }

    #[test]
    fn all_inherits_everything() {
        let service = ServiceEnv::new(BTreeMap::new(), InheritEnv::All);
        let env = instance_env_from([("SECRET_TOKEN", "shh")], &spec(), &service);
        assert_eq!(env["SECRET_TOKEN"], "shh");
    }
}
