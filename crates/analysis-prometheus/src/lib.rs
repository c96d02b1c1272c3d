//! Canary analysis from Prometheus (Argo's AnalysisTemplate idea): a PromQL range query over a
//! canary step's window, each point one measurement judged by `success` / `failure`.

pub mod api;
pub mod condition;
pub mod judge;
pub mod query;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use nonstop_ports::{Analysis, AnalysisWindow, Verdict};

pub use api::{ApiError, PrometheusApi, Series};
pub use condition::{Condition, ConditionError};
pub use judge::Rule;
pub use query::{PLACEHOLDERS, QueryTemplate, UnknownPlaceholder};

/// One named query against one Prometheus server.
#[derive(Debug, Clone)]
pub struct PrometheusAnalysis {
    pub name: String,
    pub api: PrometheusApi,
    pub query: QueryTemplate,
    pub rule: Rule,
    /// The range query's step: the spacing of measurements.
    pub interval: Duration,
}

impl PrometheusAnalysis {
    /// The verdict on the window that ends `end`.
    pub async fn analyze_until(&self, window: &AnalysisWindow, end: SystemTime) -> Verdict {
        let query = self.query.fill(window);
        let start = end.checked_sub(window.window).unwrap_or(end);
        match self
            .api
            .query_range(&query, start, end, self.interval)
            .await
        {
            Ok(series) => self.rule.judge(&series),
            Err(e) => Verdict::Inconclusive(format!("inconclusive, no measurement: {e}")),
        }
    }
}

impl Analysis for PrometheusAnalysis {
    fn name(&self) -> String {
        format!("prometheus {}", self.name)
    }

    fn analyze<'a>(
        &'a self,
        window: &'a AnalysisWindow,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
        Box::pin(self.analyze_until(window, SystemTime::now()))
    }
}

#[cfg(test)]
mod tests;
