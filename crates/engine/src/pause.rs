//! Pauses: a deploy waits for a person (or CI) to promote or abort it, at most its limit. The
//! decision comes through the store, so any process can make it; a deploy whose process died
//! while it waited is resumed (promote) or undone (abort) by the process that decides.

use nonstop_ports::{Balancer, Probe, Runtime};
use nonstop_store::{Decision, Deployment, Pause, now_ms, pid_alive};
use serde::Serialize;
use tokio::time::{Duration, Instant};

use crate::error::{DeployError, StepError};
use crate::executor::Run;
use crate::{DeployReport, Engine, EventKind};

/// A deploy that waits for a decision, as `status` and the console show it.
#[derive(Debug, Clone, Serialize)]
pub struct Paused {
    pub deploy: i64,
    pub version: String,
    /// The 1-based step that waits, of how many.
    pub step: i64,
    pub steps: usize,
    pub why: String,
    pub since_ms: i64,
    /// It aborts on its own at this time.
    pub until_ms: i64,
    /// Who started the deploy, and whether its process still runs (else whoever promotes
    /// resumes it in their own process).
    pub holder: String,
    pub pid: i32,
    pub holder_alive: bool,
}

/// What [`Engine::decide`] did.
#[derive(Debug)]
pub enum Decided {
    /// The deploy's own process goes on (promote) or rolls back (abort).
    Relayed { deploy: i64, pid: i32 },
    /// Its process was gone: this one resumed the deploy, and it finished.
    Resumed(DeployReport),
    /// Its process was gone: this one undid the deploy.
    Undone { deploy: i64 },
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// Waits until someone promotes (`Ok`) or aborts the deploy, or `limit` passes (abort).
    /// The deploy keeps being watched meanwhile: an operator's change or a crash ends the wait.
    pub(crate) async fn pause(
        &self,
        run: &mut Run,
        why: &str,
        limit: Duration,
    ) -> Result<String, StepError> {
        let step = run.index as i64 - 1;
        let until_ms = now_ms() + limit.as_millis() as i64;
        self.store
            .pause(run.deploy, step, why, until_ms)
            .map_err(|e| StepError::Journal(format!("journal: {e}")))?;
        self.event(
            EventKind::Paused,
            None,
            format!(
                "paused ({why}): `nonstop promote {s}` goes on, `nonstop abort {s}` rolls back; aborts on its own at {}",
                nonstop_store::format_ms(until_ms),
                s = self.service
            ),
        );
        let result = self.await_decision(run, limit).await;
        let _ = self.store.unpause(run.deploy);
        result
    }

    async fn await_decision(&self, run: &mut Run, limit: Duration) -> Result<String, StepError> {
        let started = Instant::now();
        let deadline = started + limit;
        let mut looked = Instant::now();
        loop {
            let pause = self
                .store
                .pause_of(run.deploy)
                .map_err(|e| StepError::Environment(e.to_string()))?;
            if let Some(Pause {
                decision: Some(decision),
                decided_by,
                ..
            }) = pause
            {
                let by = decided_by.unwrap_or_default();
                let waited =
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
                return match decision {
                    Decision::Promote => Ok(format!("promoted by {by} after {waited}")),
                    Decision::Abort => Err(StepError::Failed(format!(
                        "aborted by {by} after a pause of {waited}"
                    ))),
                };
            }
            if Instant::now() >= deadline {
                return Err(StepError::Failed(format!(
                    "paused longer than its limit of {} (pause_limit): aborted on its own",
                    humantime::format_duration(limit)
                )));
            }
            if looked.elapsed() >= Duration::from_secs(1) {
                looked = Instant::now();
                self.reconcile(run).await?;
                self.watch(run).await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The service's deploy that waits for a decision, if one does.
    pub fn paused(&self) -> Result<Option<Paused>, DeployError> {
        let Some(pause) = self.store.waiting()? else {
            return Ok(None);
        };
        let Some(deployment) = self.store.deployment(pause.deploy)? else {
            return Ok(None);
        };
        let steps = self
            .store
            .plan_of(pause.deploy)?
            .and_then(|json| serde_json::from_str::<Vec<crate::Step>>(&json).ok())
            .map_or(0, |s| s.len());
        Ok(Some(Paused {
            deploy: pause.deploy,
            version: deployment.version.clone(),
            step: pause.step + 1,
            steps,
            why: pause.why,
            since_ms: pause.since_ms,
            until_ms: pause.until_ms,
            holder: deployment.holder.clone(),
            pid: deployment.pid,
            holder_alive: pid_alive(deployment.pid),
        }))
    }

    /// Promotes or aborts the paused deploy as `by`. Its own process acts on it; if that
    /// process is gone, this one resumes the deploy (promote) or undoes it (abort).
    pub async fn decide(&mut self, decision: Decision, by: &str) -> Result<Decided, DeployError> {
        let Some(paused) = self.paused()? else {
            return Err(DeployError::Refused(format!(
                "no deploy of {} waits for a decision (see `nonstop status {}`)",
                self.service, self.service
            )));
        };
        if !self.store.decide(paused.deploy, decision, by)? {
            return Err(DeployError::Refused(format!(
                "deploy #{} no longer waits: someone else decided first",
                paused.deploy
            )));
        }
        if paused.holder_alive {
            return Ok(Decided::Relayed {
                deploy: paused.deploy,
                pid: paused.pid,
            });
        }
        // Its process is gone: the lock is this process's to take, with the deploy.
        let Some(stale) = self.store.acquire(&self.holder)? else {
            self.unlock();
            return Err(DeployError::Refused(format!(
                "deploy #{} has no process and no unfinished record; see `nonstop status {}`",
                paused.deploy, self.service
            )));
        };
        match decision {
            Decision::Abort => {
                let result = self
                    .recover(stale, &format!("aborted by {by} while paused"))
                    .await;
                self.unlock();
                result.map(|()| Decided::Undone {
                    deploy: paused.deploy,
                })
            }
            Decision::Promote => {
                let result = self.resume(stale, by).await;
                self.unlock();
                result.map(Decided::Resumed)
            }
        }
    }

    /// Whether `stale` (a deploy whose process died) waits at a pause that has not expired:
    /// such a deploy is kept for a decision instead of being undone by the next command.
    pub(crate) fn waits_for_decision(&self, stale: &Deployment) -> Result<bool, DeployError> {
        Ok(self
            .store
            .pause_of(stale.id)?
            .is_some_and(|p| p.decision.is_none() && p.until_ms > now_ms()))
    }
}
