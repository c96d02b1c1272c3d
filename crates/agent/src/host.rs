//! What this host serves: for each configured service, the local runtime of its nodes placed
//! here and the balancer if it lives here, with the agent's own store of what it started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nonstop_config::{Config, ServiceConfig, Source};
use nonstop_drivers::{AnyBalancer, AnyRuntime, Placement};
use nonstop_ports::NodeName;
use nonstop_store::Store;
use tokio::sync::Mutex;

/// One service as far as this host is concerned.
pub struct LocalService {
    pub name: String,
    pub config: ServiceConfig,
    /// `<state>/services/<name>`: releases, logs and the store of this host's instances.
    pub base: PathBuf,
    /// Set when some node of the service is placed on this host.
    pub runtime: Option<AnyRuntime>,
    /// Set when the service's balancer lives on this host.
    pub balancer: Option<AnyBalancer>,
    pub store: Mutex<Store>,
}

impl LocalService {
    /// The node, if it is this service's and placed on this host.
    pub fn node_here(
        &self,
        host: &str,
        node: &str,
    ) -> Option<&nonstop_config::service::NodeConfig> {
        self.config
            .nodes
            .iter()
            .find(|n| n.name.get_ref() == node && n.host() == Some(host))
    }

    pub fn node_name(node: &str) -> NodeName {
        NodeName(node.to_string())
    }
}

/// Every service with something on this host, by name.
pub struct Host {
    pub name: String,
    pub services: BTreeMap<String, LocalService>,
}

impl Host {
    pub fn load(
        name: &str,
        config: &Config,
        source: &Source,
        state: &Path,
    ) -> Result<Host, String> {
        if !config.hosts.contains_key(name) {
            return Err(format!(
                "{}: this agent is `{name}` but the file has no [hosts.{name}]",
                source.path.display()
            ));
        }
        nonstop_drivers::check(config, source).map_err(|e| e.to_string())?;
        let mut services = BTreeMap::new();
        for (service, svc) in &config.services {
            let runs_here = svc.nodes.iter().any(|n| n.host() == Some(name));
            let balances_here = svc
                .balancer
                .shared
                .host
                .as_ref()
                .is_some_and(|h| h.get_ref() == name);
            if !runs_here && !balances_here {
                continue;
            }
            let (balancer, runtime) =
                nonstop_drivers::build_for(service, svc, config, source, Placement::Agent)?;
            let base = state.join("services").join(service);
            std::fs::create_dir_all(&base)
                .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
            let store = Store::open(&nonstop_releases::store_path(&base), service)
                .map_err(|e| e.to_string())?;
            services.insert(
                service.clone(),
                LocalService {
                    name: service.clone(),
                    config: svc.clone(),
                    base,
                    runtime: runs_here.then_some(runtime),
                    balancer: balances_here.then_some(balancer),
                    store: Mutex::new(store),
                },
            );
        }
        Ok(Host {
            name: name.to_string(),
            services,
        })
    }
}
