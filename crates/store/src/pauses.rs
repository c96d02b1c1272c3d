//! Paused deploys and the decisions on them: the deploy waits on its row, and any process
//! (CLI, console, CI through the API) promotes or aborts it by writing the decision there.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Result, Store, now_ms};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pauses (
    deploy INTEGER PRIMARY KEY REFERENCES deployments(id),
    service TEXT NOT NULL,
    step INTEGER NOT NULL,
    why TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    decision TEXT,
    decided_by TEXT,
    decided_ms INTEGER
);
CREATE TABLE IF NOT EXISTS plans (
    deploy INTEGER PRIMARY KEY REFERENCES deployments(id),
    json TEXT NOT NULL
);
";

/// What a person decided about a paused deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Go on with the next step.
    Promote,
    /// Roll the deploy back.
    Abort,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Promote => "promote",
            Decision::Abort => "abort",
        }
    }

    fn parse(s: &str) -> Option<Decision> {
        match s {
            "promote" => Some(Decision::Promote),
            "abort" => Some(Decision::Abort),
            _ => None,
        }
    }
}

/// A deploy waiting at a pause step.
#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    pub deploy: i64,
    /// The journal index of the step that waits.
    pub step: i64,
    pub why: String,
    pub since_ms: i64,
    /// It aborts on its own at this time.
    pub until_ms: i64,
    pub decision: Option<Decision>,
    pub decided_by: Option<String>,
    pub decided_ms: Option<i64>,
}

impl Store {
    /// Records that `deploy` waits at its step `step` until `until_ms` (a new wait replaces
    /// an earlier, decided one of the same deploy).
    pub fn pause(&self, deploy: i64, step: i64, why: &str, until_ms: i64) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO pauses (deploy, service, step, why, since_ms, until_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![deploy, self.service, step, why, now_ms(), until_ms],
        )
    }

    /// The pause row of `deploy`, decided or not.
    pub fn pause_of(&self, deploy: i64) -> Result<Option<Pause>> {
        self.conn
            .query_row(
                "SELECT deploy, step, why, since_ms, until_ms, decision, decided_by, decided_ms FROM pauses WHERE deploy = ?1",
                params![deploy],
                |r| {
                    let decision: Option<String> = r.get(5)?;
                    Ok(Pause {
                        deploy: r.get(0)?,
                        step: r.get(1)?,
                        why: r.get(2)?,
                        since_ms: r.get(3)?,
                        until_ms: r.get(4)?,
                        decision: decision.as_deref().and_then(Decision::parse),
                        decided_by: r.get(6)?,
                        decided_ms: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// The service's running deploy's pause, while no decision has been made on it.
    pub fn waiting(&self) -> Result<Option<Pause>> {
        let Some(running) = self.unfinished()? else {
            return Ok(None);
        };
        Ok(self.pause_of(running.id)?.filter(|p| p.decision.is_none()))
    }

    /// Records `decision` on the waiting pause of `deploy`; false when it does not wait (any
    /// more): someone else decided first, or it went on.
    pub fn decide(&self, deploy: i64, decision: Decision, by: &str) -> Result<bool> {
        let changed = self
            .conn
            .execute(
                "UPDATE pauses SET decision = ?1, decided_by = ?2, decided_ms = ?3 WHERE deploy = ?4 AND decision IS NULL",
                params![decision.as_str(), by, now_ms(), deploy],
            )
            .map_err(|e| self.sql(e))?;
        Ok(changed == 1)
    }

    /// The deploy no longer waits (it went on, or was aborted).
    pub fn unpause(&self, deploy: i64) -> Result<()> {
        self.exec("DELETE FROM pauses WHERE deploy = ?1", params![deploy])
    }

    /// Keeps the plan a deploy runs, so another process can resume it after a pause.
    pub fn save_plan(&self, deploy: i64, json: &str) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO plans (deploy, json) VALUES (?1, ?2)",
            params![deploy, json],
        )
    }

    pub fn plan_of(&self, deploy: i64) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT json FROM plans WHERE deploy = ?1",
                params![deploy],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// This process takes over `deploy` (its own died while it waited): the lock and the
    /// deployment name this pid from now on.
    pub fn adopt(&self, deploy: i64, pid: i32, host: &str) -> Result<()> {
        self.exec(
            "UPDATE locks SET deploy = ?1 WHERE service = ?2",
            params![deploy, self.service],
        )?;
        self.exec(
            "UPDATE deployments SET pid = ?1, host = ?2 WHERE id = ?3",
            params![pid, host, deploy],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Holder;
    use nonstop_ports::Version;

    #[test]
    fn a_decision_is_taken_once_and_only_while_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), "shop").unwrap();
        let holder = Holder::current();
        store.acquire(&holder).unwrap();
        let id = store
            .begin(
                "deploy",
                &Version::from("v2"),
                None,
                "canary",
                &holder,
                "{}",
            )
            .unwrap();
        assert!(store.waiting().unwrap().is_none());
        assert!(!store.decide(id, Decision::Promote, "ann").unwrap());
        store
            .pause(id, 4, "canary step", now_ms() + 60_000)
            .unwrap();
        let waiting = store.waiting().unwrap().expect("waits");
        assert_eq!((waiting.deploy, waiting.step), (id, 4));
        assert!(store.decide(id, Decision::Abort, "ann").unwrap());
        assert!(
            !store.decide(id, Decision::Promote, "bob").unwrap(),
            "decided twice"
        );
        let p = store.pause_of(id).unwrap().unwrap();
        assert_eq!(p.decision, Some(Decision::Abort));
        assert_eq!(p.decided_by.as_deref(), Some("ann"));
        assert!(store.waiting().unwrap().is_none());
        store.unpause(id).unwrap();
        assert!(store.pause_of(id).unwrap().is_none());
        store.save_plan(id, "[1]").unwrap();
        assert_eq!(store.plan_of(id).unwrap().as_deref(), Some("[1]"));
    }
}
