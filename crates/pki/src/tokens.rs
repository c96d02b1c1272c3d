//! One-time join tokens: the console prints one per agent to enrol; it is stored only as a
//! SHA-256, names the agent it is for, expires, and is spent by its first use.

use std::path::Path;

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use crate::{PkiError, check_agent_name};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Unknown, already used or expired: deliberately one answer for all three.
    #[error("the join token is not valid (unknown, already used or expired); ask for a new one")]
    Invalid,
    #[error("token store: {0}")]
    Store(String),
}

impl From<rusqlite::Error> for TokenError {
    fn from(e: rusqlite::Error) -> Self {
        TokenError::Store(e.to_string())
    }
}

pub struct JoinTokens {
    db: Connection,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl JoinTokens {
    /// Opens the store at `path`, mode 0600 (a token's hash is as good as a guess check).
    pub fn open(path: &Path) -> Result<JoinTokens, TokenError> {
        private_file(path).map_err(|e| TokenError::Store(format!("{}: {e}", path.display())))?;
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS join_tokens (
                 hash BLOB PRIMARY KEY,
                 agent TEXT NOT NULL,
                 expires_ms INTEGER NOT NULL,
                 used_ms INTEGER
             );",
        )?;
        Ok(JoinTokens { db })
    }

    /// A new token for `agent`, valid until `expires_ms`; the plaintext is returned only here.
    pub fn issue(&self, agent: &str, expires_ms: i64) -> Result<String, PkiError> {
        check_agent_name(agent)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| PkiError::Tls(format!("no randomness: {e}")))?;
        let token = format!(
            "nsj_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        self.db
            .execute(
                "INSERT INTO join_tokens (hash, agent, expires_ms) VALUES (?1, ?2, ?3)",
                params![digest(&token), agent, expires_ms],
            )
            .map_err(|e| PkiError::Tls(format!("token store: {e}")))?;
        Ok(token)
    }

    /// Spends `token` at `now_ms`: returns the agent it was issued for, once.
    pub fn redeem(&self, token: &str, now_ms: i64) -> Result<String, TokenError> {
        // One statement, so two agents racing with the same token cannot both win.
        let agent: Option<String> = self
            .db
            .query_row(
                "UPDATE join_tokens SET used_ms = ?2
                 WHERE hash = ?1 AND used_ms IS NULL AND expires_ms > ?2
                 RETURNING agent",
                params![digest(token), now_ms],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        agent.ok_or(TokenError::Invalid)
    }
}
