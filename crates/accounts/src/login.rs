//! Logins: the account is read under the store's lock, the password is checked (Argon2) without
//! it, then the TOTP code and the outcome are written; failures lock per address and user.

use rusqlite::{OptionalExtension, Transaction, params};

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
    /// Too many failures from this address (for this user, or for any); nothing is checked
    /// until `until_ms`.
    Locked { until_ms: i64 },
}

/// What a failure counter is keyed by. There is no counter per user name alone: it would let
/// anyone lock anyone out; a guesser is slowed per address instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    /// One address trying one user name.
    PeerUser,
    /// One address, whatever names it tries (spraying).
    Peer,
}

impl Counter {
    fn kind(self) -> &'static str {
        match self {
            Counter::PeerUser => "peer_user",
            Counter::Peer => "peer",
        }
    }

    /// The failure that locks.
    fn lock_at(self) -> i64 {
        match self {
            Counter::PeerUser => PEER_USER_LOCK_AT,
            Counter::Peer => PEER_LOCK_AT,
        }
    }
}

/// Failures of one address on one user name before it is locked out of that name.
pub const PEER_USER_LOCK_AT: i64 = 5;
/// Failures of one address on any names before it is locked out of all of them.
pub const PEER_LOCK_AT: i64 = 20;
const FIRST_LOCK_MS: i64 = 60_000;
const MAX_LOCK_MS: i64 = 3_600_000;

/// How long the `failures`-th consecutive failure locks a counter that locks at `lock_at`:
/// nothing before, then 1 min, doubling with every further failure, up to 1 h.
pub fn lock_ms(failures: i64, lock_at: i64) -> i64 {
    if failures < lock_at {
        return 0;
    }
    let doublings = (failures - lock_at).min(6) as u32;
    (FIRST_LOCK_MS << doublings).min(MAX_LOCK_MS)
}

