//! The one place where the console turns a service name into its engine or its drivers; with
//! fleet credentials, services on `[hosts]` are driven through their agents.

use std::path::{Path, PathBuf};

use nonstop_config::{Config, ServiceConfig};
use nonstop_drivers::{AnyBalancer, AnyRuntime, Fleet, Placement, ServiceEngine};
use nonstop_engine::{DeployError, Event};
use nonstop_probe_http::HttpProbe;

use crate::error::{ApiError, ApiResult};

/// Opens engines and drivers for the services of one config file.
pub struct Drivers {
    config: PathBuf,
    fleet: Option<Fleet>,
}

/// What the console reads and drives of one service without running a deploy.
pub struct ServiceParts {
    pub name: String,
    pub config: ServiceConfig,
    /// `releases.dir` resolved: where the service's store lives.
    pub base: PathBuf,
    pub balancer: AnyBalancer,
    pub runtime: AnyRuntime,
    pub probe: HttpProbe,
}

impl Drivers {
    pub fn new(config: PathBuf, fleet: Option<Fleet>) -> Drivers {
        Drivers { config, fleet }
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The config as it is on disk now (edits apply without a restart).
    pub fn load(&self) -> ApiResult<Config> {
        Config::load(&self.config)
            .map(|(config, _)| config)
            .map_err(|e| ApiError::internal(format!("config: {e}")))
    }

    /// The agent of `[hosts.NAME]`, through the console's fleet credentials.
    pub fn agent(&self, host: &str) -> ApiResult<nonstop_agent_client::AgentClient> {
        let config = self.load()?;
        let (Some(fleet), Some(host_config)) = (&self.fleet, config.hosts.get(host)) else {
            return Err(ApiError::internal(format!(
                "host `{host}` is not reachable from this console"
            )));
        };
        Ok(fleet.agent(host, host_config))
    }

    /// The service's deploy engine (not `Send`: use it on the thread that opened it).
    pub fn engine(
        &self,
        service: &str,
        emit: Box<dyn Fn(&Event)>,
    ) -> Result<ServiceEngine, DeployError> {
        nonstop_drivers::open_fleet_engine(&self.config, service, emit, self.fleet.as_ref())
    }

    /// The service's balancer, runtime and probe.
    pub fn parts(&self, service: &str) -> ApiResult<ServiceParts> {
        let (config, source) =
            Config::load(&self.config).map_err(|e| ApiError::internal(format!("config: {e}")))?;
        let svc = config
            .services
            .get(service)
            .ok_or_else(|| ApiError::not_found(format!("there is no service `{service}`")))?;
        let (balancer, runtime) = nonstop_drivers::build_for(
            service,
            svc,
            &config,
            &source,
            Placement::Orchestrator(self.fleet.as_ref()),
        )
        .map_err(|e| ApiError::internal(format!("service `{service}`: {e}")))?;
        let probe = HttpProbe {
            path: svc.health.path.get_ref().clone(),
            expect_status: svc.health.expect_status,
            expect_body: svc.health.expect_body.clone(),
            timeout: svc.health.timeout.0,
        };
        Ok(ServiceParts {
            name: service.to_string(),
            base: nonstop_engine::service_base(svc, &self.config),
            config: svc.clone(),
            balancer,
            runtime,
            probe,
        })
    }
}
