//! The composition root for drivers: turns a service's `balancer` and `runtime` tables into the
//! concrete driver, so the engine stays generic over the `Balancer` and `Runtime` traits.

pub mod analyses;
mod environment;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use environment::{Finding, Outcome, check_environment};
use nonstop_admin_client::{AdminClient, Endpoint};
pub use nonstop_agent_client::Fleet;
use nonstop_agent_client::{RemoteBalancer, RemoteRuntime};
use nonstop_balancer_builtin::BuiltinBalancer;
use nonstop_balancer_command::{CommandBalancer, CommandConfig};
use nonstop_balancer_haproxy::{HaproxyBalancer, HaproxyConfig};
use nonstop_balancer_modjk::{ModjkBalancer, ModjkConfig};
use nonstop_balancer_nginx::{NginxBalancer, NginxConfig};
use nonstop_config::driver::RUNTIME_SHARED_KEYS;
use nonstop_config::service::BALANCER_SHARED_KEYS;
use nonstop_config::{BalancerKind, Config, ConfigError, RuntimeKind, ServiceConfig, Source};
use nonstop_engine::{DeployError, Engine, Event};
use nonstop_ports::{
    Balancer, HookOutput, HookRun, Instance, InstanceSpec, LbState, Maintenance, Member, NodeName,
    PortError, PortResult, Preview, Replacement, Runtime, Sessions,
};
use nonstop_probe_http::HttpProbe;
use nonstop_runtime_command::{CommandRuntime, CommandRuntimeConfig};
use nonstop_runtime_process::ProcessRuntime;
use nonstop_runtime_systemd::{SystemdConfig, SystemdRuntime};
use nonstop_runtime_tomcat::{TomcatConfig, TomcatRuntime};

mod canary;

pub use canary::traffic_sources;

/// The engine of one service with the drivers its config names.
pub type ServiceEngine = Engine<AnyBalancer, AnyRuntime, HttpProbe>;

/// Builds the engine for `service` from the config file, with the drivers it names.
pub fn open_engine(
    config_path: &Path,
    service: &str,
    emit: Box<dyn Fn(&Event)>,
) -> Result<ServiceEngine, DeployError> {
    open_fleet_engine(config_path, service, emit, None)
}

/// [`open_engine`] for an orchestrator holding fleet credentials: nodes and balancers on
/// `[hosts]` are driven through their agents.
pub fn open_fleet_engine(
    config_path: &Path,
    service: &str,
    emit: Box<dyn Fn(&Event)>,
    fleet: Option<&Fleet>,
) -> Result<ServiceEngine, DeployError> {
    let (config, source) =
        Config::load(config_path).map_err(|e| DeployError::Refused(e.to_string()))?;
    check(&config, &source).map_err(|e| DeployError::Refused(e.to_string()))?;
    let Some(svc) = config.services.get(service) else {
        let known: Vec<&str> = config.services.keys().map(String::as_str).collect();
        return Err(DeployError::Refused(format!(
            "{}: there is no [services.{service}]{}",
            config_path.display(),
            if known.is_empty() {
                String::new()
            } else {
                format!("; services here: {}", known.join(", "))
            }
        )));
    };
    let (balancer, runtime) = build_for(
        service,
        svc,
        &config,
        &source,
        Placement::Orchestrator(fleet),
    )
    .map_err(DeployError::Refused)?;
    let probe = HttpProbe {
        path: svc.health.path.get_ref().clone(),
        expect_status: svc.health.expect_status,
        expect_body: svc.health.expect_body.clone(),
        timeout: svc.health.timeout.0,
    };
    let base = nonstop_engine::service_base(svc, config_path);
    let config_dir = config_path.parent().unwrap_or(Path::new("."));
    let store = nonstop_engine::store_path(&base);
    let emit = match nonstop_notify::Notifier::for_service(service, svc, config_dir, store) {
        Some(notifier) => notifier.wrap(emit),
        None => emit,
    };
    let analyses =
        analyses::build(service, svc, &source).map_err(|e| DeployError::Refused(e.to_string()))?;
    let mut engine = Engine::new(service, svc.clone(), base, balancer, runtime, probe, emit)?;
    engine.analyses = analyses::boxed(analyses);
    Ok(engine)
}

