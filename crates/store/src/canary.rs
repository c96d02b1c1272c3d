//! The numbers of each canary window (the new release's and the stable one's), updated while
//! the window runs and closed with its verdict: what `status` and the console's picture show.

use nonstop_ports::Traffic;
use rusqlite::params;
use serde::Serialize;

use crate::{Result, Store, now_ms};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS canary_windows (
    deploy INTEGER NOT NULL REFERENCES deployments(id),
    step INTEGER NOT NULL,
    share INTEGER NOT NULL,
    window_ms INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    canary TEXT NOT NULL,
    stable TEXT NOT NULL,
    verdict TEXT,
    PRIMARY KEY (deploy, step)
);
";

/// One canary step's window so far.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryWindow {
    pub deploy: i64,
    /// The journal index of the canary step.
    pub step: i64,
    pub share: u32,
    pub window_ms: i64,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub canary: Traffic,
    pub stable: Traffic,
    /// `passed: …`, the failure, or `inconclusive: …`, once the window is judged.
    pub verdict: Option<String>,
}

impl Store {
    /// Records the window's numbers so far (and its verdict, once there is one).
    #[allow(clippy::too_many_arguments)]
    pub fn canary_window(
        &self,
        deploy: i64,
        step: i64,
        share: u32,
        window_ms: i64,
        started_ms: i64,
        canary: &Traffic,
        stable: &Traffic,
        verdict: Option<&str>,
    ) -> Result<()> {
        let json = |t: &Traffic| serde_json::to_string(t).expect("plain data");
        self.exec(
            "INSERT OR REPLACE INTO canary_windows (deploy, step, share, window_ms, started_ms, updated_ms, canary, stable, verdict)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                deploy,
                step,
                share,
                window_ms,
                started_ms,
                now_ms(),
                json(canary),
                json(stable),
                verdict
            ],
        )
    }

    /// The windows of `deploy`, in step order.
    pub fn canary_windows(&self, deploy: i64) -> Result<Vec<CanaryWindow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT deploy, step, share, window_ms, started_ms, updated_ms, canary, stable, verdict
                 FROM canary_windows WHERE deploy = ?1 ORDER BY step",
            )
            .map_err(|e| self.sql(e))?;
        let traffic = |s: String| serde_json::from_str::<Traffic>(&s).unwrap_or_default();
        stmt.query_map(params![deploy], |r| {
            Ok(CanaryWindow {
                deploy: r.get(0)?,
                step: r.get(1)?,
                share: r.get(2)?,
                window_ms: r.get(3)?,
                started_ms: r.get(4)?,
                updated_ms: r.get(5)?,
                canary: traffic(r.get(6)?),
                stable: traffic(r.get(7)?),
                verdict: r.get(8)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sql(e))
    }
}
