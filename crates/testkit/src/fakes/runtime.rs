//! `FakeRuntime` and `FakeProbe`: instances as entries of the shared `World` (start, stop,
//! crash, slow start, a stranger on a port) and a health check that reads it.

use std::time::Duration;

use nonstop_ports::{
    Instance, InstanceSpec, NodeName, PortError, PortResult, Probe, Runtime, Sessions,
};

use super::{FakeInstance, World};

#[derive(Clone)]
pub struct FakeRuntime(pub World);

impl Runtime for FakeRuntime {
    async fn start(&self, spec: &InstanceSpec) -> PortResult<Instance> {
        let (instance, hang) = {
            let mut w = self.0.lock();
            if w.instance_on(spec.port).is_some() || w.strangers.contains(&spec.port) {
                return Err(PortError::new(format!("port {} is taken", spec.port)));
            }
            w.next_pid += 1;
            let pid = w.next_pid;
            w.instances.push(FakeInstance {
                pid,
                node: spec.node.clone(),
                version: spec.version.clone(),
                port: spec.port,
                release_dir: spec.release_dir.clone(),
                started_at: tokio::time::Instant::now(),
                alive: true,
            });
            (
                Instance {
                    node: spec.node.clone(),
                    version: spec.version.clone(),
                    port: spec.port,
                    pid,
                    start_ticks: pid as u64,
                    log: spec.log.clone(),
                },
                std::mem::take(&mut w.hang_after_spawn),
            )
        };
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(instance)
    }

    async fn stop(&self, instance: &Instance, _grace: Duration) -> PortResult<()> {
        let mut w = self.0.lock();
        for i in w.instances.iter_mut() {
            if i.pid == instance.pid && i.version == instance.version {
                i.alive = false;
            }
        }
        Ok(())
    }

    async fn is_running(&self, instance: &Instance) -> bool {
        self.0
            .lock()
            .instances
            .iter()
            .any(|i| i.alive && i.pid == instance.pid && i.version == instance.version)
    }

    async fn find(&self, spec: &InstanceSpec) -> Option<Instance> {
        let w = self.0.lock();
        w.instances
            .iter()
            .find(|i| i.alive && i.node == spec.node && i.release_dir == spec.release_dir)
            .map(|i| Instance {
                node: i.node.clone(),
                version: i.version.clone(),
                port: i.port,
                pid: i.pid,
                start_ticks: i.pid as u64,
                log: spec.log.clone(),
            })
    }

    async fn sessions(&self, _node: &NodeName, port: u16) -> Option<Sessions> {
        let w = self.0.lock();
        let until = w.sessions.as_ref()?.get(&port);
        let open = until.is_some_and(|t| *t > tokio::time::Instant::now());
        Some(Sessions {
            open: open.into(),
            source: "fake runtime".into(),
        })
    }

    async fn port_free(&self, _ip: &str, port: u16) -> bool {
        let w = self.0.lock();
        w.instance_on(port).is_none() && !w.strangers.contains(&port)
    }
}

#[derive(Clone)]
pub struct FakeProbe(pub World);

impl Probe for FakeProbe {
    async fn check(&self, _host: &str, port: u16) -> Result<(), String> {
        let w = self.0.lock();
        if w.health_ok(port) && w.instance_on(port).is_some() {
            Ok(())
        } else {
            Err(format!("port {port}: no healthy answer"))
        }
    }
}