/// Whichever balancer a service's config names.
pub enum AnyBalancer {
    Builtin(BuiltinBalancer),
    Nginx(NginxBalancer),
    Haproxy(HaproxyBalancer),
    Modjk(ModjkBalancer),
    Command(CommandBalancer),
    /// On another host, through its agent.
    Remote(RemoteBalancer),
}

/// Whichever runtime a service's config names.
pub enum AnyRuntime {
    Process(ProcessRuntime),
    Tomcat(Box<TomcatRuntime>),
    Command(CommandRuntime),
    Systemd(SystemdRuntime),
    /// On the nodes' hosts, through their agents.
    Remote(RemoteRuntime),
}

/// The typed settings of a service's drivers, read and checked but not yet connected.
pub(crate) enum BalancerSettings {
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
    Systemd(SystemdConfig),
}

/// Balancers that route a targeted preview (a header or cookie picks the new release).
const PREVIEW: [BalancerKind; 2] = [BalancerKind::Builtin, BalancerKind::Haproxy];

/// Checks every service's driver settings, with the file and line of a mistake.
pub fn check(config: &Config, source: &Source) -> Result<(), ConfigError> {
    for (name, svc) in &config.services {
        analyses::build(name, svc, source)?;
        let kind = svc.balancer.table.kind;
        if let Some(preview) = &svc.preview
            && !PREVIEW.contains(&kind)
        {
            let kind_name = <BalancerKind as nonstop_config::driver::DriverKind>::ALL
                .iter()
                .find_map(|(name, k)| (*k == kind).then_some(*name))
                .unwrap_or("this");
            return Err(source.error_at(
                preview.span(),
                format!("service `{name}`: the {kind_name} balancer cannot route a targeted preview"),
                Some("remove `preview`, or use the builtin or haproxy balancer (docs/strategies/canary.md#targeted-preview)".into()),
            ));
        }
        let balancer_error = |e: String| {
            source.error_at(
                svc.balancer.table.span.clone(),
                format!("service `{name}`: {e}"),
                None,
            )
        };
        let settings = balancer_settings(name, svc, config, source)?;
        canary::check(name, svc, &settings, source)?;
        match settings {
            // Hooks are checked whole (program, placeholders) here, not first at deploy time.
            BalancerSettings::Command(c) => {
                CommandBalancer::new(c).map_err(|e| balancer_error(e.to_string()))?;
            }
            BalancerSettings::Nginx(c) => {
                c.check().map_err(|e| balancer_error(e.to_string()))?;
                check_nginx_variable(name, svc, source)?;
            }
            // A jkstatus URL off loopback or without auth, a JkMountFile mode without probe_url.
            BalancerSettings::Modjk(c) => {
                ModjkBalancer::new(c).map_err(|e| balancer_error(e.to_string()))?;
            }
            _ => {}
        }
        let runtime_error = |e: String| {
            source.error_at(
                svc.runtime.table.span.clone(),
                format!("service `{name}`: {e}"),
                None,
            )
        };
        match runtime_settings(name, svc, source)? {
            RuntimeSettings::Command(c) => {
                CommandRuntime::new(c, Default::default()).map_err(runtime_error)?;
            }
            RuntimeSettings::Systemd(c) => {
                systemd_runtime(c, svc).map_err(runtime_error)?;
            }
            RuntimeSettings::Tomcat(c) => {
                c.manager_config()
                    .map_err(|e| runtime_error(e.to_string()))?;
            }
            RuntimeSettings::Process => {}
        }
    }
    Ok(())
}

