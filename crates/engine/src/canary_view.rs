//! The picture of a canary: its steps from the stored plan, each with its state and the canary's
//! and the stable release's numbers in its window, for `status` and the console's chart.

use nonstop_ports::{Balancer, Probe, Runtime, Traffic};
use serde::Serialize;

use crate::Engine;
use crate::error::DeployError;
use crate::pause::Paused;
use crate::plan::Step;

/// A deploy's canary, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryView {
    pub deploy: i64,
    pub version: String,
    /// The deploy's outcome (`running`, `succeeded`, `rolled-back`, …).
    pub outcome: String,
    pub paused: Option<Paused>,
    pub steps: Vec<CanaryStepView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CanaryStepView {
    /// The 1-based number of the step in the deploy's plan.
    pub number: usize,
    /// `canary` (a share for a window) or `pause`.
    pub kind: &'static str,
    pub share: Option<u32>,
    pub window_ms: Option<u64>,
    /// `pending`, `running`, `waiting` (a pause, or an inconclusive window), `passed`, `failed`
    /// or `stopped` (begun, never finished: the deploy was undone).
    pub state: &'static str,
    pub canary: Option<Numbers>,
    pub stable: Option<Numbers>,
    /// The verdict, or who promoted a pause.
    pub result: Option<String>,
}

/// One release's requests in a window.
#[derive(Debug, Clone, Serialize)]
pub struct Numbers {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub mean_latency_ms: Option<f64>,
}

impl From<&Traffic> for Numbers {
    fn from(t: &Traffic) -> Numbers {
        Numbers {
            requests: t.requests,
            errors: t.errors,
            error_rate: t.error_rate(),
            mean_latency_ms: t.mean_latency_ms(),
        }
    }
}

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    /// The newest of the last few deploys that has canary or pause steps.
    pub fn canary_view(&self) -> Result<Option<CanaryView>, DeployError> {
        for deployment in self.store.deployments(5)? {
            let Some(json) = self.store.plan_of(deployment.id)? else {
                continue;
            };
            let Ok(steps) = serde_json::from_str::<Vec<Step>>(&json) else {
                continue;
            };
            if !steps
                .iter()
                .any(|s| matches!(s, Step::Canary { .. } | Step::Pause { .. }))
            {
                continue;
            }
            let journal = self.store.journal_of(deployment.id)?;
            let windows = self.store.canary_windows(deployment.id)?;
            let paused = self.paused()?.filter(|p| p.deploy == deployment.id);
            let running = deployment.outcome == nonstop_store::Outcome::Running;
            let mut view = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                let (kind, share, window_ms) = match step {
                    Step::Canary { share, window, .. } => {
                        ("canary", Some(*share), Some(window.as_millis() as u64))
                    }
                    Step::Pause { .. } => ("pause", None, None),
                    _ => continue,
                };
                let phase = |p: &str| {
                    journal
                        .iter()
                        .rev()
                        .find(|e| e.index == Some(i as i64) && e.phase.as_deref() == Some(p))
                };
                let waiting = paused.as_ref().is_some_and(|p| p.step == i as i64 + 1);
                let (state, result) = if let Some(done) = phase("done") {
                    ("passed", Some(done.detail.clone()))
                } else if let Some(failed) = phase("failed") {
                    ("failed", Some(failed.detail.clone()))
                } else if waiting {
                    ("waiting", paused.as_ref().map(|p| p.why.clone()))
                } else if phase("begin").is_some() {
                    (if running { "running" } else { "stopped" }, None)
                } else {
                    ("pending", None)
                };
                let window = windows.iter().find(|w| w.step == i as i64);
                view.push(CanaryStepView {
                    number: i + 1,
                    kind,
                    share,
                    window_ms,
                    state,
                    canary: window.map(|w| Numbers::from(&w.canary)),
                    stable: window.map(|w| Numbers::from(&w.stable)),
                    result: result.or_else(|| window.and_then(|w| w.verdict.clone())),
                });
            }
            return Ok(Some(CanaryView {
                deploy: deployment.id,
                version: deployment.version,
                outcome: deployment.outcome.as_str().to_string(),
                paused,
                steps: view,
            }));
        }
        Ok(None)
    }
}
