//! Users: names, password rules, Argon2id hashes (PHC strings) and the first-run admin.
//! A plaintext password or secret only lives in memory while it is hashed or verified.

use std::fmt;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rusqlite::{OptionalExtension, Row, params};

use crate::{Accounts, AccountsError, Result, Role, random_hex};

/// The name of the account `bootstrap_admin` creates.
pub const BOOTSTRAP_ADMIN: &str = "admin";

const MIN_PASSWORD_CHARS: usize = 12;
// Argon2 reads the whole input: a cap keeps a megabyte "password" from being a cheap DoS.
const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Logged in with a one-time secret: has to set a password before anything else.
    pub must_change_password: bool,
    /// Has no confirmed TOTP yet: has to enrol before anything else.
    pub must_enrol_totp: bool,
}

impl User {
    /// Whether the account still has to set a password or enrol TOTP; until then `can` refuses
    /// every action, so a session of such a user is only good for finishing its setup.
    pub fn setup_pending(&self) -> bool {
        self.must_change_password || self.must_enrol_totp
    }
}

/// The one-time secret of the first admin, for the caller to print once.
pub struct BootstrapSecret {
    user: String,
    secret: String,
}

impl BootstrapSecret {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for BootstrapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapSecret")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// User (and token) names: `[a-z0-9_.-]{1,64}`.
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AccountsError::BadName(name.to_string()))
    }
}

/// Long passwords everyone tries first; compared in lower case.
const DENIED: &[&str] = &[
    "password1234",
    "password12345",
    "password123456",
    "passwordpassword",
    "123456789012",
    "1234567890123",
    "12345678901234",
    "qwertyuiopas",
    "qwerty123456",
    "1q2w3e4r5t6y",
    "administrator",
    "administrator1",
    "adminadmin12",
    "changeme1234",
    "letmein12345",
    "iloveyou1234",
    "welcome12345",
    "nonstopnonstop",
    "correcthorsebatterystaple",
];

/// Fewer different characters than this is a pattern, not a password (`aaaaaaaaaaaa`).
const MIN_DISTINCT_CHARS: usize = 5;

fn check_password(name: &str, password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountsError::WeakPassword("use at least 12 characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountsError::WeakPassword("use at most 1024 bytes"));
    }
    let lower = password.to_lowercase();
    if lower == name.to_lowercase() {
        return Err(AccountsError::WeakPassword("it must not be the user name"));
    }
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_CHARS {
        return Err(AccountsError::WeakPassword(
            "use at least 5 different characters (a repeated pattern is easy to guess)",
        ));
    }
    if DENIED.contains(&lower.as_str()) {
        return Err(AccountsError::WeakPassword(
            "it is on the list of passwords guessed first; choose a passphrase of your own",
        ));
    }
    Ok(())
}

/// An Argon2id PHC string with the crate's default parameters and a random salt.
pub(crate) fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no account has this password").unwrap_or_default())
}

/// Whether `password` matches `hash`; `None` (no such user) and `""` (a spent secret) never
/// match but still cost one Argon2 run, so the time taken does not tell them from a wrong password.
pub(crate) fn password_matches(hash: Option<&str>, password: &str) -> bool {
    let usable = hash.filter(|h| !h.is_empty());
    let against = match usable {
        Some(hash) => hash,
        None => dummy_hash(),
    };
    let matched = Argon2::default()
        .verify_password(password.as_bytes(), against)
        .is_ok();
    matched && usable.is_some() && password.len() <= MAX_PASSWORD_BYTES
}

pub(crate) const USER_COLUMNS: &str = "name, role, must_change_password, totp_secret IS NULL";

pub(crate) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    user_from_row_at(row, 0)
}

/// A `User` from the `USER_COLUMNS` that start at column `first` (after others in a join).
pub(crate) fn user_from_row_at(row: &Row<'_>, first: usize) -> rusqlite::Result<User> {
    Ok(User {
        name: row.get(first)?,
        role: row.get(first + 1)?,
        must_change_password: row.get(first + 2)?,
        must_enrol_totp: row.get(first + 3)?,
    })
}

impl Accounts {
    /// A new user with `password`; they still have to enrol TOTP before they may act.
    pub fn create_user(&self, name: &str, password: &str, role: Role) -> Result<User> {
        check_user_name(name)?;
        check_password(name, password)?;
        let hash = hash_password(password)?;
        let inserted = self.db.execute(
            "INSERT INTO users (name, password_hash, role) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO NOTHING",
            params![name, hash, role],
        )?;
        if inserted == 0 {
            return Err(AccountsError::UserExists(name.to_string()));
        }
        self.existing_user(name)
    }