/// The nginx `set $VAR` style points at one node: only blue-green has one active node at a time.
fn check_nginx_variable(
    name: &str,
    svc: &ServiceConfig,
    source: &Source,
) -> Result<(), ConfigError> {
    #[derive(serde::Deserialize)]
    struct Variable {
        variable: Option<toml::Spanned<String>>,
    }
    let path = ["services", name, "balancer"];
    let found: Variable = svc
        .balancer
        .table
        .settings(source, &path, |k| k == "variable")?;
    let (Some(variable), strategy) = (found.variable, *svc.strategy.get_ref()) else {
        return Ok(());
    };
    if strategy == nonstop_config::service::Strategy::BlueGreen {
        return Ok(());
    }
    let strategy_line = source.text[..svc.strategy.span().start]
        .lines()
        .count()
        .max(1);
    Err(source.error_at(
        variable.span(),
        format!(
            "service `{name}`: the nginx `set ${}` style sends all traffic to one node, but strategy = \"{strategy}\" (line {strategy_line}) needs several active at once",
            variable.get_ref()
        ),
        Some(format!(
            "use strategy = \"blue-green\", or replace `variable` with `upstream = \"{name}\"` (an upstream block, `proxy_pass http://{name};`) for {strategy}"
        )),
    ))
}

/// Where the drivers are built, relative to the service's `[hosts]`.
#[derive(Clone, Copy)]
pub enum Placement<'a> {
    /// The CLI or the console: nodes and a balancer on `[hosts]` are reached through their
    /// agents, with these credentials.
    Orchestrator(Option<&'a Fleet>),
    /// An agent: what it is asked to do runs on its own host.
    Agent,
}

/// Builds the balancer and runtime of service `name` for an orchestrator without fleet
/// credentials (a service on `[hosts]` is refused with what to do).
pub fn build(
    name: &str,
    svc: &ServiceConfig,
    config: &Config,
    source: &Source,
) -> Result<(AnyBalancer, AnyRuntime), String> {
    build_for(name, svc, config, source, Placement::Orchestrator(None))
}

fn fleet_for<'a>(name: &str, placement: Placement<'a>) -> Result<&'a Fleet, String> {
    match placement {
        Placement::Orchestrator(Some(fleet)) => Ok(fleet),
        _ => Err(format!(
            "service `{name}` runs on [hosts]: drive it through the console, or with the console's fleet credentials (`--fleet CONSOLE_STATE_DIR`)"
        )),
    }
}

pub fn build_for(
    name: &str,
    svc: &ServiceConfig,
    config: &Config,
    source: &Source,
    placement: Placement<'_>,
) -> Result<(AnyBalancer, AnyRuntime), String> {
    let remote = matches!(placement, Placement::Orchestrator(_));
    let balancer = match &svc.balancer.shared.host {
        Some(host) if remote => {
            let fleet = fleet_for(name, placement)?;
            let host_config = &config.hosts[host.get_ref()];
            AnyBalancer::Remote(RemoteBalancer::new(
                name,
                fleet.agent(host.get_ref(), host_config),
            ))
        }
        _ => local_balancer(name, svc, config, source)?,
    };
    let runtime = if remote && svc.on_hosts() {
        let fleet = fleet_for(name, placement)?;
        let agents = svc
            .nodes
            .iter()
            .map(|n| {
                let host = n.host().expect("all nodes have hosts");
                (
                    NodeName(n.name.get_ref().clone()),
                    fleet.agent(host, &config.hosts[host]),
                )
            })
            .collect();
        let (replacement, start_budget) = remote_replacement(name, svc, source)?;
        AnyRuntime::Remote(
            RemoteRuntime::new(name, agents, replacement).with_start_budget(start_budget),
        )
    } else {
        local_runtime(name, svc, source)?
    };
    Ok((balancer, runtime))
}

fn local_balancer(
    name: &str,
    svc: &ServiceConfig,
    config: &Config,
    source: &Source,
) -> Result<AnyBalancer, String> {
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
    Ok(balancer)
}

