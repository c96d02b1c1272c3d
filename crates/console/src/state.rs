//! The console's shared state: options, the account store, the CA and join tokens, the deploy
//! jobs; SQLite handles sit behind mutexes and are only touched on blocking threads.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nonstop_accounts::{Accounts, AuditEntry};
use nonstop_pki::{Authority, JoinTokens};

use crate::auth::Caller;
use crate::deploys::Jobs;
use crate::drivers::Drivers;
use crate::error::{ApiError, ApiResult};

/// How the console was started.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// The nonstop.toml with the services.
    pub config: PathBuf,
    pub listen: std::net::SocketAddr,
    /// Accounts, CA, join tokens and uploads live here.
    pub state: PathBuf,
    /// Artifacts the deploy form may pick by name; `None` allows only uploads.
    pub artifacts: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// The largest artifact upload, in bytes.
    pub upload_limit: usize,
}

impl ConsoleOptions {
    pub const DEFAULT_UPLOAD_LIMIT: usize = 512 * 1024 * 1024;
}

/// Shared by every request.
#[derive(Clone)]
pub struct App {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub options: ConsoleOptions,
    pub accounts: Arc<Mutex<Accounts>>,
    pub authority: Authority,
    pub join_tokens: Mutex<JoinTokens>,
    pub jobs: Jobs,
    pub drivers: Drivers,
    /// Counts every change that went through (a logout, a revoked grant, a deleted user…):
    /// open streams re-check their authority when it moves.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// How many refused credentials are still written to the audit log this minute.
    pub refusals: Mutex<crate::refusals::Refusals>,
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// A record for the audit log, owned so it can cross to a blocking thread.
#[derive(Debug, Clone, Default)]
pub struct AuditRecordOwned {
    pub actor: String,
    pub peer: String,
    pub action: String,
    pub service: Option<String>,
    pub node: Option<String>,
    pub outcome: String,
    pub detail: String,
}

impl App {
    /// Runs `f` on the account store on a blocking thread.
    pub async fn accounts<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Accounts) -> nonstop_accounts::Result<T> + Send + 'static,
    {
        let accounts = self.accounts.clone();
        tokio::task::spawn_blocking(move || {
            let guard = accounts
                .lock()
                .map_err(|_| ApiError::internal("the account store is unusable after a crash"))?;
            f(&guard).map_err(ApiError::from)
        })
        .await
        .map_err(|e| ApiError::internal(format!("account store task: {e}")))?
    }

    /// Appends to the audit log; a failure to do so is logged loudly, never hidden.
    pub async fn audit(&self, record: AuditRecordOwned) {
        let accounts = self.accounts.clone();
        let _ = tokio::task::spawn_blocking(move || write_audit(&accounts, &record)).await;
    }

    /// Tells open streams that something changed that may end their authority.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The audit record of `caller` doing `action`.
    pub fn record(&self, caller: &Caller, action: &str) -> AuditRecordOwned {
        AuditRecordOwned {
            actor: caller.actor.clone(),
            peer: caller.peer.clone(),
            action: action.to_string(),
            ..Default::default()
        }
    }
}

/// Writes one audit record (from any thread).
pub fn write_audit(accounts: &Mutex<Accounts>, r: &AuditRecordOwned) {
    let entry = AuditEntry {
        actor: &r.actor,
        peer: &r.peer,
        action: &r.action,
        service: r.service.as_deref(),
        node: r.node.as_deref(),
        outcome: &r.outcome,
        detail: &r.detail,
    };
    let result = match accounts.lock() {
        Ok(accounts) => accounts
            .audit(&entry, nonstop_accounts::now_ms())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(_) => Err("the account store is unusable after a crash".into()),
    };
    if let Err(e) = result {
        tracing::error!(?r, "cannot write the audit log: {e}");
    }
}