/// The counters an attempt by `name` from `peer` touches: the address always, the address and
/// name only if the name could be one (so random junk does not fill the table).
fn keys(name: &str, peer: &str) -> Vec<(Counter, String)> {
    let peer = cut(peer, 256);
    let mut keys = vec![(Counter::Peer, peer.to_string())];
    if check_user_name(name).is_ok() {
        keys.push((Counter::PeerUser, format!("{peer} {name}")));
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

/// A login attempt between [`Accounts::begin_login`] and [`Accounts::finish_login`]: the
/// account as it was read, and the attempt already counted as a failure until it is decided.
#[derive(Debug)]
pub struct PendingLogin {
    name: String,
    keys: Vec<(Counter, String)>,
    hash: Option<String>,
    totp_secret: Option<String>,
    bootstrap: bool,
}

impl PendingLogin {
    /// Argon2, slow on purpose: call it without holding the store, so one guesser does not
    /// slow every other request down.
    pub fn password_matches(&self, password: &str) -> bool {
        password_matches(self.hash.as_deref(), password)
    }
}

/// The first step of a login.
#[derive(Debug)]
pub enum LoginStart {
    Locked { until_ms: i64 },
    Pending(PendingLogin),
}

impl Accounts {
    /// Checks a login attempt by `name` from `peer` (an address as the caller sees it) in one
    /// go. The console splits it to run Argon2 outside its lock; see [`Accounts::begin_login`].
    pub fn verify_login(
        &self,
        name: &str,
        password: &str,
        totp_code: Option<&str>,
        peer: &str,
        now_ms: i64,
    ) -> Result<LoginOutcome> {
        match self.begin_login(name, peer, now_ms)? {
            LoginStart::Locked { until_ms } => Ok(LoginOutcome::Locked { until_ms }),
            LoginStart::Pending(pending) => {
                let matched = pending.password_matches(password);
                self.finish_login(pending, matched, totp_code, now_ms)
            }
        }
    }

    /// Step one: refuses a locked address, reads the account and counts the attempt as a
    /// failure at once (refunded if it turns out not to be one), so parallel guesses cannot
    /// slip past the lock while their passwords are being checked.
    pub fn begin_login(&self, name: &str, peer: &str, now_ms: i64) -> Result<LoginStart> {
        let keys = keys(name, peer);
        let tx = self.write_tx()?;
        if let Some(until_ms) = locked_until(&tx, &keys, now_ms)? {
            return Ok(LoginStart::Locked { until_ms });
        }
        charge(&tx, &keys, now_ms)?;
        let row: Option<(String, Option<String>, bool)> = tx
            .query_row(
                "SELECT password_hash, totp_secret, bootstrap FROM users WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        tx.commit()?;
        let (hash, totp_secret, bootstrap) = match row {
            Some((hash, totp, bootstrap)) => (Some(hash), totp, bootstrap),
            None => (None, None, false),
        };
        Ok(LoginStart::Pending(PendingLogin {
            name: name.to_string(),
            keys,
            hash,
            totp_secret,
            bootstrap,
        }))
    }

    /// Step two, after `pending.password_matches`: the TOTP code, then the outcome.
    pub fn finish_login(
        &self,
        pending: PendingLogin,
        password_ok: bool,
        totp_code: Option<&str>,
        now_ms: i64,
    ) -> Result<LoginOutcome> {
        let PendingLogin {
            name,
            keys,
            hash,
            totp_secret,
            bootstrap,
        } = pending;
        // The password may have changed while it was being checked: then it is not this one.
        let current: Option<String> = self
            .db
            .query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        if !password_ok || hash.is_none() || current != hash {
            return self.failed(&keys, now_ms);
        }
        if let Some(secret) = totp_secret {
            let Some(code) = totp_code else {
                self.refund(&keys)?;
                return Ok(LoginOutcome::TotpRequired);
            };
            if !self.spend_totp(&name, &secret, code, now_ms)? {
                return self.failed(&keys, now_ms);
            }
        }
        if bootstrap {
            self.spend_bootstrap(&name)?;
        }
        self.succeeded(&keys)?;
        Ok(LoginOutcome::Ok(self.existing_user(&name)?))
    }

    /// The failure was counted at the start; say whether it locked.
    fn failed(&self, keys: &[(Counter, String)], now_ms: i64) -> Result<LoginOutcome> {
        let tx = self.write_tx()?;
        let until = locked_until(&tx, keys, now_ms - 1)?;
        tx.commit()?;
        Ok(match until {
            Some(until_ms) => LoginOutcome::Locked { until_ms },
            None => LoginOutcome::WrongCredentials,
        })
    }

    /// Takes back the failure counted at the start (the attempt only asked for the TOTP code).
    fn refund(&self, keys: &[(Counter, String)]) -> Result<()> {
        for (counter, key) in keys {
            refund_one(&self.db, *counter, key)?;
        }
        Ok(())
    }

    fn succeeded(&self, keys: &[(Counter, String)]) -> Result<()> {
        for (counter, key) in keys {
            match counter {
                // The address as a whole keeps its other failures: a good login of one name
                // must not reset a sprayer's count.
                Counter::Peer => refund_one(&self.db, *counter, key)?,
                Counter::PeerUser => {
                    self.db.execute(
                        "DELETE FROM login_failures WHERE kind = ?1 AND key = ?2",
                        params![counter.kind(), key],
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// One failure less; a lock this attempt's own charge set goes too (an earlier one had expired,
/// or the attempt would not have started).
fn refund_one(db: &rusqlite::Connection, counter: Counter, key: &str) -> Result<()> {
    db.execute(
        "UPDATE login_failures SET failures = MAX(failures - 1, 0), locked_until_ms = 0
         WHERE kind = ?1 AND key = ?2",
        params![counter.kind(), key],
    )?;
    Ok(())
}

fn locked_until(
    tx: &Transaction<'_>,
    keys: &[(Counter, String)],
    now_ms: i64,
) -> Result<Option<i64>> {
    let mut until = None;
    for (counter, key) in keys {
        let locked: Option<i64> = tx
            .query_row(
                "SELECT locked_until_ms FROM login_failures
                 WHERE kind = ?1 AND key = ?2 AND locked_until_ms > ?3",
                params![counter.kind(), key, now_ms],
                |r| r.get(0),
            )
            .optional()?;
        until = until.max(locked);
    }
    Ok(until)
}

/// Counts one failure on every counter, locking those it takes to their threshold.
fn charge(tx: &Transaction<'_>, keys: &[(Counter, String)], now_ms: i64) -> Result<()> {
    for (counter, key) in keys {
        let failures: i64 = tx.query_row(
            "INSERT INTO login_failures (kind, key, failures) VALUES (?1, ?2, 1)
             ON CONFLICT (kind, key) DO UPDATE SET failures = failures + 1
             RETURNING failures",
            params![counter.kind(), key],
            |r| r.get(0),
        )?;
        let lock = lock_ms(failures, counter.lock_at());
        if lock > 0 {
            tx.execute(
                "UPDATE login_failures SET locked_until_ms = ?3 WHERE kind = ?1 AND key = ?2",
                params![counter.kind(), key, now_ms + lock],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::testing::*;

    const MIN: i64 = 60_000;

    #[test]
    fn lock_durations_double_up_to_an_hour() {
        let got: Vec<i64> = (1..=13).map(|n| lock_ms(n, 5)).collect();
        assert_eq!(
            got,
            [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60].map(|m| m * MIN)
        );
        assert_eq!(lock_ms(i64::MAX, 5), 60 * MIN);
        assert_eq!(lock_ms(19, PEER_LOCK_AT), 0);
        assert_eq!(lock_ms(20, PEER_LOCK_AT), MIN);
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
    fn the_fifth_failure_from_one_address_locks_it_and_locks_double() {
        let f = fixture();
        let secret = ready_user(&f, "alice", Role::Viewer);
        let attacker = "203.0.113.7";
        let fail = |at: i64| {
            f.verify_login("alice", "bad guess!", None, attacker, at)
                .unwrap()
        };
        for _ in 1..=4 {
            assert_eq!(fail(T0), LoginOutcome::WrongCredentials);
        }
        assert_eq!(fail(T0), LoginOutcome::Locked { until_ms: T0 + MIN });
        // While locked, even the right password and code are not checked from that address...
        let right = code(&secret, T0 + 30_000);
        assert_eq!(
            f.verify_login("alice", PASSWORD, Some(&right), attacker, T0 + 30_000)
                .unwrap(),
            LoginOutcome::Locked { until_ms: T0 + MIN }
        );
        // ...but alice from her own address gets in: nobody can lock her out from elsewhere.
        assert!(matches!(
            f.verify_login("alice", PASSWORD, Some(&right), "10.9.9.9", T0 + 30_000)
                .unwrap(),
            LoginOutcome::Ok(_)
        ));
        // Attempts during the lock do not extend it; the next failure after it doubles it.
        let t1 = T0 + MIN;
        assert_eq!(
            fail(t1),
            LoginOutcome::Locked {
                until_ms: t1 + 2 * MIN
            }
        );
        let t2 = t1 + 2 * MIN;
        assert_eq!(
            fail(t2),
            LoginOutcome::Locked {
                until_ms: t2 + 4 * MIN
            }
        );
        // Asking for the code after a lock is not a failure and does not lock again.
        let t3 = t2 + 4 * MIN;
        assert_eq!(
            f.verify_login("alice", PASSWORD, None, attacker, t3)
                .unwrap(),
            LoginOutcome::TotpRequired
        );
        // A success resets that address's count for the name: the next failure is the first again.
        assert!(matches!(
            f.verify_login(
                "alice",
                PASSWORD,
                Some(&code(&secret, t3 + 60_000)),
                attacker,
                t3 + 60_000
            )
            .unwrap(),
            LoginOutcome::Ok(_)
        ));
        assert_eq!(fail(t3 + 60_001), LoginOutcome::WrongCredentials);
    }

    #[test]
    fn parallel_guesses_are_counted_before_their_passwords_are_checked() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        // Five attempts in flight at once (Argon2 running for each): the fifth charge locks,
        // so a sixth is refused before any password is checked.
        let pending: Vec<PendingLogin> = (0..5)
            .map(
                |_| match f.begin_login("alice", "203.0.113.7", T0).unwrap() {
                    LoginStart::Pending(p) => p,
                    LoginStart::Locked { .. } => panic!("not locked yet"),
                },
            )
            .collect();
        assert!(matches!(
            f.begin_login("alice", "203.0.113.7", T0).unwrap(),
            LoginStart::Locked { until_ms } if until_ms == T0 + MIN
        ));
        for p in pending {
            assert!(!p.password_matches("a wrong guess"));
            f.finish_login(p, false, None, T0).unwrap();
        }
    }

    #[test]
    fn a_password_changed_while_it_was_checked_does_not_log_in() {
        let f = fixture();
        ready_user(&f, "alice", Role::Viewer);
        let LoginStart::Pending(pending) = f.begin_login("alice", "p", T0).unwrap() else {
            panic!("not locked");
        };
        assert!(pending.password_matches(PASSWORD));
        f.set_password("alice", "a brand new passphrase").unwrap();
        assert_eq!(
            f.finish_login(pending, true, None, T0).unwrap(),
            LoginOutcome::WrongCredentials
        );
    }

    #[test]
    fn one_address_spraying_names_is_locked_for_all_of_them() {
        let f = fixture();
        let secret = ready_user(&f, "alice", Role::Viewer);
        for i in 1..PEER_LOCK_AT {
            assert_eq!(
                f.verify_login(&format!("user{i}"), "guess guess", None, "203.0.113.7", T0)
                    .unwrap(),
                LoginOutcome::WrongCredentials
            );
        }
        assert_eq!(
            f.verify_login("last", "guess guess", None, "203.0.113.7", T0)
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