/// How the hosts' runtime replaces a release, as the engine here must sequence it: Tomcat
/// parallel deployment starts beside the old release; everything else stops it first (the
/// agent itself knows not to check the port of a server that keeps it). With it, how long the
/// runtime there may take to start one (Tomcat waits for its JVM and the deploy).
fn remote_replacement(
    name: &str,
    svc: &ServiceConfig,
    source: &Source,
) -> Result<(Replacement, Duration), String> {
    Ok(
        match runtime_settings(name, svc, source).map_err(|e| e.to_string())? {
            RuntimeSettings::Tomcat(c) => {
                let beside = c.deploy == nonstop_runtime_tomcat::DeployMode::Manager && c.parallel;
                let replacement = if beside {
                    Replacement::Beside
                } else {
                    Replacement::StopFirst
                };
                (replacement, c.start_budget().unwrap_or_default())
            }
            _ => (Replacement::StopFirst, Duration::ZERO),
        },
    )
}

fn local_runtime(name: &str, svc: &ServiceConfig, source: &Source) -> Result<AnyRuntime, String> {
    let runtime = match runtime_settings(name, svc, source).map_err(|e| e.to_string())? {
        RuntimeSettings::Process => {
            AnyRuntime::Process(ProcessRuntime::new(svc.runtime.argv(), service_env(svc)))
        }
        RuntimeSettings::Tomcat(c) => AnyRuntime::Tomcat(Box::new(
            TomcatRuntime::new(c)
                .map_err(|e| e.to_string())?
                .with_env(service_env(svc)),
        )),
        RuntimeSettings::Command(c) => {
            AnyRuntime::Command(CommandRuntime::new(c, service_env(svc))?)
        }
        RuntimeSettings::Systemd(c) => AnyRuntime::Systemd(systemd_runtime(c, svc)?),
    };
    Ok(runtime)
}

/// The service's part of every instance's environment (`env`, `inherit_env`).
pub fn service_env(svc: &ServiceConfig) -> nonstop_runtime_process::ServiceEnv {
    nonstop_runtime_process::ServiceEnv::new(
        svc.runtime.shared.env.clone(),
        svc.runtime.shared.inherit_env.clone(),
    )
}

/// The systemd runtime of `svc`: its unit template checked against the service's nodes.
fn systemd_runtime(config: SystemdConfig, svc: &ServiceConfig) -> Result<SystemdRuntime, String> {
    let nodes: Vec<&str> = svc
        .nodes
        .iter()
        .map(|n| n.name.get_ref().as_str())
        .collect();
    SystemdRuntime::new(
        config,
        &nodes,
        svc.runtime.shared.env.clone(),
        svc.runtime.shared.stop_grace.0,
    )
    .map_err(|e| e.to_string())
}

