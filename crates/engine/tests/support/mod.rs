//! The engine over testkit's fakes: a service of 2 (blue-green, canary) or 3 (rolling) nodes,
//! its store and releases on tmpfs, and a fault injected when the k-th plan step begins.

#![allow(dead_code)]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use nonstop_config::{Config, Source};
use nonstop_engine::{DeployError, DeployRequest, Engine, Event, EventKind};
use nonstop_ports::{LbState, Version};
use nonstop_testkit::fakes::{FakeBalancer, FakeProbe, FakeRuntime, World};
use tokio::time::Duration;

pub type FakeEngine = Engine<FakeBalancer, FakeRuntime, FakeProbe>;

/// A pid beyond pid_max: the lock of a "killed" deploy names a process that cannot be alive.
pub const DEAD_PID: i32 = i32::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The deploy process is killed right after journaling the step; the next command recovers.
    Crash,
    /// The journal cannot be written from this step on (full disk).
    Journal,
    /// The balancer's next change fails.
    Balancer,
    /// An operator disables a node that runs (or will run) the new release.
    OperatorDisablesNew,
    /// An operator drains a node that runs the old release.
    OperatorDrainsOld,
    /// The new instances' health endpoint fails for 3 s.
    FlapNew,
    /// An old instance's health endpoint fails for 3 s.
    FlapOld,
    /// The new instances crash.
    CrashNew,
    /// The deploy is killed between spawning an instance and recording it.
    KilledAfterSpawn,
}

pub const FAULTS: [Fault; 9] = [
    Fault::Crash,
    Fault::Journal,
    Fault::Balancer,
    Fault::OperatorDisablesNew,
    Fault::OperatorDrainsOld,
    Fault::FlapNew,
    Fault::FlapOld,
    Fault::CrashNew,
    Fault::KilledAfterSpawn,
];

pub struct Service {
    pub world: World,
    pub dir: tempfile::TempDir,
    pub strategy: &'static str,
    pub nodes: Vec<String>,
    pub config: nonstop_config::ServiceConfig,
}

