//! The `Runtime` and `Balancer` ports of remote hosts: each call becomes a typed request to the
//! agent of the node's (or the balancer's) host; a lost agent is a failed step, which rolls back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nonstop_ports::{
    Balancer, HookOutput, HookRun, Instance, InstanceSpec, LbState, Member, NodeName, PortError,
    PortResult, Replacement, Runtime, Version,
};

use crate::protocol::{self, routes};
use crate::{AgentClient, CALL_TIMEOUT, path};

/// Runs a service's nodes on their hosts' agents.
pub struct RemoteRuntime {
    service: String,
    agents: BTreeMap<NodeName, AgentClient>,
    replacement: Replacement,
    /// How long a start may take on the host (the runtime's own bound), beyond a call's timeout.
    start_budget: Duration,
    /// (agent, version) pairs already uploaded by this process.
    uploaded: Mutex<BTreeSet<(String, String)>>,
}

impl RemoteRuntime {
    /// `replacement` is the hosts' runtime's, read from the same config (`Beside` for Tomcat
    /// parallel deployment, else `StopFirst`).
    pub fn new(
        service: &str,
        agents: BTreeMap<NodeName, AgentClient>,
        replacement: Replacement,
    ) -> RemoteRuntime {
        RemoteRuntime {
            service: service.to_string(),
            agents,
            replacement,
            start_budget: Duration::ZERO,
            uploaded: Mutex::new(BTreeSet::new()),
        }
    }

    /// A start may take `budget` on the host (Tomcat waits for its JVM, the deploy, the
    /// context), so its call waits that long plus a call's own timeout.
    pub fn with_start_budget(mut self, budget: Duration) -> RemoteRuntime {
        self.start_budget = budget;
        self
    }

    fn agent(&self, node: &NodeName) -> PortResult<&AgentClient> {
        self.agents
            .get(node)
            .ok_or_else(|| PortError::new(format!("node {node} has no host in the config")))
    }

    fn node_path(&self, route: &str, node: &NodeName) -> String {
        path(
            route,
            &[("service", &self.service), ("node", node.as_str())],
        )
    }

    async fn remote_hook(&self, node: &NodeName, run: &HookRun) -> PortResult<HookOutput> {
        let agent = self.agent(node)?;
        let value = |name: &str| run.values.get(name).cloned().unwrap_or_default();
        // `after_install` means installed on the node's host: ship the release there first.
        let artifact = value("artifact");
        if !artifact.is_empty() {
            self.ensure_uploaded(agent, &value("version"), Path::new(&artifact))
                .await?;
        }
        let old_version = value("old_version");
        let request = protocol::HookRequest {
            version: Version(value("version")),
            old_version: (!old_version.is_empty()).then_some(Version(old_version)),
            deploy: value("deploy").parse().unwrap_or_default(),
            strategy: value("strategy"),
        };
        let route = path(
            routes::HOOK,
            &[
                ("service", &self.service),
                ("node", node.as_str()),
                ("hook", &run.point),
            ],
        );
        // The agent stops the hook at its own timeout; the margin covers the round trip.
        let timeout = run.timeout + Duration::from_secs(15);
        Ok(agent.post_within(&route, &request, timeout).await?)
    }

    /// Uploads release `version` to `agent`'s host unless this deploy did already.
    async fn ensure_uploaded(
        &self,
        agent: &AgentClient,
        version: &str,
        artifact: &Path,
    ) -> PortResult<()> {
        let key = (agent.name().to_string(), version.to_string());
        if self.uploaded.lock().expect("not poisoned").contains(&key) {
            return Ok(());
        }
        agent.upload(&self.service, version, artifact).await?;
        self.uploaded.lock().expect("not poisoned").insert(key);
        Ok(())
    }

    fn reference(instance: &Instance) -> protocol::InstanceRef {
        protocol::InstanceRef {
            version: instance.version.clone(),
            pid: instance.pid,
            start_ticks: instance.start_ticks,
        }
    }
}

