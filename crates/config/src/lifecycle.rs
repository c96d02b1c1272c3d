//! `[services.NAME.hooks]`: the operator's commands at named points of every deploy
//! (before it, per node after install, around traffic, after it, on rollback and failure).

use serde::Deserialize;
use toml::Spanned;

use crate::{ConfigError, HumanDuration, Source};

/// Placeholders a lifecycle hook's argv may use (the environment carries the same and more).
pub const HOOK_PLACEHOLDERS: &[&str] = &[
    "service",
    "node",
    "port",
    "version",
    "old_version",
    "release_dir",
    "artifact",
    "deploy",
    "strategy",
];

/// One hook: an argv (never a shell string), how long it may take, and whether its failure
/// rolls the deploy back (always for `before_*` and `after_install`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub run: Spanned<Vec<String>>,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// For `after_traffic` / `after_deploy`: a failure rolls back instead of being reported.
    #[serde(default)]
    pub rollback: bool,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::secs(60)
}

/// `migrate`: the database migration of a release, run once per deploy before the first node
/// gets it. Not reversible unless it says so (and then `down` undoes it on a rollback).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub run: Spanned<Vec<String>>,
    #[serde(default)]
    pub down: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub reversible: bool,
    #[serde(default = "default_migration_timeout")]
    pub timeout: HumanDuration,
}

fn default_migration_timeout() -> HumanDuration {
    HumanDuration::secs(600)
}

impl Migration {
    pub fn check(&self, service: &str, source: &Source) -> Result<(), ConfigError> {
        for (what, argv) in [("run", Some(&self.run)), ("down", self.down.as_ref())] {
            let Some(argv) = argv else { continue };
            check_argv(service, &format!("`migrate.{what}`"), argv, source)?;
        }
        if self.down.is_some() && !self.reversible {
            return Err(source.error_at(
                self.run.span(),
                format!("service `{service}`: `migrate.down` is given but `reversible` is false"),
                Some(
                    "set `reversible = true` if `down` undoes the migration, or drop `down`".into(),
                ),
            ));
        }
        Ok(())
    }
}

fn check_argv(
    service: &str,
    name: &str,
    run: &Spanned<Vec<String>>,
    source: &Source,
) -> Result<(), ConfigError> {
    let argv = run.get_ref();
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(source.error_at(
            run.span(),
            format!("service `{service}`: {name} needs a program first"),
            Some(
                "e.g. run = [\"/opt/shop/bin/migrate\", \"{version}\"]; it is never run by a shell"
                    .to_string(),
            ),
        ));
    }
    for arg in argv {
        if let Some(bad) = nonstop_ports::template::unknown_placeholder(arg, HOOK_PLACEHOLDERS) {
            return Err(source.error_at(
                run.span(),
                format!("service `{service}`: {name} uses the unknown placeholder `{{{bad}}}`"),
                Some(format!(
                    "placeholders are {}",
                    HOOK_PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LifecycleHooks {
    pub before_deploy: Option<Hook>,
    pub after_install: Option<Hook>,
    pub before_traffic: Option<Hook>,
    pub after_traffic: Option<Hook>,
    pub after_deploy: Option<Hook>,
    pub on_rollback: Option<Hook>,
    pub on_failure: Option<Hook>,
}

impl LifecycleHooks {
    pub fn all(&self) -> [(&'static str, Option<&Hook>); 7] {
        [
            ("before_deploy", self.before_deploy.as_ref()),
            ("after_install", self.after_install.as_ref()),
            ("before_traffic", self.before_traffic.as_ref()),
            ("after_traffic", self.after_traffic.as_ref()),
            ("after_deploy", self.after_deploy.as_ref()),
            ("on_rollback", self.on_rollback.as_ref()),
            ("on_failure", self.on_failure.as_ref()),
        ]
    }

    /// Every hook has a program and only known placeholders, else the error names its line.
    pub fn check(&self, service: &str, source: &Source) -> Result<(), ConfigError> {
        for (name, hook) in self.all() {
            if let Some(hook) = hook {
                check_argv(service, &format!("hook `{name}`"), &hook.run, source)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Source};

    fn parse(hooks: &str) -> Result<Config, crate::ConfigError> {
        let text = format!(
            "[services.shop]\nbalancer = {{ kind = \"command\", enable = [\"x\"], drain = [\"x\"], disable = [\"x\"] }}\nruntime = {{ kind = \"process\", start = [\"app\"] }}\nreleases = {{ dir = \"/tmp/shop\" }}\n{hooks}\n[[services.shop.nodes]]\nname = \"a\"\nport = 1\n[[services.shop.nodes]]\nname = \"b\"\nport = 2\n"
        );
        Config::parse(&Source {
            path: "nonstop.toml".into(),
            text,
        })
    }

    #[test]
    fn per_node_hooks_are_allowed_for_nodes_on_hosts() {
        let text = "[hosts.web1]\nagent = \"10.0.0.1:7443\"\n[services.shop]\nstrategy = \"rolling\"\nbalancer = { kind = \"command\", enable = [\"x\"], drain = [\"x\"], disable = [\"x\"] }\nruntime = { kind = \"process\", start = [\"app\"] }\nreleases = { dir = \"/tmp/shop\" }\nhooks = { after_install = { run = [\"/bin/true\", \"{node}\"] }, before_traffic = { run = [\"/bin/true\"] } }\n[[services.shop.nodes]]\nname = \"a\"\nhost = \"web1\"\nport = 1\n";
        let config = Config::parse(&Source {
            path: "nonstop.toml".into(),
            text: text.into(),
        })
        .unwrap();
        let shop = &config.services["shop"];
        assert!(shop.on_hosts());
        assert!(shop.hooks.after_install.is_some());
    }

    #[test]
    fn hooks_are_checked_with_their_line() {
        let config =
            parse("hooks = { before_deploy = { run = [\"/bin/true\", \"{version}\"] } }").unwrap();
        let hook = config.services["shop"].hooks.before_deploy.clone().unwrap();
        assert_eq!(hook.timeout.0, std::time::Duration::from_secs(60));
        let err = parse("hooks = { after_install = { run = [\"/bin/true\", \"{versoin}\"] } }")
            .unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("{versoin}"), "{err}");
        let err = parse("hooks = { after_deploy = { run = [] } }").unwrap_err();
        assert!(err.message.contains("needs a program"), "{err}");
        let err = parse("hooks = { after_deplyo = { run = [\"x\"] } }").unwrap_err();
        assert!(err.message.contains("after_deplyo"), "{err}");
    }
}
