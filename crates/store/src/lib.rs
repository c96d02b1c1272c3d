//! nonstop's store: one SQLite file per service holding its deployments, the journal of their
//! steps, the deploy lock, the instances that run, and the current and previous release.
//!
//! The engine writes a journal entry *before* each side effect, so a crash leaves a record of what
//! may have happened; the lock row names its holder's pid, so a dead holder is told from a live one.

mod canary;
mod pauses;

pub use canary::CanaryWindow;
pub use pauses::{Decision, Pause};

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nonstop_ports::{Instance, NodeName, Version};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sql {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "store {path} is not a nonstop store: {why}. Restore it from a backup, or move it away to start afresh (nonstop then forgets the instances it started: stop them by hand)"
    )]
    NotAStore { path: String, why: String },
    #[error(
        "{service} is locked by {deploy} started by {holder} at {started} (still running as pid {pid}); wait for it or check `nonstop status {service}`"
    )]
    Locked {
        service: String,
        /// `deploy #N`, or `a deploy that is starting` before it has a number.
        deploy: String,
        holder: String,
        started: String,
        pid: i32,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Running,
    Succeeded,
    RolledBack,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "succeeded" => Outcome::Succeeded,
            "rolled-back" => Outcome::RolledBack,
            "failed" => Outcome::Failed,
            _ => Outcome::Running,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub service: String,
    /// `deploy`, `rollback` or `recovery`.
    pub kind: String,
    pub version: String,
    pub from_version: Option<String>,
    pub strategy: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub holder: String,
    pub pid: i32,
    /// The engine's picture of the service before the deploy (JSON), what a rollback restores.
    #[serde(skip)]
    pub snapshot: String,
}

impl Deployment {
    pub fn duration(&self) -> Option<Duration> {
        self.finished_ms
            .map(|end| Duration::from_millis(end.saturating_sub(self.started_ms).max(0) as u64))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    pub at_ms: i64,
    /// The step's index in its plan (undo steps continue the count).
    pub index: Option<i64>,
    /// `begin` (written before the step acts), `done` (its result) or `failed`.
    pub phase: Option<String>,
    pub step: String,
    pub detail: String,
    /// The step and its undo as the engine wrote them (JSON), for recovery.
    #[serde(skip)]
    pub data: Option<String>,
}

/// Who runs a deploy: shown to whoever finds the lock taken.
#[derive(Debug, Clone)]
pub struct Holder {
    pub name: String,
    pub pid: i32,
    pub host: String,
}

impl Holder {
    /// This process, as `user@host`.
    pub fn current() -> Holder {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| user_of(rustix::process::getuid().as_raw()));
        Holder {
            name: format!("{user}@{host}"),
            pid: std::process::id() as i32,
            host,
        }
    }
}

/// The login name of `uid` from /etc/passwd, or `uid N`.
fn user_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// An instance the engine started, with the time it may be stopped if it is only kept warm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRecord {
    pub instance: Instance,
    pub warm_until_ms: Option<i64>,
}

/// One plan step's journal entry as the engine writes it.
#[derive(Debug, Clone, Copy)]
pub struct StepEntry<'a> {
    pub deploy: i64,
    /// The step's index in its plan (undo steps continue the count).
    pub index: i64,
    /// `begin`, `done`, `failed` or `rollback`.
    pub phase: &'a str,
    pub step: &'a str,
    pub detail: &'a str,
    /// The step and its undo (JSON), for recovery.
    pub data: Option<&'a str>,
}

/// How soon a journal entry must be on disk (fsync'd). A process kill loses neither kind; only
/// a power loss can, and then only `WithNext` entries written after the last `Now` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Before the call returns: a step's write-ahead entry, announcing a change and its undo.
    Now,
    /// With the next `Now` entry: a step's result, or a step that changes nothing to undo. Recovery
    /// never depends on one: losing it equals a kill just before it was written.
    WithNext,
}

