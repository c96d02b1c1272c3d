//! Logins: password, then TOTP, with a doubling lock after repeated failures per user name and
//! per peer address. No outcome tells an unknown user from a wrong password.

use rusqlite::{OptionalExtension, params};

use crate::users::password_matches;
use crate::{Accounts, Result, User, check_user_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Both factors are right, or the user has not enrolled TOTP yet (then `User::setup_pending`
    /// is true and the session is only good for finishing the setup).
    Ok(User),
    /// Unknown user, wrong password, wrong or replayed TOTP code: one answer for all.
    WrongCredentials,
    /// The password is right and the user has TOTP: ask for the code and try again with it.
    TotpRequired,
    /// Too many failures for this user name or from this peer; nothing is checked until `until_ms`.
    Locked { until_ms: i64 },
}

/// The failure that locks: the 5th in a row.
const LOCK_AT: i64 = 5;
const FIRST_LOCK_MS: i64 = 60_000;
const MAX_LOCK_MS: i64 = 3_600_000;

/// How long the `failures`-th consecutive failure locks: nothing before the 5th, then 1 min,
/// doubling with every further failure, up to 1 h.
pub fn lock_ms(failures: i64) -> i64 {
    if failures < LOCK_AT {
        return 0;
    }
    let doublings = (failures - LOCK_AT).min(6) as u32;
    (FIRST_LOCK_MS << doublings).min(MAX_LOCK_MS)
}

/// Keys of the failure counters: the user name (only if it could be one, so random junk does not
/// fill the table) and the peer, cut to a sane length.
fn keys<'a>(name: &'a str, peer: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut keys = vec![("peer", cut(peer, 256))];
    if check_user_name(name).is_ok() {
        keys.push(("user", name));
    }
    keys
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Accounts {
    /// Checks a login attempt by `name` from `peer` (an address as the caller sees it).
    /// `totp_code` may be `None` on the first form; `TotpRequired` then asks for it.
    pub fn verify_login(
        &self,
        name: &str,
        password: &str,
        totp_code: Option<&str>,
        peer: &str,
        now_ms: i64,
    ) -> Result<LoginOutcome> {
        let keys = keys(name, peer);
        if let Some(until_ms) = self.locked_until(&keys, now_ms)? {
            return Ok(LoginOutcome::Locked { until_ms });
        }
        let row: Option<(String, Option<String>, bool)> = self
            .db
            .query_row(
                "SELECT password_hash, totp_secret, bootstrap FROM users WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if !password_matches(row.as_ref().map(|r| r.0.as_str()), password) {
            return self.failed(&keys, now_ms);
        }
        let Some((_, totp_secret, bootstrap)) = row else {
            return self.failed(&keys, now_ms);
        };
        if let Some(secret) = totp_secret {
            let Some(code) = totp_code else {
                return Ok(LoginOutcome::TotpRequired);
            };
            if !self.spend_totp(name, &secret, code, now_ms)? {
                return self.failed(&keys, now_ms);
            }
        }
        if bootstrap {
            self.spend_bootstrap(name)?;
        }
        self.succeeded(&keys)?;
        Ok(LoginOutcome::Ok(self.existing_user(name)?))
    }

    fn locked_until(&self, keys: &[(&str, &str)], now_ms: i64) -> Result<Option<i64>> {
        let mut until = None;
        for (kind, key) in keys {
            let locked: Option<i64> = self
                .db
                .query_row(
                    "SELECT locked_until_ms FROM login_failures
                     WHERE kind = ?1 AND key = ?2 AND locked_until_ms > ?3",
                    params![kind, key, now_ms],
                    |r| r.get(0),
                )
                .optional()?;
            until = until.max(locked);
        }
        Ok(until)
    }

    fn failed(&self, keys: &[(&str, &str)], now_ms: i64) -> Result<LoginOutcome> {
        let tx = self.write_tx()?;
        let mut until = None;
        for (kind, key) in keys {
            let failures: i64 = tx.query_row(
                "INSERT INTO login_failures (kind, key, failures) VALUES (?1, ?2, 1)
                 ON CONFLICT (kind, key) DO UPDATE SET failures = failures + 1
                 RETURNING failures",
                params![kind, key],
                |r| r.get(0),
            )?;
            let lock = lock_ms(failures);
            if lock > 0 {
                tx.execute(
                    "UPDATE login_failures SET locked_until_ms = ?3 WHERE kind = ?1 AND key = ?2",
                    params![kind, key, now_ms + lock],
                )?;
                until = until.max(Some(now_ms + lock));
            }
        }
        tx.commit()?;
        Ok(match until {
            Some(until_ms) => LoginOutcome::Locked { until_ms },
            None => LoginOutcome::WrongCredentials,
        })
    }

    fn succeeded(&self, keys: &[(&str, &str)]) -> Result<()> {
        for (kind, key) in keys {
            self.db.execute(
                "DELETE FROM login_failures WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::testing::*;

    const MIN: i64 = 60_000;

    #[test]
    fn lock_durations_double_up_to_an_hour() {
        let got: Vec<i64> = (1..=13).map(lock_ms).collect();
        assert_eq!(
            got,
            [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60].map(|m| m * MIN)
        );
        assert_eq!(lock_ms(i64::MAX), 60 * MIN);
    }

    #[test]
    fn unknown_user_and_wrong_password_look_the_same() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let wrong_password = f
            .verify_login("alice", "not the password", None, "10.0.0.1", T0)
            .unwrap();
        let unknown_user = f
            .verify_login("mallory", "not the password", None, "10.0.0.2", T0)
            .unwrap();
        assert_eq!(wrong_password, LoginOutcome::WrongCredentials);
        assert_eq!(unknown_user, wrong_password);
        // ...and both lock the same way.
        for i in 2..=5 {
            let a = f
                .verify_login("alice", "nope", None, "10.0.0.1", T0 + i)
                .unwrap();
            let b = f
                .verify_login("mallory", "nope", None, "10.0.0.2", T0 + i)
                .unwrap();
            assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "attempt {i}: {a:?} vs {b:?}"
            );
        }
        assert_eq!(
            f.verify_login("mallory", "nope", None, "10.0.0.2", T0 + 6)
                .unwrap(),
            LoginOutcome::Locked {
                until_ms: T0 + 5 + MIN
            }
        );
    }

    #[test]
    fn password_then_totp() {
        let f = fixture();
        let secret = ready_user(&f, "alice", Role::Viewer);
        assert_eq!(
            f.verify_login("alice", PASSWORD, None, "p", T0).unwrap(),
            LoginOutcome::TotpRequired
        );
        // Asking for the code is not a failure: five of them lock nothing.
        for _ in 0..5 {
            f.verify_login("alice", PASSWORD, None, "p", T0).unwrap();
        }
        let now = code(&secret, T0);
        assert_eq!(
            f.verify_login("alice", "wrong password", Some(&now), "p", T0)
                .unwrap(),
            LoginOutcome::WrongCredentials
        );
        let LoginOutcome::Ok(user) = f
            .verify_login("alice", PASSWORD, Some(&now), "p", T0)
            .unwrap()
        else {
            panic!("the right password and code must log in");
        };
        assert_eq!(user.name, "alice");
        assert!(!user.setup_pending());
    }

    #[test]
    fn a_totp_code_is_good_once() {
        let f = fixture();
        let secret = ready_user(&f, "alice", Role::Viewer);
        let now = code(&secret, T0);
        assert!(matches!(
            f.verify_login("alice", PASSWORD, Some(&now), "p", T0)
                .unwrap(),
            LoginOutcome::Ok(_)
        ));
        // Same code, same step: a replay.
        assert_eq!(
            f.verify_login("alice", PASSWORD, Some(&now), "p", T0 + 5_000)
                .unwrap(),
            LoginOutcome::WrongCredentials
        );
        // The previous step's code is within the skew window but older than the one used.
        assert_eq!(
            f.verify_login(
                "alice",
                PASSWORD,
                Some(&code(&secret, T0 - 30_000)),
                "p",
                T0
            )
            .unwrap(),
            LoginOutcome::WrongCredentials
        );
        // The next step's code works.
        let next = T0 + 30_000;
        assert!(matches!(
            f.verify_login("alice", PASSWORD, Some(&code(&secret, next)), "p", next)
                .unwrap(),
            LoginOutcome::Ok(_)
        ));
    }

    #[test]
    fn the_fifth_failure_locks_and_locks_double() {
        let f = fixture();
        let secret = ready_user(&f, "alice", Role::Viewer);
        let fail = |peer: &str, at: i64| {
            f.verify_login("alice", "bad guess!", None, peer, at)
                .unwrap()
        };
        // Each from another peer, so only the user counter counts.
        for i in 1..=4 {
            assert_eq!(
                fail(&format!("10.0.0.{i}"), T0),
                LoginOutcome::WrongCredentials
            );
        }
        assert_eq!(
            fail("10.0.0.5", T0),
            LoginOutcome::Locked { until_ms: T0 + MIN }
        );
        // While locked, even the right password and code are not checked.
        let right = code(&secret, T0 + 30_000);
        assert_eq!(
            f.verify_login("alice", PASSWORD, Some(&right), "10.9.9.9", T0 + 30_000)
                .unwrap(),
            LoginOutcome::Locked { until_ms: T0 + MIN }
        );
        // Attempts during the lock do not extend it; the next failure after it doubles it.
        let t1 = T0 + MIN;
        assert_eq!(
            fail("10.0.0.6", t1),
            LoginOutcome::Locked {
                until_ms: t1 + 2 * MIN
            }
        );
        let t2 = t1 + 2 * MIN;
        assert_eq!(
            fail("10.0.0.7", t2),
            LoginOutcome::Locked {
                until_ms: t2 + 4 * MIN
            }
        );
        let t3 = t2 + 4 * MIN;
        // A success resets the count: the next failure is the first again.
        assert!(matches!(
            f.verify_login("alice", PASSWORD, Some(&code(&secret, t3)), "10.0.0.8", t3)
                .unwrap(),
            LoginOutcome::Ok(_)
        ));
        assert_eq!(fail("10.0.0.9", t3 + 1), LoginOutcome::WrongCredentials);
    }

    #[test]
    fn failures_count_per_peer_too() {
        let f = fixture();
        let secret = ready_user(&f, "alice", Role::Viewer);
        // One peer trying many names: no user counter reaches 5, the peer's does.
        for i in 1..=4 {
            assert_eq!(
                f.verify_login(&format!("user{i}"), "guess guess", None, "203.0.113.7", T0)
                    .unwrap(),
                LoginOutcome::WrongCredentials
            );
        }
        assert_eq!(
            f.verify_login("user5", "guess guess", None, "203.0.113.7", T0)
                .unwrap(),
            LoginOutcome::Locked { until_ms: T0 + MIN }
        );
        let right = code(&secret, T0);
        assert_eq!(
            f.verify_login("alice", PASSWORD, Some(&right), "203.0.113.7", T0 + 1)
                .unwrap(),
            LoginOutcome::Locked { until_ms: T0 + MIN }
        );
        // alice from elsewhere is not affected.
        assert!(matches!(
            f.verify_login("alice", PASSWORD, Some(&right), "198.51.100.1", T0 + 1)
                .unwrap(),
            LoginOutcome::Ok(_)
        ));
    }

    #[test]
    fn bootstrap_secret_logs_in_once() {
        let f = fixture();
        let boot = f.bootstrap_admin().unwrap().unwrap();
        let LoginOutcome::Ok(admin) = f
            .verify_login(boot.user(), boot.secret(), None, "127.0.0.1", T0)
            .unwrap()
        else {
            panic!("the bootstrap secret must log in once");
        };
        assert!(admin.must_change_password && admin.must_enrol_totp);
        assert!(
            !f.can(boot.user(), "shop", crate::Action::ManageUsers)
                .unwrap()
        );
        assert_eq!(
            f.verify_login(boot.user(), boot.secret(), None, "127.0.0.1", T0 + 1)
                .unwrap(),
            LoginOutcome::WrongCredentials
        );

        // The admin sets a password and enrols; then the account is complete.
        f.set_password(boot.user(), "the admin's own passphrase")
            .unwrap();
        let e = f.begin_totp_enrolment(boot.user()).unwrap();
        f.confirm_totp(boot.user(), &code(&e.secret_base32, T0), T0)
            .unwrap();
        let later = T0 + 30_000;
        let LoginOutcome::Ok(admin) = f
            .verify_login(
                boot.user(),
                "the admin's own passphrase",
                Some(&code(&e.secret_base32, later)),
                "127.0.0.1",
                later,
            )
            .unwrap()
        else {
            panic!("the admin's own password and code must log in");
        };
        assert!(!admin.setup_pending());
        assert!(
            f.can(boot.user(), "shop", crate::Action::ManageUsers)
                .unwrap()
        );
        assert!(f.bootstrap_admin().unwrap().is_none());
    }
}
