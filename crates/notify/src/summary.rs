//! What a delivery says: the deploy's summary from the store, as nonstop's JSON or as a
//! Slack-compatible `{"text": …}`.

use nonstop_config::notify::{NotifyEvent, NotifyFormat};
use nonstop_store::Deployment;
use serde::Serialize;

/// The body of a `json` delivery (docs/lifecycle.md lists the fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub event: NotifyEvent,
    pub service: String,
    pub deploy: i64,
    /// `deploy`, `rollback` or `recovery`.
    pub kind: String,
    pub version: String,
    pub from_version: Option<String>,
    pub strategy: String,
    /// `running`, `succeeded`, `rolled-back` or `failed`.
    pub outcome: String,
    pub reason: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    /// Who ran it (`user@host`, or the console's user).
    pub who: String,
}

impl Summary {
    pub fn of(event: NotifyEvent, deployment: &Deployment) -> Summary {
        Summary {
            event,
            service: deployment.service.clone(),
            deploy: deployment.id,
            kind: deployment.kind.clone(),
            version: deployment.version.clone(),
            from_version: deployment.from_version.clone(),
            strategy: deployment.strategy.clone(),
            outcome: deployment.outcome.as_str().to_string(),
            reason: deployment.reason.clone(),
            started_ms: deployment.started_ms,
            finished_ms: deployment.finished_ms,
            duration_ms: deployment.duration().map(|d| d.as_millis() as u64),
            who: deployment.holder.clone(),
        }
    }

    /// The bytes sent (and signed) in `format`.
    pub fn body(&self, format: NotifyFormat) -> Vec<u8> {
        match format {
            NotifyFormat::Json => serde_json::to_vec(self).expect("plain data"),
            NotifyFormat::Slack => {
                serde_json::to_vec(&serde_json::json!({ "text": self.line() })).expect("plain data")
            }
        }
    }

    /// One line for a chat channel.
    pub fn line(&self) -> String {
        let from = self.from_version.as_deref().unwrap_or("nothing");
        let took = self
            .duration_ms
            .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let why = self
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!(
            "nonstop: {} #{} of {} {from} → {} ({}) {}{took} by {}{why}",
            self.kind,
            self.deploy,
            self.service,
            self.version,
            self.strategy,
            self.event.as_str(),
            self.who
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            event: NotifyEvent::RolledBack,
            service: "shop".into(),
            deploy: 7,
            kind: "deploy".into(),
            version: "v2".into(),
            from_version: Some("v1".into()),
            strategy: "blue-green".into(),
            outcome: "rolled-back".into(),
            reason: Some("health gate failed".into()),
            started_ms: 1_000,
            finished_ms: Some(3_500),
            duration_ms: Some(2_500),
            who: "ops@host".into(),
        }
    }

    #[test]
    fn json_and_slack_bodies() {
        let json: serde_json::Value =
            serde_json::from_slice(&summary().body(NotifyFormat::Json)).unwrap();
        assert_eq!(json["event"], "rolled-back");
        assert_eq!(json["from_version"], "v1");
        assert_eq!(json["duration_ms"], 2500);
        let slack: serde_json::Value =
            serde_json::from_slice(&summary().body(NotifyFormat::Slack)).unwrap();
        assert_eq!(
            slack["text"],
            "nonstop: deploy #7 of shop v1 → v2 (blue-green) rolled-back in 2.5s by ops@host: health gate failed"
        );
    }
}