pub(crate) fn balancer_settings(
    name: &str,
    svc: &ServiceConfig,
    config: &Config,
    source: &Source,
) -> Result<BalancerSettings, ConfigError> {
    let table = &svc.balancer.table;
    let path = ["services", name, "balancer"];
    let not_shared = |k: &str| !BALANCER_SHARED_KEYS.contains(&k);
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
        BalancerKind::Nginx => BalancerSettings::Nginx(table.settings(source, &path, not_shared)?),
        BalancerKind::Haproxy => {
            BalancerSettings::Haproxy(table.settings(source, &path, not_shared)?)
        }
        BalancerKind::Modjk => BalancerSettings::Modjk(table.settings(source, &path, not_shared)?),
        BalancerKind::Command => {
            BalancerSettings::Command(table.settings(source, &path, not_shared)?)
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
        RuntimeKind::Systemd => {
            let path = ["services", name, "runtime"];
            Ok(RuntimeSettings::Systemd(table.settings(
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
            AnyBalancer::Remote($b) => $call,
        }
    };
}

macro_rules! each_runtime {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            AnyRuntime::Process($r) => $call,
            AnyRuntime::Tomcat($r) => $call,
            AnyRuntime::Command($r) => $call,
            AnyRuntime::Systemd($r) => $call,
            AnyRuntime::Remote($r) => $call,
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
    async fn mark_healthy(&self, node: &NodeName) -> PortResult<bool> {
        each_balancer!(self, b => b.mark_healthy(node).await)
    }
    fn knows_health_of_disabled(&self) -> bool {
        each_balancer!(self, b => b.knows_health_of_disabled())
    }
    fn plan_notes(&self, strategy: &str, nodes: usize) -> Vec<String> {
        each_balancer!(self, b => b.plan_notes(strategy, nodes))
    }
    fn reports_traffic(&self) -> bool {
        each_balancer!(self, b => b.reports_traffic())
    }
    async fn set_preview(&self, preview: Option<&Preview>) -> PortResult<()> {
        match self {
            AnyBalancer::Builtin(b) => b.set_preview(preview).await,
            AnyBalancer::Haproxy(b) => b.set_preview(preview).await,
            _ => Err(PortError::new(format!(
                "{}: no targeted preview here (docs/strategies/canary.md#targeted-preview)",
                self.kind_name()
            ))),
        }
    }
    async fn set_maintenance(&self, maintenance: Option<&Maintenance>) -> PortResult<()> {
        match self {
            AnyBalancer::Builtin(b) => b.set_maintenance(maintenance).await,
            AnyBalancer::Haproxy(b) => b.set_maintenance(maintenance).await,
            _ => Err(PortError::new(format!(
                "{}: nonstop cannot switch maintenance mode on this balancer; docs/lifecycle.md#maintenance-mode says what to do there",
                self.kind_name()
            ))),
        }
    }
    async fn maintenance(&self) -> PortResult<Option<Maintenance>> {
        match self {
            AnyBalancer::Builtin(b) => b.maintenance().await,
            AnyBalancer::Haproxy(b) => b.maintenance().await,
            _ => Ok(None),
        }
    }
}

impl AnyBalancer {
    /// The balancer kind, for messages about what it cannot do.
    fn kind_name(&self) -> &'static str {
        match self {
            AnyBalancer::Builtin(_) => "the builtin balancer",
            AnyBalancer::Nginx(_) => "the nginx balancer",
            AnyBalancer::Haproxy(_) => "the haproxy balancer",
            AnyBalancer::Modjk(_) => "the modjk balancer",
            AnyBalancer::Command(_) => "the command balancer",
            AnyBalancer::Remote(_) => "a balancer behind an agent",
        }
    }
}

impl Runtime for AnyRuntime {
    fn replacement(&self) -> Replacement {
        each_runtime!(self, r => r.replacement())
    }
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        each_runtime!(self, r => r.start(spec).await)
    }
    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        each_runtime!(self, r => r.stop(instance, grace).await)
    }
    async fn is_running(&self, instance: &Instance) -> bool {
        each_runtime!(self, r => r.is_running(instance).await)
    }
    async fn find(&self, spec: &InstanceSpec) -> Option<Instance> {
        each_runtime!(self, r => r.find(spec).await)
    }
    async fn port_free(&self, ip: &str, port: u16) -> bool {
        each_runtime!(self, r => r.port_free(ip, port).await)
    }
    fn foreign_holder(&self, node: &NodeName, port: u16) -> Option<nonstop_ports::ForeignHolder> {
        each_runtime!(self, r => r.foreign_holder(node, port))
    }
    async fn run_hook(&self, node: &NodeName, run: &HookRun) -> Option<PortResult<HookOutput>> {
        each_runtime!(self, r => r.run_hook(node, run).await)
    }
    async fn sessions(&self, node: &NodeName, port: u16) -> Option<Sessions> {
        each_runtime!(self, r => r.sessions(node, port).await)
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
    fn a_preview_on_a_balancer_that_cannot_route_it_is_refused_at_its_line() {
        let text = SERVICE.replace(
            "strategy = \"rolling\"",
            "strategy = \"blue-green\"\npreview = { header = \"X-Try\" }",
        ) + "\n[[services.shop.nodes]]\nname = \"b\"\nport = 8082\n";
        let err = check_text(&text).unwrap_err().to_string();
        assert!(err.contains("nonstop.toml:4"), "{err}");
        assert!(err.contains("cannot route a targeted preview"), "{err}");
        let rolling = SERVICE.replace("releases =", "preview = {}\nreleases =");
        let err = check_text(&rolling).unwrap_err().to_string();
        assert!(
            err.contains("strategy = \"rolling\" does not have"),
            "{err}"
        );
    }

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
        let manager = tomcat.replace("b = \"/srv/b\"", "a = \"/srv/a\"");
        let err = check_text(&manager.replace("context", "parallel = true, context")).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(
            err.message.contains("only used with deploy = \"manager\""),
            "{err}"
        );
        let err =
            check_text(&manager.replace("context", "deploy = \"manager\", context")).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("needs manager_user"), "{err}");
    }

    #[test]
    fn systemd_settings_are_checked_with_their_line() {
        let process = "runtime = { kind = \"process\", start = [\"app\", \"--port\", \"{port}\"] }";
        let systemd = |settings: &str| {
            SERVICE.replace(
                process,
                &format!("runtime = {{ kind = \"systemd\", {settings} }}"),
            ) + "\n[[services.shop.nodes]]\nname = \"b\"\nport = 8082\n"
        };
        check_text(&systemd("unit = \"shop@{node}.service\", scope = \"user\"")).unwrap();
        let err = check_text(&systemd(
            "unit = \"shop@{node}.service\", scope = \"session\"",
        ))
        .unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("session"), "{err}");
        let err = check_text(&systemd("unit = \"shop.service\"")).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(
            err.message.contains("2 nodes") && err.message.contains("{node}"),
            "{err}"
        );
        let err =
            check_text(&systemd("unit = \"shop@{node}.service\", timout = \"5s\"")).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("timout"), "{err}");
        let err = check_text(&systemd("unit = \"shop@{node}\"")).unwrap_err();
        assert!(err.message.contains(".service"), "{err}");
    }

    #[test]
    fn nginx_variable_style_is_refused_without_blue_green_with_its_line() {
        let command = SERVICE.lines().nth(3).unwrap();
        let nginx = |settings: &str| {
            SERVICE.replace(
                command,
                &format!(
                    "balancer = {{ kind = \"nginx\", include = \"/etc/nginx/conf.d/service-url.inc\", nginx = [\"nginx\"], {settings} }}"
                ),
            ) + "\n[[services.shop.nodes]]\nname = \"b\"\nport = 8082\n"
        };
        let variable = nginx("variable = \"service_url\"");
        let err = check_text(&variable).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("set $service_url"), "{err}");
        assert!(
            err.message.contains("strategy = \"rolling\" (line 3)"),
            "{err}"
        );
        assert!(
            err.to_string().contains("use strategy = \"blue-green\""),
            "{err}"
        );
        check_text(&variable.replace("\"rolling\"", "\"blue-green\"")).unwrap();
        let canary = nginx("upstream = \"shop\"").replace("\"rolling\"", "\"canary\"");
        let err = check_text(&canary).unwrap_err();
        assert_eq!(err.line, 3, "points at the strategy: {err}");
        assert!(err.message.contains("no per-node traffic"), "{err}");
        assert!(err.to_string().contains("log_format nonstop"), "{err}");
        // With the access log nginx counts per member: the canary is allowed.
        let logged = nginx("upstream = \"shop\", access_log = \"/var/log/nginx/shop-nonstop.log\"")
            .replace("\"rolling\"", "\"canary\"");
        check_text(&logged).unwrap();
        let err = check_text(&logged.replace("\"/var/log/nginx/", "\"")).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("relative"), "{err}");
        check_text(&nginx("upstream = \"shop\"")).unwrap();
        let err = check_text(
            &nginx("variable = \"$service_url\"").replace("\"rolling\"", "\"blue-green\""),
        )
        .unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("letters, digits and `_`"), "{err}");
        let err = check_text(&nginx("sticky = false")).unwrap_err();
        assert!(err.message.contains("give `upstream = \"NAME\"`"), "{err}");
    }
}