    pub fn user(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .db
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"),
                params![name],
                user_from_row,
            )
            .optional()?)
    }

    pub(crate) fn existing_user(&self, name: &str) -> Result<User> {
        self.user(name)?
            .ok_or_else(|| AccountsError::NoSuchUser(name.to_string()))
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let mut stmt = self
            .db
            .prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))?;
        let users = stmt
            .query_map([], user_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(users)
    }

    /// Replaces the password (and a pending one-time secret). Sessions are left alone: revoke
    /// them with `revoke_user_sessions` when the change is about a leaked password.
    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        check_password(name, password)?;
        let hash = hash_password(password)?;
        let changed = self.db.execute(
            "UPDATE users SET password_hash = ?2, must_change_password = 0, bootstrap = 0
             WHERE name = ?1",
            params![name, hash],
        )?;
        if changed == 0 {
            return Err(AccountsError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }

    /// Whether the first run's one-time secret can still be used (an admin created by
    /// `bootstrap_admin` that has not logged in with it yet). Once it cannot, the setup route is gone.
    pub fn setup_open(&self) -> Result<bool> {
        Ok(self.db.query_row(
            "SELECT EXISTS (SELECT 1 FROM users WHERE bootstrap = 1 AND password_hash != '')",
            [],
            |r| r.get(0),
        )?)
    }

    /// Checks a password without counting failures (tools and tests). Anything a client can
    /// repeat, logins and password changes, goes through `begin_login` / `finish_login`, which
    /// count failures and lock.
    pub fn verify_password(&self, name: &str, password: &str) -> Result<bool> {
        let hash: Option<String> = self
            .db
            .query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        Ok(password_matches(hash.as_deref(), password))
    }

    /// Changes the account's role: `Admin` is global; for the others it caps their grants.
    pub fn set_role(&self, name: &str, role: Role) -> Result<()> {
        let changed = self.db.execute(
            "UPDATE users SET role = ?2 WHERE name = ?1",
            params![name, role],
        )?;
        if changed == 0 {
            return Err(AccountsError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }

    /// Deletes the user with their sessions, grants and tokens (the audit log keeps their name).
    pub fn delete_user(&self, name: &str) -> Result<bool> {
        Ok(self
            .db
            .execute("DELETE FROM users WHERE name = ?1", params![name])?
            > 0)
    }

    /// On a store without users, creates the admin account `admin` and returns its one-time
    /// secret: it logs in once with it, then has to set a password and enrol TOTP. While that
    /// admin has not set a password and is the only user, each call replaces the secret (a lost
    /// one is replaced by restarting the console); otherwise returns `None`.
    pub fn bootstrap_admin(&self) -> Result<Option<BootstrapSecret>> {
        let secret = random_hex::<16>()?;
        let hash = hash_password(&secret)?;
        // Write-locked from the count on: two consoles starting at once must not both create one.
        let tx = self.write_tx()?;
        let (users, pending): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bootstrap), 0) FROM users",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        match (users, pending) {
            (0, _) => {
                tx.execute(
                    "INSERT INTO users (name, password_hash, role, must_change_password, bootstrap)
                     VALUES (?1, ?2, 'admin', 1, 1)",
                    params![BOOTSTRAP_ADMIN, hash],
                )?;
            }
            (1, 1) => {
                tx.execute(
                    "UPDATE users SET password_hash = ?2 WHERE name = ?1 AND bootstrap = 1",
                    params![BOOTSTRAP_ADMIN, hash],
                )?;
            }
            _ => return Ok(None),
        }
        tx.commit()?;
        Ok(Some(BootstrapSecret {
            user: BOOTSTRAP_ADMIN.to_string(),
            secret,
        }))
    }

    /// Spends a bootstrap secret at its first successful login.
    pub(crate) fn spend_bootstrap(&self, name: &str) -> Result<()> {
        self.db.execute(
            "UPDATE users SET password_hash = '' WHERE name = ?1 AND bootstrap = 1",
            params![name],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn names_follow_the_rule() {
        for good in ["alice", "a", "ci_bot.2-x", &"a".repeat(64)] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Alice", "al ice", "al:ice", "élise", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
        let f = fixture();
        assert!(matches!(
            f.create_user("Bob", PASSWORD, Role::Viewer),
            Err(AccountsError::BadName(_))
        ));
    }

    #[test]
    fn password_rules() {
        let f = fixture();
        assert!(matches!(
            f.create_user("alice", "short", Role::Viewer),
            Err(AccountsError::WeakPassword(_))
        ));
        // 11 characters, even though more than 12 bytes.
        assert!(matches!(
            f.create_user("alice", "ééééééééééé", Role::Viewer),
            Err(AccountsError::WeakPassword(_))
        ));
        assert!(matches!(
            f.create_user("verylongname", "VeryLongName", Role::Viewer),
            Err(AccountsError::WeakPassword(_))
        ));
        assert!(matches!(
            f.create_user("alice", &"xy".repeat(600), Role::Viewer),
            Err(AccountsError::WeakPassword(_))
        ));
        // Long enough but a pattern, a well-known one, or the name inside.
        for weak in [
            "aaaaaaaaaaaa",
            "abababababababab",
            "abcabcabcabc",
            "Password1234",
            "QWERTY123456",
        ] {
            assert!(
                matches!(
                    f.create_user("alice", weak, Role::Viewer),
                    Err(AccountsError::WeakPassword(_))
                ),
                "{weak}"
            );
        }
        assert!(f.user("alice").unwrap().is_none());
        f.create_user("alice", PASSWORD, Role::Viewer).unwrap();
        assert!(matches!(
            f.set_password("alice", "alice"),
            Err(AccountsError::WeakPassword(_))
        ));
    }

    #[test]
    fn passwords_are_stored_as_argon2id_only() {
        let f = fixture();
        let user = f.create_user("alice", PASSWORD, Role::Deployer).unwrap();
        assert_eq!(
            user,
            User {
                name: "alice".into(),
                role: Role::Deployer,
                must_change_password: false,
                must_enrol_totp: true,
            }
        );
        let hash: String =
            f.db.query_row("SELECT password_hash FROM users", [], |r| r.get(0))
                .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(!hash.contains(PASSWORD));
        assert!(f.verify_password("alice", PASSWORD).unwrap());
        assert!(
            !f.verify_password("alice", "correct horse battery!")
                .unwrap()
        );
        assert!(!f.verify_password("nobody", PASSWORD).unwrap());
        assert!(matches!(
            f.create_user("alice", PASSWORD, Role::Viewer),
            Err(AccountsError::UserExists(_))
        ));
    }

    #[test]
    fn set_password_replaces_the_old_one() {
        let f = fixture();
        f.create_user("alice", PASSWORD, Role::Viewer).unwrap();
        f.set_password("alice", "another long passphrase").unwrap();
        assert!(!f.verify_password("alice", PASSWORD).unwrap());
        assert!(
            f.verify_password("alice", "another long passphrase")
                .unwrap()
        );
        assert!(matches!(
            f.set_password("bob", "another long passphrase"),
            Err(AccountsError::NoSuchUser(_))
        ));
    }

    #[test]
    fn bootstrap_only_on_an_empty_store() {
        let f = fixture();
        let first = f.bootstrap_admin().unwrap().expect("empty store");
        assert_eq!(first.user(), BOOTSTRAP_ADMIN);
        assert!(!format!("{first:?}").contains(first.secret()));
        let admin = f.user(BOOTSTRAP_ADMIN).unwrap().unwrap();
        assert!(admin.must_change_password && admin.must_enrol_totp);
        assert_eq!(admin.role, Role::Admin);
        // Not set up yet and alone: a new secret replaces the first.
        let second = f.bootstrap_admin().unwrap().expect("admin still pending");
        assert_ne!(first.secret(), second.secret());
        assert!(!f.verify_password(BOOTSTRAP_ADMIN, first.secret()).unwrap());
        assert!(f.verify_password(BOOTSTRAP_ADMIN, second.secret()).unwrap());
        f.set_password(BOOTSTRAP_ADMIN, "the admin's own passphrase")
            .unwrap();
        assert!(f.bootstrap_admin().unwrap().is_none());
        assert!(!f.verify_password(BOOTSTRAP_ADMIN, second.secret()).unwrap());

        let other = fixture();
        other.create_user("alice", PASSWORD, Role::Viewer).unwrap();
        assert!(other.bootstrap_admin().unwrap().is_none());
        assert!(other.user(BOOTSTRAP_ADMIN).unwrap().is_none());
    }

    #[test]
    fn delete_user_takes_grants_sessions_and_tokens_along() {
        let f = fixture();
        ready_user(&f, "alice", Role::Deployer);
        f.grant("alice", "shop", Role::Deployer).unwrap();
        let session = f.create_session("alice", "10.0.0.1", T0).unwrap();
        let token = f
            .create_token("alice", "ci", &["shop".into()], T0 + 3_600_000, T0)
            .unwrap();
        assert!(f.delete_user("alice").unwrap());
        assert!(f.session_user(session.token(), T0).unwrap().is_none());
        assert!(f.token_identity(token.plaintext(), T0).unwrap().is_none());
        assert!(f.grants("alice").unwrap().is_empty());
        assert!(!f.delete_user("alice").unwrap());
    }
}
