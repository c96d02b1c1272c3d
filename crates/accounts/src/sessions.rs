//! Console sessions: a random 256-bit token of which only the SHA-256 is stored, an idle timeout
//! and an absolute lifetime, and a random CSRF token per session checked in constant time.

use std::fmt;

use rusqlite::{OptionalExtension, params};
use subtle::ConstantTimeEq;

use crate::users::{USER_COLUMNS, user_from_row_at};
use crate::{Accounts, Result, User, digest, random_hex};

/// A session just created: the token goes into the cookie and is not kept anywhere else.
pub struct NewSession {
    token: String,
    pub csrf: String,
    /// When the session ends at the latest, used or not.
    pub expires_ms: i64,
}

impl NewSession {
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for NewSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSession")
            .field("token", &"<redacted>")
            .field("csrf", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// A live session, as found from its token.
pub struct Session {
    pub user: User,
    /// The peer that logged in (the current request may come from another one).
    pub peer: String,
    pub csrf: String,
    pub created_ms: i64,
    /// The end of its lifetime; an idle timeout may end it before.
    pub expires_ms: i64,
}

impl Session {
    /// Whether `presented` (from a form field or header) is this session's CSRF token.
    pub fn check_csrf(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("peer", &self.peer)
            .field("csrf", &"<redacted>")
            .field("created_ms", &self.created_ms)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

impl Accounts {
    /// A new session for `user` (after `verify_login` said `Ok`).
    pub fn create_session(&self, user: &str, peer: &str, now_ms: i64) -> Result<NewSession> {
        self.existing_user(user)?;
        let token = random_hex::<32>()?;
        let csrf = random_hex::<32>()?;
        self.db.execute(
            "INSERT INTO sessions (hash, user, peer, csrf, created_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![digest(&token), user, peer, csrf, now_ms],
        )?;
        Ok(NewSession {
            token,
            csrf,
            expires_ms: now_ms + self.policy.session_lifetime_ms,
        })
    }

    /// The session of `token` if it is live at `now_ms`; using it resets its idle timer.
    /// Unknown, revoked, idle and expired tokens all give `None`.
    pub fn session_user(&self, token: &str, now_ms: i64) -> Result<Option<Session>> {
        let hash = digest(token);
        let columns = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let found = self
            .db
            .query_row(
                &format!(
                    "SELECT s.peer, s.csrf, s.created_ms, s.last_seen_ms, {columns}
                     FROM sessions s JOIN users u ON u.name = s.user WHERE s.hash = ?1"
                ),
                params![hash],
                |r| {
                    let user = user_from_row_at(r, 4)?;
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        user,
                    ))
                },
            )
            .optional()?;
        let Some((peer, csrf, created_ms, last_seen_ms, user)) = found else {
            return Ok(None);
        };
        let (created_ms, last_seen_ms): (i64, i64) = (created_ms, last_seen_ms);
        let expires_ms = created_ms + self.policy.session_lifetime_ms;
        if now_ms >= expires_ms || now_ms >= last_seen_ms + self.policy.session_idle_ms {
            self.db
                .execute("DELETE FROM sessions WHERE hash = ?1", params![hash])?;
            return Ok(None);
        }
        self.db.execute(
            "UPDATE sessions SET last_seen_ms = MAX(last_seen_ms, ?2) WHERE hash = ?1",
            params![hash, now_ms],
        )?;
        Ok(Some(Session {
            user,
            peer,
            csrf,
            created_ms,
            expires_ms,
        }))
    }

    /// Ends the session of `token` (logout); false if there was none.
    pub fn revoke_session(&self, token: &str) -> Result<bool> {
        Ok(self.db.execute(
            "DELETE FROM sessions WHERE hash = ?1",
            params![digest(token)],
        )? > 0)
    }

    /// Ends every session of `user`; returns how many there were.
    pub fn revoke_user_sessions(&self, user: &str) -> Result<usize> {
        Ok(self
            .db
            .execute("DELETE FROM sessions WHERE user = ?1", params![user])?)
    }

    /// Ends every session of `user` but the one of `keep` (after a password change).
    pub fn revoke_other_sessions(&self, user: &str, keep: &str) -> Result<usize> {
        Ok(self.db.execute(
            "DELETE FROM sessions WHERE user = ?1 AND hash != ?2",
            params![user, digest(keep)],
        )?)
    }

    /// Deletes sessions and API tokens that are over at `now_ms` (they are refused anyway).
    pub fn prune_expired(&self, now_ms: i64) -> Result<usize> {
        let sessions = self.db.execute(
            "DELETE FROM sessions WHERE created_ms + ?2 <= ?1 OR last_seen_ms + ?3 <= ?1",
            params![
                now_ms,
                self.policy.session_lifetime_ms,
                self.policy.session_idle_ms
            ],
        )?;
        let tokens = self.db.execute(
            "DELETE FROM api_tokens WHERE expires_ms <= ?1",
            params![now_ms],
        )?;
        Ok(sessions + tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::{Policy, Role};

    const MIN: i64 = 60_000;

    #[test]
    fn a_session_is_found_by_its_token_only() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let new = f.create_session("alice", "10.0.0.1", T0).unwrap();
        assert_eq!(new.token().len(), 64);
        assert_eq!(new.expires_ms, T0 + f.policy().session_lifetime_ms);
        assert!(!format!("{new:?}").contains(new.token()));
        assert!(!format!("{new:?}").contains(&new.csrf));
        let stored: Vec<u8> =
            f.db.query_row("SELECT hash FROM sessions", [], |r| r.get(0))
                .unwrap();
        assert_eq!(stored, digest(new.token()));

        let session = f.session_user(new.token(), T0 + 1).unwrap().unwrap();
        assert_eq!(session.user.name, "alice");
        assert_eq!(session.peer, "10.0.0.1");
        assert_eq!(session.created_ms, T0);
        assert_eq!(session.csrf, new.csrf);
        assert!(f.session_user(&new.csrf, T0 + 1).unwrap().is_none());
        assert!(f.session_user("", T0 + 1).unwrap().is_none());
        assert!(matches!(
            f.create_session("ghost", "10.0.0.1", T0),
            Err(crate::AccountsError::NoSuchUser(_))
        ));
    }

    #[test]
    fn csrf_must_match_exactly() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let a = f.create_session("alice", "p", T0).unwrap();
        let b = f.create_session("alice", "p", T0).unwrap();
        assert_ne!(a.csrf, b.csrf);
        let session = f.session_user(a.token(), T0).unwrap().unwrap();
        assert!(session.check_csrf(&a.csrf));
        assert!(!session.check_csrf(&b.csrf));
        assert!(!session.check_csrf(""));
        assert!(!session.check_csrf(&a.csrf[..63]));
        assert!(!session.check_csrf(&format!("{}0", a.csrf)));
        assert!(!session.check_csrf(&a.csrf.to_uppercase()));
    }

    #[test]
    fn idle_sessions_expire_and_use_keeps_them_alive() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let new = f.create_session("alice", "p", T0).unwrap();
        // Used every 29 minutes: stays alive well past one idle timeout.
        let mut now = T0;
        for _ in 0..4 {
            now += 29 * MIN;
            assert!(
                f.session_user(new.token(), now).unwrap().is_some(),
                "at {now}"
            );
        }
        now += 30 * MIN;
        assert!(f.session_user(new.token(), now).unwrap().is_none());
        // Gone for good: an earlier clock does not bring it back.
        assert!(
            f.session_user(new.token(), now - 30 * MIN)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn sessions_end_at_their_lifetime_even_when_used() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let new = f.create_session("alice", "p", T0).unwrap();
        let lifetime = f.policy().session_lifetime_ms;
        let mut now = T0;
        while now + 20 * MIN < T0 + lifetime {
            now += 20 * MIN;
            assert!(
                f.session_user(new.token(), now).unwrap().is_some(),
                "at {now}"
            );
        }
        assert!(
            f.session_user(new.token(), T0 + lifetime - 1)
                .unwrap()
                .is_some()
        );
        assert!(
            f.session_user(new.token(), T0 + lifetime)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_policy_sets_the_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            session_idle_ms: MIN,
            session_lifetime_ms: 3 * MIN,
        };
        let accounts = Accounts::open_with(&dir.path().join("a.db"), policy).unwrap();
        ready_user(&accounts, "alice", Role::Viewer);
        let idle = accounts.create_session("alice", "p", T0).unwrap();
        assert!(
            accounts
                .session_user(idle.token(), T0 + MIN - 1)
                .unwrap()
                .is_some()
        );
        assert!(
            accounts
                .session_user(idle.token(), T0 + 2 * MIN)
                .unwrap()
                .is_none()
        );
        let busy = accounts.create_session("alice", "p", T0).unwrap();
        assert_eq!(busy.expires_ms, T0 + 3 * MIN);
        for at in [T0 + 50_000, T0 + 100_000, T0 + 150_000] {
            assert!(accounts.session_user(busy.token(), at).unwrap().is_some());
        }
        assert!(
            accounts
                .session_user(busy.token(), T0 + 3 * MIN)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn logout_and_revocation() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        ready_user(&f, "bob", Role::Viewer);
        let a1 = f.create_session("alice", "p", T0).unwrap();
        let a2 = f.create_session("alice", "p", T0).unwrap();
        let b = f.create_session("bob", "p", T0).unwrap();
        assert!(f.revoke_session(a1.token()).unwrap());
        assert!(!f.revoke_session(a1.token()).unwrap());
        assert!(f.session_user(a1.token(), T0).unwrap().is_none());
        assert!(f.session_user(a2.token(), T0).unwrap().is_some());
        let a3 = f.create_session("alice", "p", T0).unwrap();
        assert_eq!(f.revoke_user_sessions("alice").unwrap(), 2);
        assert!(f.session_user(a2.token(), T0).unwrap().is_none());
        assert!(f.session_user(a3.token(), T0).unwrap().is_none());
        assert!(f.session_user(b.token(), T0).unwrap().is_some());
        let a4 = f.create_session("alice", "p", T0).unwrap();
        let a5 = f.create_session("alice", "p", T0).unwrap();
        assert_eq!(f.revoke_other_sessions("alice", a5.token()).unwrap(), 1);
        assert!(f.session_user(a4.token(), T0).unwrap().is_none());
        assert!(f.session_user(a5.token(), T0).unwrap().is_some());
    }

    #[test]
    fn prune_removes_only_what_is_over() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let old = f.create_session("alice", "p", T0).unwrap();
        let fresh = f.create_session("alice", "p", T0 + 20 * MIN).unwrap();
        assert_eq!(f.prune_expired(T0 + 30 * MIN).unwrap(), 1);
        let left: i64 =
            f.db.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
                .unwrap();
        assert_eq!(left, 1);
        assert!(
            f.session_user(fresh.token(), T0 + 30 * MIN)
                .unwrap()
                .is_some()
        );
        assert!(
            f.session_user(old.token(), T0 + 29 * MIN)
                .unwrap()
                .is_none()
        );
    }
}
