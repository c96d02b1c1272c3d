//! The web console's accounts in one SQLite file: users with Argon2id passwords and TOTP, login
//! lockout, sessions with CSRF tokens, roles per service, CI tokens and an append-only audit log.

mod audit;
mod login;
mod qr;
mod roles;
mod sessions;
mod tokens;
mod totp;
mod users;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

pub use audit::{AuditEntry, AuditFilter, AuditRecord, csv_cell, escape_text};
pub use login::{LoginOutcome, LoginStart, PEER_LOCK_AT, PEER_USER_LOCK_AT, PendingLogin};
pub use roles::{Action, Role};
pub use sessions::{NewSession, Session};
pub use tokens::{NewToken, TokenIdentity, TokenInfo};
pub use totp::TotpEnrolment;
pub use users::{BOOTSTRAP_ADMIN, BootstrapSecret, User, check_user_name};

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("accounts store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("`{0}` is not a valid name: use 1 to 64 of a-z, 0-9, `_`, `.` and `-`")]
    BadName(String),
    #[error("`{0}` is not a valid service name: use 1 to 128 of letters, digits, `_`, `.` and `-`")]
    BadService(String),
    #[error("password refused: {0}")]
    WeakPassword(&'static str),
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("no user `{0}`")]
    NoSuchUser(String),
    #[error("user `{0}` has no TOTP enrolment in progress; begin one first")]
    NoTotpEnrolment(String),
    #[error("the TOTP code is not valid (wrong, expired or already used)")]
    WrongTotp,
    #[error(
        "admin is a global role: create or set the user as admin instead of granting it per service"
    )]
    AdminIsGlobal,
    #[error("user `{user}` is a {role}: a {granted} grant would be above it")]
    GrantAboveRole {
        user: String,
        role: Role,
        granted: Role,
    },
    #[error("user `{owner}` already has a token named `{name}`")]
    TokenExists { owner: String, name: String },
    #[error("a token needs at least one service")]
    NoServices,
    #[error("the token would already be expired")]
    AlreadyExpired,
    #[error("no randomness from the OS: {0}")]
    Random(String),
    #[error("password hashing: {0}")]
    Hash(String),
    #[error("TOTP: {0}")]
    Totp(String),
    #[error("accounts file: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit export: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, AccountsError>;

/// How long sessions live.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A session unused for this long is over.
    pub session_idle_ms: i64,
    /// A session is over this long after login, used or not.
    pub session_lifetime_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            session_idle_ms: 30 * 60_000,
            session_lifetime_ms: 12 * 3_600_000,
        }
    }
}

/// The account store. Every method that depends on time takes `now_ms` (unix milliseconds) so
/// that tests and callers decide what "now" is.
pub struct Accounts {
    db: Connection,
    policy: Policy,
}

/// Each entry brings the schema from version `index` to `index + 1`; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    -- PHC string (Argon2id); '' once a bootstrap secret is spent: no password matches it.
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
    must_change_password INTEGER NOT NULL DEFAULT 0,
    bootstrap INTEGER NOT NULL DEFAULT 0,
    totp_secret TEXT,
    totp_pending TEXT,
    totp_last_step INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE login_failures (
    kind TEXT NOT NULL CHECK (kind IN ('user', 'peer')),
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE TABLE sessions (
    hash BLOB PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    peer TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions(user);
CREATE TABLE grants (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    service TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('deployer', 'viewer')),
    PRIMARY KEY (user, service)
);
CREATE TABLE api_tokens (
    hash BLOB PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    services TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    last_used_ms INTEGER,
    UNIQUE (owner, name)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    peer TEXT NOT NULL,
    action TEXT NOT NULL,
    service TEXT,
    node TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at_ms);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
",
    "
DROP TABLE login_failures;
CREATE TABLE login_failures (
    kind TEXT NOT NULL CHECK (kind IN ('peer', 'peer_user')),
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
",
];

impl Accounts {
    /// Opens (creating and migrating if needed) the account store at `path`.
    pub fn open(path: &Path) -> Result<Accounts> {
        Accounts::open_with(path, Policy::default())
    }

    pub fn open_with(path: &Path, policy: Policy) -> Result<Accounts> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        private_file(path)?;
        let mut db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut db)?;
        Ok(Accounts { db, policy })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A transaction that takes the write lock at once, so what it reads cannot change under it.
    fn write_tx(&self) -> Result<rusqlite::Transaction<'_>> {
        Ok(rusqlite::Transaction::new_unchecked(
            &self.db,
            rusqlite::TransactionBehavior::Immediate,
        )?)
    }
}

fn migrate(db: &mut Connection) -> Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (index, step) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if target <= version {
            continue;
        }
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", target)?;
    }
    tx.commit()?;
    Ok(())
}

/// Creates `path` empty with mode 0600, or narrows an existing one to 0600: it holds password
/// hashes and TOTP secrets. SQLite gives its -wal and -shm files the same mode.
fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The current time in unix milliseconds, for callers that have no clock of their own.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `N` bytes from the OS's CSPRNG, hex-encoded.
fn random_hex<const N: usize>() -> Result<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| AccountsError::Random(e.to_string()))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Service names as the config knows them; checked so that a typo cannot create a grant that
/// silently matches nothing.
fn check_service(service: &str) -> Result<()> {
    let ok = !service.is_empty()
        && service.len() <= 128
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AccountsError::BadService(service.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct Fixture {
        pub accounts: Accounts,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Fixture {
        type Target = Accounts;
        fn deref(&self) -> &Accounts {
            &self.accounts
        }
    }

    pub fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::open(&dir.path().join("accounts.db")).unwrap();
        Fixture {
            accounts,
            _dir: dir,
        }
    }

    /// A fixed "now" well inside a 30 s TOTP step.
    pub const T0: i64 = 1_700_000_010_000;

    /// The code an authenticator app would show for `secret_base32` at `now_ms`.
    pub fn code(secret_base32: &str, now_ms: i64) -> String {
        let secret = totp_rs::Secret::try_from_base32(secret_base32).unwrap();
        let totp = totp_rs::Builder::new().with_secret(secret).build().unwrap();
        totp.generate((now_ms / 1000) as u64).to_string()
    }

    pub const PASSWORD: &str = "correct horse battery";

    /// A user who has set a password and enrolled TOTP (a minute before `T0`, so a code for `T0`
    /// is still unused); returns the TOTP secret.
    pub fn ready_user(accounts: &Accounts, name: &str, role: Role) -> String {
        accounts.create_user(name, PASSWORD, role).unwrap();
        let enrolment = accounts.begin_totp_enrolment(name).unwrap();
        let earlier = T0 - 60_000;
        accounts
            .confirm_totp(name, &code(&enrolment.secret_base32, earlier), earlier)
            .unwrap();
        enrolment.secret_base32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn reopening_keeps_the_data_and_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("accounts.db");
        {
            let accounts = Accounts::open(&path).unwrap();
            accounts
                .create_user("alice", PASSWORD, Role::Viewer)
                .unwrap();
        }
        let accounts = Accounts::open(&path).unwrap();
        assert!(accounts.user("alice").unwrap().is_some());
        let version: i64 = accounts
            .db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn the_store_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let accounts = Accounts::open(&path).unwrap();
        accounts
            .create_user("alice", PASSWORD, Role::Viewer)
            .unwrap();
        for file in ["accounts.db", "accounts.db-wal", "accounts.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
        }
    }

    #[test]
    fn random_hex_is_hex_of_the_right_length_and_differs() {
        let a = random_hex::<16>().unwrap();
        let b = random_hex::<16>().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }
}