fn scratch() -> tempfile::TempDir {
    // tmpfs where there is one: the journal fsyncs every entry, and the matrix runs hundreds.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

impl Service {
    pub fn new(strategy: &'static str, pool_health: bool) -> Service {
        Service::build(strategy, pool_health, "", |text| text)
    }

    /// [`Service::new`] with `extra` lines in `[services.shop]`.
    pub fn with(strategy: &'static str, pool_health: bool, extra: &str) -> Service {
        Service::build(strategy, pool_health, extra, |text| text)
    }

    /// A service whose config text `edit` changes first.
    pub fn edited(
        strategy: &'static str,
        pool_health: bool,
        edit: impl FnOnce(String) -> String,
    ) -> Service {
        Service::build(strategy, pool_health, "", edit)
    }

    fn build(
        strategy: &'static str,
        pool_health: bool,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Service {
        let count = if strategy == "rolling" { 3 } else { 2 };
        let nodes: Vec<String> = (1..=count).map(|i| format!("n{i}")).collect();
        let world = World::new(&nodes.iter().map(String::as_str).collect::<Vec<_>>(), 1);
        if strategy != "rolling" {
            world.lock().max_unavailable = usize::MAX;
        }
        if pool_health {
            world.lock().pool_rise = Some(Duration::from_secs(4));
        }
        let dir = scratch();
        let mut text = format!(
            r#"
[proxy]
listen = "127.0.0.1:1"
admin = "unix:{dir}/admin.sock"

[pools.shop]

[services.shop]
strategy = "{strategy}"
balancer = {{ kind = "builtin", pool = "shop" }}
runtime = {{ kind = "process", start = ["app", "{{port}}"] }}
releases = {{ dir = "{dir}/shop" }}
health = {{ path = "/health", interval = "100ms", deadline = "10s" }}
drain = {{ timeout = "2s" }}
verify = "1s"
keep_warm = "10m"
canary = {{ weight = 20, window = "5s" }}
rolling = {{ max_unavailable = 1 }}
{extra}
"#,
            dir = dir.path().display()
        );
        for (i, node) in nodes.iter().enumerate() {
            text.push_str(&format!(
                "\n[[services.shop.nodes]]\nname = \"{node}\"\nport = {}\n",
                20001 + i
            ));
        }
        let source = Source {
            path: dir.path().join("nonstop.toml"),
            text: edit(text),
        };
        let config = Config::parse(&source).unwrap_or_else(|e| panic!("{e}"));
        let config = config.services["shop"].clone();
        std::fs::write(dir.path().join("app.jar"), b"v").unwrap();
        Service {
            world,
            dir,
            strategy,
            nodes,
            config,
        }
    }

    /// An engine over this service's world; `on_step(k)` runs when the k-th step begins.
    pub fn engine(&self, on_step: impl Fn(usize, &str) + 'static) -> FakeEngine {
        let count = Rc::new(Cell::new(0usize));
        let emit = Box::new(move |e: &Event| {
            if e.kind == EventKind::Step {
                let k = count.get();
                count.set(k + 1);
                on_step(k, &e.message);
            }
        });
        Engine::new(
            "shop",
            self.config.clone(),
            self.dir.path().join("shop"),
            self.world.balancer(),
            self.world.runtime(),
            self.world.probe(),
            emit,
        )
        .expect("engine")
    }

    pub fn artifact(&self, version: &str) -> PathBuf {
        let path = self.dir.path().join(format!("app-{version}.jar"));
        std::fs::write(&path, version.as_bytes()).unwrap();
        path
    }

    pub async fn deploy(&self, engine: &mut FakeEngine, version: &str) -> Result<(), DeployError> {
        engine
            .deploy(DeployRequest {
                artifact: self.artifact(version),
                version: Some(Version::from(version)),
                strategy: None,
                env: Default::default(),
                pause_before_switch: false,
            })
            .await
            .map(drop)
    }

    /// What `fault` does to the world now; returns the node an operator changed, and how.
    pub fn inject(&self, fault: Fault, new: &str) -> Option<(String, LbState)> {
        inject(&self.world, &self.nodes, fault, new)
    }
}

/// Nodes running `new`, and nodes running anything else.
fn by_release(world: &World, new: &str) -> (Vec<String>, Vec<String>) {
    let running = world.running();
    let (a, b): (Vec<_>, Vec<_>) = running.into_iter().partition(|(_, v)| v == new);
    (
        a.into_iter().map(|(n, _)| n).collect(),
        b.into_iter().map(|(n, _)| n).collect(),
    )
}

pub fn inject(
    world: &World,
    nodes: &[String],
    fault: Fault,
    new: &str,
) -> Option<(String, LbState)> {
    let (new_nodes, old_nodes) = by_release(world, new);
    let mut operator = None;
    {
        match fault {
            Fault::Balancer => world.lock().fail_next_mutation = true,
            Fault::OperatorDisablesNew => {
                // Before any new instance runs: the slot it will run on (the first idle one).
                let target = new_nodes
                    .first()
                    .cloned()
                    .or_else(|| nodes.iter().find(|n| !old_nodes.contains(n)).cloned());
                if let Some(node) = target
                    && world
                        .lock()
                        .members
                        .contains_key(&nonstop_ports::NodeName::from(node.as_str()))
                {
                    operator = operator_sets(world, &node, LbState::Disabled);
                }
            }
            Fault::OperatorDrainsOld => {
                if let Some(node) = old_nodes.last()
                    && world
                        .lock()
                        .members
                        .contains_key(&nonstop_ports::NodeName::from(node.as_str()))
                {
                    operator = operator_sets(world, node, LbState::Draining);
                }
            }
            Fault::FlapNew => {
                for n in &new_nodes {
                    world.flap(n, Duration::from_secs(3));
                }
            }
            Fault::FlapOld => {
                if let Some(n) = old_nodes.last() {
                    world.flap(n, Duration::from_secs(3));
                }
            }
            Fault::CrashNew => {
                for n in &new_nodes {
                    world.crash(n);
                }
            }
            Fault::KilledAfterSpawn => world.lock().hang_after_spawn = true,
            Fault::Crash | Fault::Journal => {}
        }
    }
    operator
}

/// The operator's change, when it changes anything.
fn operator_sets(world: &World, node: &str, state: LbState) -> Option<(String, LbState)> {
    let before = world
        .lock()
        .members
        .get(&nonstop_ports::NodeName::from(node))
        .map(|m| m.state);
    world.operator_sets(node, state);
    (before != Some(state)).then(|| (node.to_string(), state))
}