pub struct Store {
    conn: Connection,
    path: String,
    service: String,
    /// Fault injection for tests: journal writes fail once this many more have succeeded.
    journal_budget: std::cell::Cell<Option<usize>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn format_ms(ms: i64) -> String {
    humantime_like(ms)
}

fn humantime_like(ms: i64) -> String {
    // RFC 3339 in UTC, without pulling a date crate into the store.
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    from_version TEXT,
    strategy TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome TEXT NOT NULL,
    reason TEXT,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deploy INTEGER NOT NULL REFERENCES deployments(id),
    at_ms INTEGER NOT NULL,
    step TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    service TEXT PRIMARY KEY,
    deploy INTEGER,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    service TEXT NOT NULL,
    node TEXT NOT NULL,
    json TEXT NOT NULL,
    warm_until_ms INTEGER,
    PRIMARY KEY (service, node)
);
CREATE TABLE IF NOT EXISTS migrations (
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    reversible INTEGER NOT NULL,
    deploy INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (service, version)
);
CREATE TABLE IF NOT EXISTS releases (
    service TEXT PRIMARY KEY,
    current TEXT,
    previous TEXT
);
";

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

impl Store {
    /// Opens (creating if needed) the store at `path` for `service`.
    pub fn open(path: &Path, service: &str) -> Result<Store> {
        let shown = path.display().to_string();
        let sql = |source| StoreError::Sql {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // SQLite would take an empty file for a new database and forget every instance that runs.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::NotAStore {
                path: shown,
                why: "it is empty (0 bytes)".into(),
            });
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    StoreError::NotAStore {
                        path: shown.clone(),
                        why: "it is not an SQLite database".into(),
                    }
                }
                e => sql(e),
            })?;
        // FULL: every journal entry is on disk (fsync'd) before the step it announces acts.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        conn.execute_batch(pauses::SCHEMA).map_err(sql)?;
        conn.execute_batch(canary::SCHEMA).map_err(sql)?;
        let has_phase: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('journal') WHERE name = 'phase'")
            .and_then(|mut st| st.exists([]))
            .map_err(sql)?;
        if !has_phase {
            conn.execute_batch(
                "ALTER TABLE journal ADD COLUMN idx INTEGER;
                 ALTER TABLE journal ADD COLUMN phase TEXT;
                 ALTER TABLE journal ADD COLUMN data TEXT;",
            )
            .map_err(sql)?;
        }
        Ok(Store {
            conn,
            path: shown,
            service: service.to_string(),
            journal_budget: std::cell::Cell::new(None),
        })
    }

    /// Test hook: after `writes` more journal entries, every journal write fails as on a full disk.
    #[doc(hidden)]
    pub fn fail_journal_after(&self, writes: usize) {
        self.journal_budget.set(Some(writes));
    }

    fn spend_journal_budget(&self) -> Result<()> {
        match self.journal_budget.get() {
            Some(0) => Err(StoreError::Sql {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    Some("database or disk is full (injected)".into()),
                ),
            }),
            Some(n) => {
                self.journal_budget.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// One statement that returns no rows.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        self.conn
            .execute(sql, params)
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Takes the service's deploy lock. A lock left by a dead holder is taken over and its
    /// unfinished deployment returned, for the caller to recover before doing anything else.
    pub fn acquire(&mut self, holder: &Holder) -> Result<Option<Deployment>> {
        let service = self.service.clone();
        let path = self.path.clone();
        let sql = |source| StoreError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let existing: Option<(Option<i64>, String, i32, String, i64)> = tx
            .query_row(
                "SELECT deploy, holder, pid, host, started_ms FROM locks WHERE service = ?1",
                params![service],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(sql)?;
        if let Some((deploy, name, pid, host, started)) = &existing
            && (host != &holder.host || pid_alive(*pid))
        {
            return Err(StoreError::Locked {
                service,
                deploy: deploy.map_or("a deploy that is starting".into(), |d| {
                    format!("deploy #{d}")
                }),
                holder: name.clone(),
                started: format_ms(*started),
                pid: *pid,
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO locks (service, deploy, holder, pid, host, started_ms) VALUES (?1, NULL, ?2, ?3, ?4, ?5)",
            params![service, holder.name, holder.pid, holder.host, now_ms()],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(self.unfinished()?.filter(|d| d.pid != holder.pid))
    }

    pub fn release(&self) -> Result<()> {
        self.exec(
            "DELETE FROM locks WHERE service = ?1 AND pid = ?2",
            params![self.service, std::process::id() as i32],
        )
    }

    /// Records a new deployment (outcome `running`) and ties the lock to it.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        kind: &str,
        version: &Version,
        from: Option<&Version>,
        strategy: &str,
        holder: &Holder,
        snapshot: &str,
    ) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO deployments (service, kind, version, from_version, strategy, started_ms, outcome, holder, pid, host, snapshot)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8, ?9, ?10)",
                params![
                    self.service,
                    kind,
                    version.as_str(),
                    from.map(Version::as_str),
                    strategy,
                    now_ms(),
                    holder.name,
                    holder.pid,
                    holder.host,
                    snapshot
                ],
            )
            .map_err(|e| self.sql(e))?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .execute(
                "UPDATE locks SET deploy = ?1 WHERE service = ?2",
                params![id, self.service],
            )
            .map_err(|e| self.sql(e))?;
        Ok(id)
    }

    pub fn journal(&self, deploy: i64, step: &str, detail: &str) -> Result<()> {
        self.spend_journal_budget()?;
        self.exec(
            "INSERT INTO journal (deploy, at_ms, step, detail) VALUES (?1, ?2, ?3, ?4)",
            params![deploy, now_ms(), step, detail],
        )
    }

    /// One plan step's journal entry, on disk when this returns or with the next entry
    /// ([`Flush`]); either way in the OS's hands, so a killed process loses none of it.
    pub fn journal_step(&self, entry: &StepEntry<'_>, flush: Flush) -> Result<()> {
        self.spend_journal_budget()?;
        let insert = || {
            self.exec(
                "INSERT INTO journal (deploy, at_ms, step, detail, idx, phase, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.deploy,
                    now_ms(),
                    entry.step,
                    entry.detail,
                    entry.index,
                    entry.phase,
                    entry.data
                ],
            )
        };
        match flush {
            Flush::Now => insert(),
            Flush::WithNext => {
                // WAL + NORMAL: the commit is written, not fsync'd; the next FULL commit's fsync
                // of the WAL carries it, so what a power loss can take is a suffix of such entries.
                self.conn
                    .pragma_update(None, "synchronous", "NORMAL")
                    .map_err(|e| self.sql(e))?;
                let inserted = insert();
                self.conn
                    .pragma_update(None, "synchronous", "FULL")
                    .map_err(|e| self.sql(e))?;
                inserted
            }
        }
    }

    pub fn finish(&self, deploy: i64, outcome: Outcome, reason: Option<&str>) -> Result<()> {
        self.exec(
            "UPDATE deployments SET outcome = ?1, reason = ?2, finished_ms = ?3 WHERE id = ?4",
            params![outcome.as_str(), reason, now_ms(), deploy],
        )
    }

    fn read_deployment(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
        Ok(Deployment {
            id: r.get(0)?,
            service: r.get(1)?,
            kind: r.get(2)?,
            version: r.get(3)?,
            from_version: r.get(4)?,
            strategy: r.get(5)?,
            started_ms: r.get(6)?,
            finished_ms: r.get(7)?,
            outcome: Outcome::parse(&r.get::<_, String>(8)?),
            reason: r.get(9)?,
            holder: r.get(10)?,
            pid: r.get(11)?,
            snapshot: r.get(12)?,
        })
    }

    const COLUMNS: &str = "id, service, kind, version, from_version, strategy, started_ms, finished_ms, outcome, reason, holder, pid, snapshot";

    /// The newest deployments first.
    pub fn deployments(&self, limit: usize) -> Result<Vec<Deployment>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM deployments WHERE service = ?1 ORDER BY id DESC LIMIT ?2",
                Self::COLUMNS
            ))
            .map_err(|e| self.sql(e))?;
        stmt.query_map(params![self.service, limit as i64], Self::read_deployment)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))
    }

    pub fn deployment(&self, id: i64) -> Result<Option<Deployment>> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM deployments WHERE id = ?1", Self::COLUMNS),
                params![id],
                Self::read_deployment,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// The newest deployment still marked running, if any.
    pub fn unfinished(&self) -> Result<Option<Deployment>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {} FROM deployments WHERE service = ?1 AND outcome = 'running' ORDER BY id DESC LIMIT 1",
                    Self::COLUMNS
                ),
                params![self.service],
                Self::read_deployment,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    pub fn journal_of(&self, deploy: i64) -> Result<Vec<JournalEntry>> {
        let mut stmt = self
            .conn
            .prepare("SELECT at_ms, step, detail, idx, phase, data FROM journal WHERE deploy = ?1 ORDER BY id")
            .map_err(|e| self.sql(e))?;
        stmt.query_map(params![deploy], |r| {
            Ok(JournalEntry {
                at_ms: r.get(0)?,
                step: r.get(1)?,
                detail: r.get(2)?,
                index: r.get(3)?,
                phase: r.get(4)?,
                data: r.get(5)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sql(e))
    }

    pub fn instances(&self) -> Result<Vec<InstanceRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT json, warm_until_ms FROM instances WHERE service = ?1 ORDER BY node")
            .map_err(|e| self.sql(e))?;
        let rows: Vec<(String, Option<i64>)> = stmt
            .query_map(params![self.service], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(json, warm_until_ms)| {
                serde_json::from_str(&json)
                    .ok()
                    .map(|instance| InstanceRecord {
                        instance,
                        warm_until_ms,
                    })
            })
            .collect())
    }

    pub fn instance(&self, node: &NodeName) -> Result<Option<InstanceRecord>> {
        Ok(self
            .instances()?
            .into_iter()
            .find(|r| &r.instance.node == node))
    }

    pub fn put_instance(&self, instance: &Instance) -> Result<()> {
        let json = serde_json::to_string(instance).expect("an instance is plain data");
        self.exec(
            "INSERT OR REPLACE INTO instances (service, node, json, warm_until_ms) VALUES (?1, ?2, ?3, NULL)",
            params![self.service, instance.node.as_str(), json],
        )
    }

    pub fn remove_instance(&self, node: &NodeName) -> Result<()> {
        self.exec(
            "DELETE FROM instances WHERE service = ?1 AND node = ?2",
            params![self.service, node.as_str()],
        )
    }

    pub fn set_warm_until(&self, node: &NodeName, until_ms: Option<i64>) -> Result<()> {
        self.exec(
            "UPDATE instances SET warm_until_ms = ?1 WHERE service = ?2 AND node = ?3",
            params![until_ms, self.service, node.as_str()],
        )
    }

    /// Records that `version`'s database migration ran (in deploy `deploy`).
    pub fn record_migration(&self, version: &Version, reversible: bool, deploy: i64) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO migrations (service, version, reversible, deploy, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![self.service, version.as_str(), reversible, deploy, now_ms()],
        )
    }

    /// Whether `version` ran a migration, and whether it was reversible.
    pub fn migration(&self, version: &Version) -> Result<Option<(bool, i64)>> {
        self.conn
            .query_row(
                "SELECT reversible, at_ms FROM migrations WHERE service = ?1 AND version = ?2",
                params![self.service, version.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    pub fn forget_migration(&self, version: &Version) -> Result<()> {
        self.exec(
            "DELETE FROM migrations WHERE service = ?1 AND version = ?2",
            params![self.service, version.as_str()],
        )
    }

    /// The running release and the one before it.
    pub fn releases(&self) -> Result<(Option<Version>, Option<Version>)> {
        let row: Option<(Option<String>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT current, previous FROM releases WHERE service = ?1",
                params![self.service],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        let (current, previous) = row.unwrap_or_default();
        Ok((current.map(Version), previous.map(Version)))
    }

    pub fn set_releases(&self, current: &Version, previous: Option<&Version>) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO releases (service, current, previous) VALUES (?1, ?2, ?3)",
            params![
                self.service,
                current.as_str(),
                previous.map(Version::as_str)
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: i32) -> Holder {
        Holder {
            name: "ci@build".into(),
            pid,
            host: Holder::current().host,
        }
    }

    #[test]
    fn second_holder_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonstop.db");
        let mut first = Store::open(&path, "shop").unwrap();
        assert!(first.acquire(&Holder::current()).unwrap().is_none());
        let id = first
            .begin(
                "deploy",
                &Version::from("2"),
                None,
                "blue-green",
                &Holder::current(),
                "{}",
            )
            .unwrap();
        let mut second = Store::open(&path, "shop").unwrap();
        let err = second.acquire(&holder(1)).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }));
        let text = err.to_string();
        assert!(text.contains(&format!("deploy #{id}")), "{text}");
        assert!(text.contains("started by"), "{text}");
        first.finish(id, Outcome::Succeeded, None).unwrap();
        first.release().unwrap();
        assert!(second.acquire(&holder(1)).unwrap().is_none());
    }

    #[test]
    fn a_dead_holders_deploy_is_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonstop.db");
        let mut store = Store::open(&path, "shop").unwrap();
        // A pid that cannot be alive: beyond pid_max.
        let dead = holder(i32::MAX - 1);
        store.acquire(&dead).unwrap();
        let id = store
            .begin(
                "deploy",
                &Version::from("3"),
                Some(&Version::from("2")),
                "rolling",
                &dead,
                "{\"nodes\":[]}",
            )
            .unwrap();
        store.journal(id, "start", "green 3").unwrap();
        let stale = store
            .acquire(&Holder::current())
            .unwrap()
            .expect("stale deploy");
        assert_eq!(stale.id, id);
        assert_eq!(stale.snapshot, "{\"nodes\":[]}");
        assert_eq!(store.journal_of(id).unwrap()[0].step, "start");
        store
            .finish(id, Outcome::RolledBack, Some("recovered"))
            .unwrap();
        let history = store.deployments(10).unwrap();
        assert_eq!(history[0].outcome, Outcome::RolledBack);
        assert!(history[0].duration().is_some());
    }

    #[test]
    fn an_empty_or_foreign_store_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonstop.db");
        std::fs::write(&path, b"").unwrap();
        let err = Store::open(&path, "shop")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("nonstop.db") && err.contains("empty"), "{err}");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = Store::open(&path, "shop")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("not a nonstop store"), "{err}");
    }

    #[test]
    fn journal_writes_fail_when_told_to() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_a_deploy(dir.path());
        store.fail_journal_after(1);
        store
            .journal_step(&entry(id, 0, "begin", "start", "x", Some("{}")), Flush::Now)
            .unwrap();
        let err = store
            .journal_step(&entry(id, 1, "begin", "gate", "y", None), Flush::WithNext)
            .unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        let entries = store.journal_of(id).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].phase.as_deref(), Some("begin"));
        assert_eq!(entries[0].data.as_deref(), Some("{}"));
    }

    /// A store in `dir` with one deploy begun, and that deploy's id.
    fn store_with_a_deploy(dir: &std::path::Path) -> (Store, i64) {
        let store = Store::open(&dir.join("db"), "shop").unwrap();
        let id = store
            .begin(
                "deploy",
                &Version::from("2"),
                None,
                "blue-green",
                &Holder::current(),
                "{}",
            )
            .unwrap();
        (store, id)
    }

    fn entry<'a>(
        deploy: i64,
        index: i64,
        phase: &'a str,
        step: &'a str,
        detail: &'a str,
        data: Option<&'a str>,
    ) -> StepEntry<'a> {
        StepEntry {
            deploy,
            index,
            phase,
            step,
            detail,
            data,
        }
    }

    /// An entry not yet fsync'd is still the OS's (another process reads it at once: a kill of
    /// the writer loses nothing), and the connection is back to fsync-per-commit after it.
    #[test]
    fn an_entry_flushed_with_the_next_is_readable_at_once_and_the_next_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_a_deploy(dir.path());
        store
            .journal_step(
                &entry(id, 0, "done", "health", "passed", None),
                Flush::WithNext,
            )
            .unwrap();
        let synchronous: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL again after a WithNext entry");
        let other = Store::open(&dir.path().join("db"), "shop").unwrap();
        let entries = other.journal_of(id).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].detail, "passed");
    }

    #[test]
    fn instances_and_releases_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), "shop").unwrap();
        let instance = Instance {
            node: NodeName::from("blue"),
            version: Version::from("1"),
            port: 8081,
            pid: 42,
            start_ticks: 7,
            log: "/tmp/x.log".into(),
        };
        store.put_instance(&instance).unwrap();
        store.set_warm_until(&instance.node, Some(99)).unwrap();
        let got = store.instance(&instance.node).unwrap().unwrap();
        assert_eq!(got.instance, instance);
        assert_eq!(got.warm_until_ms, Some(99));
        store.remove_instance(&instance.node).unwrap();
        assert!(store.instances().unwrap().is_empty());
        store
            .set_releases(&Version::from("2"), Some(&Version::from("1")))
            .unwrap();
        assert_eq!(
            store.releases().unwrap(),
            (Some(Version::from("2")), Some(Version::from("1")))
        );
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }
}