impl Runtime for RemoteRuntime {
    /// `Beside` for Tomcat parallel deployment (the agent then starts the new release next to
    /// the old one in the same server and answers for either version of that server's record);
    /// otherwise `StopFirst`: the agent's start refuses a node that still runs an instance, and
    /// it skips its port check itself for a server that keeps its port (in-place manager).
    fn replacement(&self) -> Replacement {
        self.replacement
    }

    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        let agent = self.agent(&spec.node)?;
        self.ensure_uploaded(agent, spec.version.as_str(), &spec.artifact)
            .await?;
        let request = protocol::StartRequest {
            version: spec.version.clone(),
            env: spec.env.clone(),
        };
        Ok(agent
            .post_within(
                &self.node_path(routes::START, &spec.node),
                &request,
                self.start_budget + CALL_TIMEOUT,
            )
            .await?)
    }

    /// The agent may take the whole grace (Tomcat retires a parallel version once its sessions
    /// end or at the grace), so the call waits for that plus a call's own timeout.
    async fn stop(&self, instance: &Instance, grace: Duration) -> PortResult<()> {
        let agent = self.agent(&instance.node)?;
        let grace = grace.min(protocol::MAX_STOP_GRACE);
        let request = protocol::StopRequest {
            instance: Self::reference(instance),
            grace_ms: grace.as_millis() as u64,
        };
        let _: serde_json::Value = agent
            .post_within(
                &self.node_path(routes::STOP, &instance.node),
                &request,
                grace + CALL_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Every per-node hook runs on the node's host, through its agent (never here).
    async fn run_hook(&self, node: &NodeName, run: &HookRun) -> Option<PortResult<HookOutput>> {
        Some(self.remote_hook(node, run).await)
    }

    /// An agent that cannot be asked counts as "not running": the engine then rolls back
    /// rather than trusting an instance it cannot see.
    async fn is_running(&self, instance: &Instance) -> bool {
        let Ok(agent) = self.agent(&instance.node) else {
            return false;
        };
        agent
            .post::<_, protocol::Status>(
                &self.node_path(routes::STATUS, &instance.node),
                &Self::reference(instance),
            )
            .await
            .is_ok_and(|s| s.running)
    }
}

/// A balancer on another host (nginx, HAProxy, Apache, a built-in proxy), driven by its agent.
pub struct RemoteBalancer {
    service: String,
    agent: AgentClient,
}

impl RemoteBalancer {
    pub fn new(service: &str, agent: AgentClient) -> RemoteBalancer {
        RemoteBalancer {
            service: service.to_string(),
            agent,
        }
    }

    fn route(&self, route: &str) -> String {
        path(route, &[("service", &self.service)])
    }
}

impl Balancer for RemoteBalancer {
    async fn members(&self) -> PortResult<Vec<Member>> {
        Ok(self.agent.get(&self.route(routes::MEMBERS)).await?)
    }

    /// The agent computes the node's address from its own config; `_addr` is not sent.
    async fn register(&self, node: &NodeName, _addr: &str) -> PortResult<()> {
        let request = protocol::RegisterRequest { node: node.clone() };
        let _: serde_json::Value = self
            .agent
            .post(&self.route(routes::REGISTER), &request)
            .await?;
        Ok(())
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        let request = protocol::StateRequest {
            node: node.clone(),
            state,
        };
        let _: serde_json::Value = self
            .agent
            .post(&self.route(routes::STATE), &request)
            .await?;
        Ok(())
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        let request = protocol::WeightRequest {
            node: node.clone(),
            weight,
        };
        let _: serde_json::Value = self
            .agent
            .post(&self.route(routes::WEIGHT), &request)
            .await?;
        Ok(())
    }

    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        let request = protocol::SwitchRequest {
            changes: changes
                .iter()
                .map(|(node, state, weight)| protocol::SwitchChange {
                    node: node.clone(),
                    state: *state,
                    weight: *weight,
                })
                .collect(),
        };
        let _: serde_json::Value = self
            .agent
            .post(&self.route(routes::SWITCH), &request)
            .await?;
        Ok(())
    }
}
