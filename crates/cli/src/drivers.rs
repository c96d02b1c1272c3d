//! The composition root for drivers: turns a service's `balancer` and `runtime` tables into the
//! concrete driver, so the engine stays generic over the `Balancer` and `Runtime` traits.

use std::path::PathBuf;
use std::time::Duration;

use nonstop_admin_client::{AdminClient, Endpoint};
use nonstop_balancer_builtin::BuiltinBalancer;
use nonstop_balancer_command::{CommandBalancer, CommandConfig};
use nonstop_balancer_haproxy::{HaproxyBalancer, HaproxyConfig};
use nonstop_balancer_modjk::{ModjkBalancer, ModjkConfig};
use nonstop_balancer_nginx::{NginxBalancer, NginxConfig};
use nonstop_config::driver::RUNTIME_SHARED_KEYS;
use nonstop_config::{BalancerKind, Config, ConfigError, RuntimeKind, ServiceConfig, Source};
use nonstop_ports::{
    Balancer, Instance, InstanceSpec, LbState, Member, NodeName, PortResult, Runtime,
};
use nonstop_runtime_command::{CommandRuntime, CommandRuntimeConfig};
use nonstop_runtime_process::ProcessRuntime;
use nonstop_runtime_tomcat::{TomcatConfig, TomcatRuntime};

/// Whichever balancer a service's config names.
pub enum AnyBalancer {
    Builtin(BuiltinBalancer),
    Nginx(NginxBalancer),
    Haproxy(HaproxyBalancer),
    Modjk(ModjkBalancer),
    Command(CommandBalancer),
}

/// Whichever runtime a service's config names.
pub enum AnyRuntime {
    Process(ProcessRuntime),
    Tomcat(TomcatRuntime),
    Command(CommandRuntime),
}

/// The typed settings of a service's drivers, read and checked but not yet connected.
enum BalancerSettings {
    Builtin {
        endpoint: Endpoint,
        token_file: Option<PathBuf>,
        pool: String,
    },
    Nginx(NginxConfig),
    Haproxy(HaproxyConfig),
    Modjk(ModjkConfig),
    Command(CommandConfig),
}

enum RuntimeSettings {
    Process,
    Tomcat(TomcatConfig),
    Command(CommandRuntimeConfig),
}

/// Checks every service's driver settings, with the file and line of a mistake.
pub fn check(config: &Config, source: &Source) -> Result<(), ConfigError> {
    for (name, svc) in &config.services {
        // Hooks are checked whole (program, placeholders) here, not first at deploy time.
        if let BalancerSettings::Command(c) = balancer_settings(name, svc, config, source)? {
            CommandBalancer::new(c).map_err(|e| {
                source.error_at(
                    svc.balancer.table.span.clone(),
                    format!("service `{name}`: {e}"),
                    None,
                )
            })?;
        }
        if let RuntimeSettings::Command(c) = runtime_settings(name, svc, source)? {
            CommandRuntime::new(c, []).map_err(|e| {
                source.error_at(
                    svc.runtime.table.span.clone(),
                    format!("service `{name}`: {e}"),
                    None,
                )
            })?;
        }
    }
    Ok(())
}

/// Builds the balancer and runtime of service `name`.
pub fn build(
    name: &str,
    svc: &ServiceConfig,
    config: &Config,
    source: &Source,
) -> Result<(AnyBalancer, AnyRuntime), String> {
    let balancer = match balancer_settings(name, svc, config, source).map_err(|e| e.to_string())? {
        BalancerSettings::Builtin {
            endpoint,
            token_file,
            pool,
        } => {
            let token = match token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            format!("cannot read admin token file {}: {e}", path.display())
                        })?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            AnyBalancer::Builtin(BuiltinBalancer::new(
                AdminClient::new(endpoint, token),
                pool,
            ))
        }
        BalancerSettings::Nginx(c) => {
            AnyBalancer::Nginx(NginxBalancer::new(c).map_err(|e| e.to_string())?)
        }
        BalancerSettings::Haproxy(c) => {
            AnyBalancer::Haproxy(HaproxyBalancer::new(c).map_err(|e| e.to_string())?)
        }
        BalancerSettings::Command(c) => {
            AnyBalancer::Command(CommandBalancer::new(c).map_err(|e| e.to_string())?)
        }
        BalancerSettings::Modjk(c) => {
            AnyBalancer::Modjk(ModjkBalancer::new(c).map_err(|e| e.to_string())?)
        }
    };
    let runtime = match runtime_settings(name, svc, source).map_err(|e| e.to_string())? {
        RuntimeSettings::Process => AnyRuntime::Process(ProcessRuntime::new(
            svc.runtime.argv(),
            svc.runtime.shared.env.clone(),
        )),
        RuntimeSettings::Tomcat(c) => {
            AnyRuntime::Tomcat(TomcatRuntime::new(c).map_err(|e| e.to_string())?)
        }
        RuntimeSettings::Command(c) => {
            AnyRuntime::Command(CommandRuntime::new(c, svc.runtime.shared.env.clone())?)
        }
    };
    Ok((balancer, runtime))
}

