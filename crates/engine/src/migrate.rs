//! The release's database migration as a plan step: run once per deploy across the fleet,
//! before the first node gets the release, with the release's environment; recorded with the
//! release, so a rollback past a migration that cannot be undone is refused.

use std::io::Write;

use nonstop_ports::{Balancer, Probe, Runtime, Version};
use tokio::time::Instant;

use crate::error::StepError;
use crate::executor::Run;
use crate::plan::Step;
use crate::{Engine, HookPoint};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Puts the migration before the first step that gives a node the new release.
    pub(crate) fn place_migration(&self, version: &Version, steps: &mut Vec<Step>) {
        if self.spec.migrate.is_none() {
            return;
        }
        let first = steps.iter().position(|s| match s {
            Step::Start { version: v, .. }
            | Step::Reuse { version: v, .. }
            | Step::StartBeside { version: v, .. } => v == version,
            Step::Hook { point, .. } => *point == HookPoint::AfterInstall,
            _ => false,
        });
        if let Some(at) = first {
            steps.insert(
                at,
                Step::Migrate {
                    version: version.clone(),
                },
            );
        }
    }

    pub(crate) async fn migrate(
        &self,
        run: &Run,
        version: &Version,
        down: bool,
    ) -> Result<String, StepError> {
        let Some(spec) = &self.spec.migrate else {
            return Ok("no migration configured".into());
        };
        let argv = match (down, &spec.down) {
            (false, _) => &spec.run,
            (true, Some(down)) => down,
            (true, None) => return Ok("the migration has no down command".into()),
        };
        let release = self.release_of(run, version)?;
        let mut values = self.hook_values(run, HookPoint::BeforeDeploy, None);
        values.remove("hook");
        let argv: Vec<String> = argv
            .iter()
            .map(|a| nonstop_ports::template::fill(a, &values))
            .collect();
        let log = release.dir.join("logs").join("migrate.log");
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            let _ = writeln!(
                file,
                "--- nonstop: {} {version}: {argv:?}",
                if down { "migrate down" } else { "migrate" }
            );
        }
        let started = Instant::now();
        let outcome = self
            .spawn_logged(
                &argv,
                &values,
                &release.env,
                Some(&release.dir),
                spec.timeout,
                None,
            )
            .await;
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&log) {
            let _ = writeln!(
                file,
                "--- nonstop: {}",
                match &outcome {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.clone(),
                }
            );
        }
        let took = crate::executor::took(started.elapsed());
        match outcome {
            Ok(tail) if down => {
                self.store
                    .forget_migration(version)
                    .map_err(|e| StepError::Environment(e.to_string()))?;
                Ok(format!("migration of {version} undone in {took}{tail}"))
            }
            Ok(tail) => {
                self.store
                    .record_migration(version, spec.reversible, run.deploy)
                    .map_err(|e| StepError::Environment(e.to_string()))?;
                Ok(format!(
                    "migration of {version} ran in {took} (log {}){tail}",
                    log.display()
                ))
            }
            Err(why) => Err(StepError::Failed(format!(
                "the migration of {version} failed: {why} (log {})",
                log.display()
            ))),
        }
    }

    /// A manual rollback from `current` is refused when `current` ran a migration that cannot
    /// be undone, unless forced: the previous release may not work on the migrated database.
    pub(crate) fn check_rollback_past_migration(
        &self,
        current: &Version,
        previous: &Version,
        force: bool,
    ) -> Result<(), crate::DeployError> {
        let Some((reversible, at)) = self.store.migration(current)? else {
            return Ok(());
        };
        if reversible || force {
            return Ok(());
        }
        Err(crate::DeployError::Refused(format!(
            "{current} ran a database migration that cannot be undone (at {}); {previous} may not work on the migrated database. Deploy a fix forward, or roll back anyway with --force-past-migration",
            nonstop_store::format_ms(at)
        )))
    }
}
