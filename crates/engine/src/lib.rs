//! nonstop's deploy engine: a strategy turns "deploy shop v42" into a `Plan` of typed steps,
//! and one journaled executor runs it against the `Balancer`, `Runtime` and `Probe` ports.
//!
//! Map: `plan` (the steps), `strategies/` (blue-green, canary, rolling → plans), `executor`
//! (reconcile, invariants, journal, act), `instances`, `gate`, `drain` (what steps do),
//! `reconcile` (the balancer's view), `deploy` (deploy / rollback), `recovery` (undo a
//! deploy another process left unfinished), `spec` (the engine's own view of the config).

mod canary_view;
pub mod deploy;
mod drain;
mod edge;
pub mod error;
pub mod events;
mod executor;
mod gate;
mod hooks;
mod instances;
mod migrate;
mod operate;
mod pause;
pub mod plan;
pub mod reconcile;
mod recovery;
mod resume;
pub mod spec;
pub mod status;
pub mod strategies;

use std::path::{Path, PathBuf};

use nonstop_config::service::ServiceConfig;
use nonstop_ports::{Analysis, Balancer, NodeName, Probe, Runtime};
use nonstop_store::{Holder, Store};

pub use canary_view::{CanaryStepView, CanaryView, Numbers};
pub use deploy::{DeployReport, DeployRequest, NodeSnapshot, Snapshot};
pub use error::{DeployError, StepError};
pub use events::{Event, EventKind};
pub use executor::JournalData;
pub use nonstop_releases::{self as releases, Release, store_path};
pub use nonstop_store::Decision;
pub use pause::{Decided, Paused};
pub use plan::{Change, PauseWhy, Plan, SetPurpose, Step};
pub use spec::{HookPoint, ServiceSpec};
pub use status::{NodeStatus, ServiceStatus};
pub use strategies::{Observed, canary_weights, judge};

pub struct Engine<B, R, P> {
    pub service: String,
    /// The service's config as read (for callers that show it); the engine itself uses `spec`.
    pub config: ServiceConfig,
    pub spec: ServiceSpec,
    /// `releases.dir`, resolved against the config file's directory.
    pub base: PathBuf,
    pub balancer: B,
    pub runtime: R,
    pub probe: P,
    pub store: Store,
    /// Judges of canary windows beside the balancer's own counters (e.g. Prometheus queries).
    pub analyses: Vec<Box<dyn Analysis>>,
    holder: Holder,
    emit: Box<dyn Fn(&Event)>,
    deploy: std::cell::Cell<Option<i64>>,
    /// Test hook: the deploy behaves as if killed right after journaling this step.
    #[doc(hidden)]
    pub crash_at: Option<usize>,
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: &str,
        config: ServiceConfig,
        base: PathBuf,
        balancer: B,
        runtime: R,
        probe: P,
        emit: Box<dyn Fn(&Event)>,
    ) -> Result<Self, DeployError> {
        let store = Store::open(&store_path(&base), service)?;
        Ok(Engine {
            service: service.to_string(),
            spec: ServiceSpec::from_config(service, &config),
            config,
            base,
            balancer,
            runtime,
            probe,
            store,
            analyses: Vec::new(),
            holder: Holder::current(),
            emit,
            deploy: std::cell::Cell::new(None),
            crash_at: None,
        })
    }

    /// Names who this engine deploys for (history, lock messages), e.g. a console's user,
    /// instead of this process's `user@host`.
    pub fn act_for(&mut self, who: &str) {
        self.holder.name = who.to_string();
    }

    /// Test hook: the pid the deploy lock records (a dead one makes a "killed" deploy).
    #[doc(hidden)]
    pub fn holder_pid(&mut self, pid: i32) {
        self.holder.pid = pid;
    }

    pub(crate) fn event(
        &self,
        kind: EventKind,
        node: Option<&NodeName>,
        message: impl Into<String>,
    ) {
        (self.emit)(&Event {
            at_ms: nonstop_store::now_ms(),
            deploy: self.deploy.get(),
            kind,
            node: node.map(|n| n.to_string()),
            message: message.into(),
        });
    }
}

/// `releases.dir` made absolute against the directory of the config file.
pub fn service_base(config: &ServiceConfig, config_file: &Path) -> PathBuf {
    let dir = config.releases.dir.get_ref();
    if dir.is_absolute() {
        dir.clone()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(dir)
    }
}