fn balancer_settings(
    name: &str,
    svc: &ServiceConfig,
    config: &Config,
    source: &Source,
) -> Result<BalancerSettings, ConfigError> {
    let table = &svc.balancer.table;
    let path = ["services", name, "balancer"];
    let settings = match svc.balancer.kind() {
        BalancerKind::Builtin => {
            let builtin = svc
                .balancer
                .builtin
                .as_ref()
                .expect("read when the config was loaded");
            let admin = svc
                .admin_endpoint(config)
                .expect("validated when the config was loaded");
            let endpoint = admin.to_string().parse().map_err(|e: String| {
                source.error_at(
                    table.span.clone(),
                    format!("service `{name}`: admin endpoint: {e}"),
                    None,
                )
            })?;
            BalancerSettings::Builtin {
                endpoint,
                token_file: svc.admin_token_file(config),
                pool: builtin.pool.get_ref().clone(),
            }
        }
        BalancerKind::Nginx => BalancerSettings::Nginx(table.settings(source, &path, |_| true)?),
        BalancerKind::Haproxy => {
            BalancerSettings::Haproxy(table.settings(source, &path, |_| true)?)
        }
        BalancerKind::Modjk => BalancerSettings::Modjk(table.settings(source, &path, |_| true)?),
        BalancerKind::Command => {
            BalancerSettings::Command(table.settings(source, &path, |_| true)?)
        }
    };
    Ok(settings)
}

fn runtime_settings(
    name: &str,
    svc: &ServiceConfig,
    source: &Source,
) -> Result<RuntimeSettings, ConfigError> {
    let table = &svc.runtime.table;
    match svc.runtime.kind() {
        RuntimeKind::Process => Ok(RuntimeSettings::Process),
        RuntimeKind::Command => {
            let path = ["services", name, "runtime"];
            Ok(RuntimeSettings::Command(table.settings(
                source,
                &path,
                |k| !RUNTIME_SHARED_KEYS.contains(&k),
            )?))
        }
        RuntimeKind::Tomcat => {
            let path = ["services", name, "runtime"];
            let tomcat: TomcatConfig =
                table.settings(source, &path, |k| !RUNTIME_SHARED_KEYS.contains(&k))?;
            if let Some(node) = svc
                .nodes
                .iter()
                .find(|n| !tomcat.bases.contains_key(n.name.get_ref()))
            {
                return Err(source.error_at(
                    node.name.span(),
                    format!(
                        "service `{name}`: node `{}` has no Tomcat in `bases`",
                        node.name.get_ref()
                    ),
                    Some(format!(
                        "add `{} = \"/path/to/its/CATALINA_BASE\"` to the runtime's `bases`",
                        node.name.get_ref()
                    )),
                ));
            }
            Ok(RuntimeSettings::Tomcat(tomcat))
        }
    }
}

/// Dispatches a trait call to whichever driver is inside.
macro_rules! each_balancer {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBalancer::Builtin($b) => $call,
            AnyBalancer::Nginx($b) => $call,
            AnyBalancer::Haproxy($b) => $call,
            AnyBalancer::Modjk($b) => $call,
            AnyBalancer::Command($b) => $call,
        }
    };
}

macro_rules! each_runtime {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            AnyRuntime::Process($r) => $call,
            AnyRuntime::Tomcat($r) => $call,
            AnyRuntime::Command($r) => $call,
        }
    };
}

impl Balancer for AnyBalancer {
    async fn members(&self) -> PortResult<Vec<Member>> {
        each_balancer!(self, b => b.members().await)
    }
    async fn register(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        each_balancer!(self, b => b.register(node, addr).await)
    }
    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        each_balancer!(self, b => b.set_state(node, state).await)
    }
    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        each_balancer!(self, b => b.set_weight(node, weight).await)
    }
    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        each_balancer!(self, b => b.switch(changes).await)
    }
}

impl Runtime for AnyRuntime {
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        each_runtime!(self, r => r.start(spec).await)
    }
    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        each_runtime!(self, r => r.stop(instance, grace).await)
    }
    fn is_running(&self, instance: &Instance) -> bool {
        each_runtime!(self, r => r.is_running(instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<(), ConfigError> {
        let source = Source {
            path: "nonstop.toml".into(),
            text: text.to_string(),
        };
        let config = Config::parse(&source)?;
        check(&config, &source)
    }

    const SERVICE: &str = r#"
[services.shop]
strategy = "rolling"
balancer = { kind = "command", enable = ["l4", "up", "{node}"], drain = ["l4", "drain", "{node}"], disable = ["l4", "down", "{node}"], status = ["l4", "status"] }
runtime = { kind = "process", start = ["app", "--port", "{port}"] }
releases = { dir = "/tmp/shop" }

[[services.shop.nodes]]
name = "a"
port = 8081
"#;

    #[test]
    fn hooks_and_driver_fields_are_checked_with_their_line() {
        check_text(SERVICE).unwrap();
        let err =
            check_text(&SERVICE.replace("\"up\", \"{node}\"", "\"up\", \"{nod}\"")).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("{nod}"), "{err}");
        let err = check_text(&SERVICE.replace("status = [", "stauts = [")).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("stauts"), "{err}");
        let tomcat = SERVICE.replace(
            "runtime = { kind = \"process\", start = [\"app\", \"--port\", \"{port}\"] }",
            "runtime = { kind = \"tomcat\", context = \"app\", bases = { b = \"/srv/b\" } }",
        );
        let err = check_text(&tomcat).unwrap_err();
        assert!(err.message.contains("node `a` has no Tomcat"), "{err}");
        assert_eq!(err.line, 9, "points at the node: {err}");
    }
}
