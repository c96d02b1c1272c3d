//! The `builtin` balancer driver: the service's nodes are backends of one pool of `nonstop proxy`,
//! changed through its admin API (docs/admin-api.md). The blue-green switch is one `PUT` of the set.

use nonstop_admin_client::{AdminClient, BackendChange, BackendSpec, BackendState, Pool};
use nonstop_ports::{
    Balancer, LbState, Maintenance, Member, NodeName, PortError, PortResult, Preview, Traffic,
};

#[derive(Debug, Clone)]
pub struct BuiltinBalancer {
    client: AdminClient,
    pool: String,
}

impl BuiltinBalancer {
    pub fn new(client: AdminClient, pool: impl Into<String>) -> Self {
        BuiltinBalancer {
            client,
            pool: pool.into(),
        }
    }

    async fn pool(&self) -> PortResult<Pool> {
        self.client.pool(&self.pool).await.map_err(err)
    }
}

fn err(e: nonstop_admin_client::AdminError) -> PortError {
    PortError::new(e.to_string())
}

fn to_lb(state: BackendState) -> LbState {
    match state {
        BackendState::Active => LbState::Active,
        BackendState::Draining => LbState::Draining,
        BackendState::Disabled => LbState::Disabled,
    }
}

fn from_lb(state: LbState) -> BackendState {
    match state {
        LbState::Active => BackendState::Active,
        LbState::Draining => BackendState::Draining,
        LbState::Disabled => BackendState::Disabled,
    }
}

impl Balancer for BuiltinBalancer {
    async fn members(&self) -> PortResult<Vec<Member>> {
        let pool = self.pool().await?;
        Ok(pool
            .backends
            .into_iter()
            .map(|b| Member {
                node: NodeName(b.name),
                addr: b.addr,
                state: to_lb(b.state),
                weight: b.weight,
                in_flight: b.in_flight,
                healthy: b.health != "down" && !b.ejected,
                traffic: Traffic {
                    requests: b.requests,
                    errors: b.responses.get("5xx").copied().unwrap_or(0) + b.failures,
                    latency_ms_sum: b.latency_ms_sum,
                },
            })
            .collect())
    }

    async fn register(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        let pool = self.pool().await?;
        match pool.backend(node.as_str()) {
            Some(b) if b.addr == addr => Ok(()),
            Some(_) => {
                // Same name, other address: replace it in one step, keeping every other backend.
                let specs: Vec<BackendSpec> = pool
                    .backends
                    .iter()
                    .map(|b| {
                        let mut spec = spec_of(b);
                        if b.name == node.as_str() {
                            spec.addr = addr.to_string();
                            spec.state = Some(BackendState::Disabled);
                        }
                        spec
                    })
                    .collect();
                self.client
                    .replace(&self.pool, &specs)
                    .await
                    .map(drop)
                    .map_err(err)
            }
            None => {
                let spec = BackendSpec {
                    name: node.to_string(),
                    addr: addr.to_string(),
                    weight: None,
                    route: None,
                    state: Some(BackendState::Disabled),
                };
                self.client
                    .add(&self.pool, &spec)
                    .await
                    .map(drop)
                    .map_err(err)
            }
        }
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        self.client
            .set_state(&self.pool, node.as_str(), from_lb(state))
            .await
            .map(drop)
            .map_err(err)
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        self.client
            .set_weight(&self.pool, node.as_str(), weight)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        let named: Vec<BackendChange> = changes
            .iter()
            .map(|(node, state, weight)| BackendChange {
                name: node.to_string(),
                state: Some(from_lb(*state)),
                weight: *weight,
            })
            .collect();
        match self.client.set_backends(&self.pool, &named).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_supported() => {}
            Err(e) => return Err(err(e)),
        }
        // A proxy from before `PATCH …/backends`: read the pool, write it back changed.
        let pool = self.pool().await?;
        for (node, _, _) in changes {
            if pool.backend(node.as_str()).is_none() {
                return Err(PortError::new(format!(
                    "pool `{}` has no backend `{node}` to switch",
                    self.pool
                )));
            }
        }
        let specs: Vec<BackendSpec> = pool
            .backends
            .iter()
            .map(|b| {
                let mut spec = spec_of(b);
                if let Some((_, state, weight)) = changes.iter().find(|(n, _, _)| n.0 == b.name) {
                    spec.state = Some(from_lb(*state));
                    if weight.is_some() {
                        spec.weight = *weight;
                    }
                }
                spec
            })
            .collect();
        self.client
            .replace(&self.pool, &specs)
            .await
            .map(drop)
            .map_err(err)
    }

    /// Marks `node` up in the proxy's own health view once the engine's gate passed, so a
    /// freshly started node is eligible at once even when the pool's active checks would need
    /// `rise` passes first.
    async fn mark_healthy(&self, node: &NodeName) -> PortResult<bool> {
        self.client
            .mark_up(&self.pool, node.as_str())
            .await
            .map(|backend| backend.health == "up")
            .map_err(err)
    }

    async fn set_preview(&self, preview: Option<&Preview>) -> PortResult<()> {
        self.client
            .set_preview(&self.pool, preview)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn set_maintenance(&self, maintenance: Option<&Maintenance>) -> PortResult<()> {
        self.client
            .set_maintenance(&self.pool, maintenance)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn maintenance(&self) -> PortResult<Option<Maintenance>> {
        Ok(self.pool().await?.maintenance)
    }

    /// The proxy's checker probes every backend, disabled ones too: its view is the real one.
    fn knows_health_of_disabled(&self) -> bool {
        true
    }
}

fn spec_of(b: &nonstop_admin_client::Backend) -> BackendSpec {
    BackendSpec {
        name: b.name.clone(),
        addr: b.addr.clone(),
        weight: Some(b.weight),
        route: Some(b.route.clone()),
        state: Some(b.state),
    }
}
