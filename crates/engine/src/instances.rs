//! The steps that start, stop and find instances: each start is journaled (node, version,
//! port) before the spawn, so an instance never runs without a record recovery can find.

use nonstop_ports::{
    Balancer, Instance, InstanceSpec, NodeName, Probe, Replacement, Runtime, Version,
};
use tokio::time::{Duration, Instant};

use crate::Engine;
use crate::error::StepError;
use crate::executor::Run;
use crate::releases::{self, Release};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// The release `version` of this service, as installed.
    pub(crate) fn release_of(&self, run: &Run, version: &Version) -> Result<Release, StepError> {
        if &run.release.version == version {
            return Ok(run.release.clone());
        }
        releases::load(&self.base, version).ok_or_else(|| {
            StepError::Failed(format!(
                "release {version} is no longer on disk in {}",
                releases::releases_dir(&self.base).display()
            ))
        })
    }

    pub(crate) fn instance_spec(&self, release: &Release, node: &NodeName) -> InstanceSpec {
        InstanceSpec {
            node: node.clone(),
            port: self.spec.port_of(node),
            version: release.version.clone(),
            release_dir: release.dir.clone(),
            artifact: release.artifact(),
            env: release.env.clone(),
            log: release.log(node.as_str()),
        }
    }

    /// The spec of a start: on this machine the service's `env_files` are read now, under the
    /// release's own `--env` (they never reach the journal or the store); an agent reads its own.
    fn start_spec(&self, release: &Release, node: &NodeName) -> Result<InstanceSpec, StepError> {
        let mut spec = self.instance_spec(release, node);
        if !self.spec.on_hosts && !self.spec.env_files.is_empty() {
            let mut env = nonstop_config::read_env_files(&self.spec.env_files)
                .map_err(|e| StepError::Failed(format!("{node} did not start: {e}")))?;
            env.append(&mut spec.env);
            spec.env = env;
        }
        Ok(spec)
    }

    /// The live instance of `version` on `node`: the store's record, this deploy's own, or one
    /// started but never recorded (found by the runtime).
    pub(crate) async fn instance_of(
        &self,
        run: &Run,
        node: &NodeName,
        version: &Version,
    ) -> Option<Instance> {
        let recorded = self.store.instance(node).ok().flatten().map(|r| r.instance);
        for candidate in [
            recorded,
            run.started.get(node).cloned(),
            run.beside.get(node).cloned(),
        ]
        .into_iter()
        .flatten()
        {
            if &candidate.version == version && self.runtime.is_running(&candidate).await {
                return Some(candidate);
            }
            // A `Beside` runtime's other release lives in the same server (same pid).
            if self.runtime.replacement() == Replacement::Beside {
                let other = Instance {
                    version: version.clone(),
                    ..candidate
                };
                if self.runtime.is_running(&other).await {
                    return Some(other);
                }
            }
        }
        let release = self.release_of(run, version).ok()?;
        self.runtime.find(&self.instance_spec(&release, node)).await
    }

    pub(crate) async fn start(
        &self,
        run: &mut Run,
        node: &NodeName,
        version: &Version,
    ) -> Result<String, StepError> {
        if let Some(running) = self.instance_of(run, node, version).await {
            self.store
                .put_instance(&running)
                .map_err(|e| StepError::Environment(e.to_string()))?;
            run.started.insert(node.clone(), running);
            return Ok(format!("{node} {version} runs already"));
        }
        let release = self.release_of(run, version)?;
        let port = self.spec.port_of(node);
        if self.checks_ports() {
            let ip = self.spec.ip_of(node);
            let since = Instant::now();
            // An instance just stopped may still be exiting (a stop hook that only signals it).
            while !self.runtime.port_free(&ip, port).await {
                if since.elapsed() >= self.spec.stop_grace {
                    return Err(StepError::Failed(format!(
                        "port {port} of {node} is taken by a process nonstop did not start; stop it or change the port"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let spec = self.start_spec(&release, node)?;
        let instance = self
            .runtime
            .start(&spec)
            .await
            .map_err(|e| StepError::Failed(format!("{node} did not start: {e}")))?;
        self.store
            .put_instance(&instance)
            .map_err(|e| StepError::Environment(e.to_string()))?;
        run.started.insert(node.clone(), instance.clone());
        Ok(format!("{node} {version} started as pid {}", instance.pid))
    }

    /// Whether the engine checks a node's port before a start: only for runtimes whose old
    /// instance frees the port, on this machine (a remote host's agent checks there).
    pub(crate) fn checks_ports(&self) -> bool {
        self.runtime.replacement() == Replacement::StopFirst && !self.spec.on_hosts
    }

    pub(crate) async fn stop(
        &self,
        run: &mut Run,
        node: &NodeName,
        version: &Version,
    ) -> Result<String, StepError> {
        // Not running, as far as the runtime can tell: the record stays, since a runtime that
        // cannot be reached (an agent down) cannot tell; a start on the node replaces it.
        let Some(instance) = self.instance_of(run, node, version).await else {
            return Ok(format!("{node} {version} was not running"));
        };
        let started = Instant::now();
        self.runtime
            .stop(&instance, self.spec.stop_grace)
            .await
            .map_err(|e| StepError::Failed(format!("stopping {node} {version}: {e}")))?;
        if self
            .store
            .instance(node)
            .ok()
            .flatten()
            .is_none_or(|r| r.instance.version == *version)
        {
            self.store
                .remove_instance(node)
                .map_err(|e| StepError::Environment(e.to_string()))?;
        }
        run.started.remove(node);
        Ok(format!(
            "{node} {version} (pid {}) stopped in {}",
            instance.pid,
            crate::executor::took(started.elapsed())
        ))
    }

    pub(crate) async fn reuse(
        &self,
        run: &mut Run,
        node: &NodeName,
        version: &Version,
    ) -> Result<String, StepError> {
        let instance = self
            .instance_of(run, node, version)
            .await
            .ok_or_else(|| StepError::Failed(format!("{node} {version} is no longer running")))?;
        self.store
            .put_instance(&instance)
            .map_err(|e| StepError::Environment(e.to_string()))?;
        self.store
            .set_warm_until(node, None)
            .map_err(|e| StepError::Environment(e.to_string()))?;
        run.started.insert(node.clone(), instance.clone());
        Ok(format!(
            "{node} {version} still runs as pid {}",
            instance.pid
        ))
    }

    pub(crate) async fn start_beside(
        &self,
        run: &mut Run,
        node: &NodeName,
        version: &Version,
        old: &Version,
    ) -> Result<String, StepError> {
        if let Some(old) = self.instance_of(run, node, old).await {
            run.beside.insert(node.clone(), old);
        }
        let release = self.release_of(run, version)?;
        let instance = self
            .runtime
            .start(&self.start_spec(&release, node)?)
            .await
            .map_err(|e| StepError::Failed(format!("{node} did not start: {e}")))?;
        self.store
            .put_instance(&instance)
            .map_err(|e| StepError::Environment(e.to_string()))?;
        run.started.insert(node.clone(), instance);
        Ok(format!("{node} {version} started beside {old}"))
    }

    pub(crate) async fn retire(
        &self,
        run: &mut Run,
        node: &NodeName,
        version: &Version,
    ) -> Result<String, StepError> {
        let Some(old) = run.beside.remove(node) else {
            return Ok(format!("{node} {version} was not running"));
        };
        let started = Instant::now();
        self.runtime
            .stop(&old, self.spec.stop_grace)
            .await
            .map_err(|e| StepError::Failed(format!("{node}: retiring {version} failed: {e}")))?;
        Ok(format!(
            "{node} {version} retired after {:.1}s",
            started.elapsed().as_secs_f64()
        ))
    }

    pub(crate) async fn stop_beside(
        &self,
        run: &mut Run,
        node: &NodeName,
        version: &Version,
        old: &Version,
    ) -> Result<String, StepError> {
        let Some(record) = self.store.instance(node).ok().flatten() else {
            return Ok(format!("{node} runs nothing nonstop knows"));
        };
        let new = Instance {
            version: version.clone(),
            ..record.instance.clone()
        };
        let previous = Instance {
            version: old.clone(),
            ..record.instance.clone()
        };
        let old_runs = self.runtime.is_running(&previous).await;
        if self.runtime.is_running(&new).await {
            self.runtime
                .stop(&new, self.spec.stop_grace)
                .await
                .map_err(|e| StepError::Failed(format!("stopping {node} {version}: {e}")))?;
        }
        if old_runs && self.runtime.is_running(&previous).await {
            self.store
                .put_instance(&previous)
                .map_err(|e| StepError::Environment(e.to_string()))?;
            Ok(format!(
                "{node} still runs {old} beside {version}: {version} stopped, {old} keeps serving (no drain)"
            ))
        } else {
            // The old release was retired already: it starts again, alone.
            let started = self.start(run, node, old).await?;
            Ok(format!("{node} {version} stopped; {started}"))
        }
    }
}
