//! `FakeBalancer`: the built-in proxy's behaviour (health view of disabled members, marking up,
//! atomic switches) over the shared `World`, recording every state it passes through.

use nonstop_ports::{Balancer, LbState, Member, NodeName, PortError, PortResult, Traffic};

use super::{FakeMember, World, WorldState};

#[derive(Clone)]
pub struct FakeBalancer(pub World);

impl FakeBalancer {
    fn mutate(
        &self,
        call: String,
        f: impl FnOnce(&mut WorldState) -> PortResult<()>,
    ) -> PortResult<()> {
        let mut w = self.0.lock();
        if std::mem::take(&mut w.fail_next_mutation) {
            return Err(PortError::new(format!("{call}: injected balancer failure")));
        }
        let before_eligible = w.eligible().len();
        let before_out = w.out().len();
        f(&mut w)?;
        w.reloads += 1;
        w.record(call, before_eligible, before_out);
        Ok(())
    }
}

impl Balancer for FakeBalancer {
    async fn members(&self) -> PortResult<Vec<Member>> {
        let mut w = self.0.lock();
        // Traffic: each look at the balancer, every eligible member served `weight` requests.
        for node in w.eligible() {
            let m = w.members.get_mut(&node).expect("eligible member");
            m.requests += u64::from(m.weight);
        }
        Ok(w.members
            .iter()
            .map(|(node, m)| Member {
                node: node.clone(),
                addr: m.addr.clone(),
                state: m.state,
                weight: m.weight,
                in_flight: 0,
                healthy: w.healthy(node),
                traffic: Traffic {
                    requests: m.requests,
                    errors: 0,
                    latency_ms_sum: m.requests as f64,
                },
            })
            .collect())
    }

    async fn register(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| PortError::new(format!("bad addr {addr}")))?;
        if self.0.lock().members.contains_key(node) {
            return Ok(());
        }
        self.mutate(format!("register {node}"), |w| {
            w.members.insert(
                node.clone(),
                FakeMember {
                    addr: addr.to_string(),
                    port,
                    state: LbState::Disabled,
                    weight: 1,
                    marked_at: None,
                    requests: 0,
                },
            );
            Ok(())
        })
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        self.switch(&[(node.clone(), state, None)]).await
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        let state = self.0.lock().members.get(node).map(|m| m.state);
        match state {
            Some(state) => self.switch(&[(node.clone(), state, Some(weight))]).await,
            None => Err(PortError::new(format!("no member {node}"))),
        }
    }

    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        let call = format!(
            "switch {}",
            changes
                .iter()
                .map(|(n, s, _)| format!("{n}={s}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        self.mutate(call, |w| {
            for (node, _, _) in changes {
                if !w.members.contains_key(node) {
                    return Err(PortError::new(format!("no member {node}")));
                }
            }
            let resets = w.resets_counts_on_switch;
            for (node, state, weight) in changes {
                let m = w.members.get_mut(node).expect("checked");
                if resets && *state == LbState::Active {
                    m.requests = 0;
                }
                m.state = *state;
                if let Some(weight) = weight {
                    m.weight = *weight;
                }
            }
            Ok(())
        })
    }

    async fn mark_healthy(&self, node: &NodeName) -> PortResult<bool> {
        let mut w = self.0.lock();
        let port = w.members.get(node).map(|m| m.port);
        // Like the proxy: only an instance that answers is marked up.
        if let Some(port) = port
            && w.health_ok(port)
        {
            w.members.get_mut(node).expect("member").marked_at = Some(tokio::time::Instant::now());
        }
        // Its view can still say otherwise (a flap): the engine reads it.
        Ok(false)
    }

    fn knows_health_of_disabled(&self) -> bool {
        true
    }

    async fn set_preview(&self, preview: Option<&nonstop_ports::Preview>) -> PortResult<()> {
        let mut w = self.0.lock();
        w.preview = preview.cloned();
        w.previews.push(preview.map(|p| p.nodes.clone()));
        Ok(())
    }
}
