//! The seam for a canary's outside judges (e.g. Prometheus queries): given one step's window,
//! a verdict. The balancer's own per-node counters are judged by the engine itself.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{NodeName, Version};

/// What one analysis concluded about a canary window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Good enough to go on; says what was measured.
    Pass(String),
    /// The release must not be promoted; says why.
    Fail(String),
    /// Not enough data (too few requests, a metric source that did not answer): never a pass.
    Inconclusive(String),
}

impl Verdict {
    /// The worse of two verdicts: a failure beats "not enough data", which beats a pass;
    /// the messages of equal verdicts are joined.
    pub fn and(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (Fail(a), Fail(b)) => Fail(format!("{a}; {b}")),
            (Fail(a), _) | (_, Fail(a)) => Fail(a),
            (Inconclusive(a), Inconclusive(b)) => Inconclusive(format!("{a}; {b}")),
            (Inconclusive(a), _) | (_, Inconclusive(a)) => Inconclusive(a),
            (Pass(a), Pass(b)) => Pass(format!("{a}; {b}")),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Verdict::Pass(m) | Verdict::Fail(m) | Verdict::Inconclusive(m) => m,
        }
    }
}

/// One canary step's window, as an analysis is told it.
#[derive(Debug, Clone)]
pub struct AnalysisWindow {
    pub service: String,
    pub version: Version,
    /// The 1-based number of the canary step, and the canary's share of new requests in it.
    pub step: usize,
    pub share: u32,
    /// How long the step's traffic ran (its end is "now").
    pub window: Duration,
    pub canaries: Vec<NodeName>,
    pub stable: Vec<NodeName>,
}

/// A judge of canary windows beside the balancer's counters. Object-safe: the engine holds
/// the configured analyses as `Box<dyn Analysis>`.
pub trait Analysis: Send + Sync {
    /// A short name for plans, logs and the journal (e.g. `prometheus error-rate`).
    fn name(&self) -> String;
    fn analyze<'a>(
        &'a self,
        window: &'a AnalysisWindow,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;
}
