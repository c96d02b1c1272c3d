//! TOTP as authenticator apps know it (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step of skew).
//! A code is good once: the step it matched is remembered and no later code may match an older step.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rusqlite::{OptionalExtension, params};
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::{Accounts, AccountsError, Result};

const ISSUER: &str = "nonstop";

/// What a user needs to add the account to an authenticator app.
pub struct TotpEnrolment {
    pub secret_base32: String,
    /// `otpauth://totp/nonstop:NAME?secret=…&issuer=nonstop…`
    pub otpauth_url: String,
    /// The URL as a QR code: an SVG, base64-encoded (for a `data:image/svg+xml;base64,` URL).
    pub qr_svg_base64: String,
}

impl fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpEnrolment { <redacted> }")
    }
}

fn totp(secret_base32: &str, user: &str) -> Result<Totp> {
    let secret =
        Secret::try_from_base32(secret_base32).map_err(|e| AccountsError::Totp(e.to_string()))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(1)
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(user)
        .build()
        .map_err(|e| AccountsError::Totp(e.to_string()))
}

/// The step `code` is valid for at `now_ms`, if any. Spaces are ignored ("123 456").
pub(crate) fn matching_step(secret_base32: &str, code: &str, now_ms: i64) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let totp = totp(secret_base32, "").ok()?;
    let step = totp.check(&code, (now_ms.max(0) / 1000) as u64)?;
    i64::try_from(step).ok()
}

impl Accounts {
    /// Starts (or restarts) TOTP enrolment with a new 160-bit secret; the active one, if any,
    /// stays in force until `confirm_totp` proves the app has the new one.
    pub fn begin_totp_enrolment(&self, user: &str) -> Result<TotpEnrolment> {
        self.existing_user(user)?;
        let mut bytes = vec![0u8; 20];
        getrandom::fill(&mut bytes).map_err(|e| AccountsError::Random(e.to_string()))?;
        let secret_base32 = Secret::from(bytes).to_base32();
        let totp = totp(&secret_base32, user)?;
        let otpauth_url = totp
            .to_url()
            .map_err(|e| AccountsError::Totp(e.to_string()))?;
        let qr_svg_base64 = BASE64.encode(crate::qr::svg(&otpauth_url)?);
        self.db.execute(
            "UPDATE users SET totp_pending = ?2 WHERE name = ?1",
            params![user, secret_base32],
        )?;
        Ok(TotpEnrolment {
            secret_base32,
            otpauth_url,
            qr_svg_base64,
        })
    }

    /// Activates the pending TOTP secret once `code` shows the user's app computes it.
    pub fn confirm_totp(&self, user: &str, code: &str, now_ms: i64) -> Result<()> {
        let pending: Option<Option<String>> = self
            .db
            .query_row(
                "SELECT totp_pending FROM users WHERE name = ?1",
                params![user],
                |r| r.get(0),
            )
            .optional()?;
        let pending = pending
            .ok_or_else(|| AccountsError::NoSuchUser(user.to_string()))?
            .ok_or_else(|| AccountsError::NoTotpEnrolment(user.to_string()))?;
        let step = matching_step(&pending, code, now_ms).ok_or(AccountsError::WrongTotp)?;
        // The confirming code is spent too, so it cannot log in a second time.
        self.db.execute(
            "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = ?2
             WHERE name = ?1 AND totp_pending = ?3",
            params![user, step, pending],
        )?;
        Ok(())
    }

    /// Marks the step `code` matched as used; false if it is not valid or not newer than the last.
    pub(crate) fn spend_totp(
        &self,
        user: &str,
        secret: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let Some(step) = matching_step(secret, code, now_ms) else {
            return Ok(false);
        };
        // One conditional UPDATE, so two logins racing with the same code cannot both pass.
        let spent = self.db.execute(
            "UPDATE users SET totp_last_step = ?2 WHERE name = ?1 AND totp_last_step < ?2",
            params![user, step],
        )?;
        Ok(spent == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::{LoginOutcome, Role};

    #[test]
    fn enrolment_gives_secret_url_and_qr() {
        let f = fixture();
        f.create_user("alice", PASSWORD, Role::Viewer).unwrap();
        let e = f.begin_totp_enrolment("alice").unwrap();
        assert_eq!(e.secret_base32.len(), 32, "160 bits in base32");
        assert!(
            e.otpauth_url.starts_with("otpauth://totp/nonstop:alice?"),
            "{}",
            e.otpauth_url
        );
        assert!(
            e.otpauth_url
                .contains(&format!("secret={}", e.secret_base32))
        );
        assert!(e.otpauth_url.contains("issuer=nonstop"));
        let svg = BASE64.decode(&e.qr_svg_base64).unwrap();
        assert!(svg.starts_with(b"<svg "), "an SVG");
        assert!(!format!("{e:?}").contains(&e.secret_base32));
        // The app that scanned the URL computes the same codes.
        let app = Totp::from_url(&e.otpauth_url).unwrap();
        assert_eq!(
            app.generate(1_700_000_000).to_string(),
            code(&e.secret_base32, 1_700_000_000_000)
        );
    }

    #[test]
    fn confirm_activates_only_with_a_right_code() {
        let f = fixture();
        f.create_user("alice", PASSWORD, Role::Viewer).unwrap();
        assert!(matches!(
            f.confirm_totp("alice", "123456", T0),
            Err(AccountsError::NoTotpEnrolment(_))
        ));
        let e = f.begin_totp_enrolment("alice").unwrap();
        let right = code(&e.secret_base32, T0);
        let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(matches!(
            f.confirm_totp("alice", &wrong, T0),
            Err(AccountsError::WrongTotp)
        ));
        assert!(f.user("alice").unwrap().unwrap().must_enrol_totp);
        // A code from ten minutes ago is out of the skew window.
        assert!(matches!(
            f.confirm_totp("alice", &code(&e.secret_base32, T0 - 600_000), T0),
            Err(AccountsError::WrongTotp)
        ));
        let spaced = format!("{} {}", &right[..3], &right[3..]);
        f.confirm_totp("alice", &spaced, T0).unwrap();
        assert!(!f.user("alice").unwrap().unwrap().must_enrol_totp);
        // The confirming code cannot be used again to log in.
        assert_eq!(
            f.verify_login("alice", PASSWORD, Some(&right), "10.0.0.1", T0 + 1_000)
                .unwrap(),
            LoginOutcome::WrongCredentials
        );
    }

    #[test]
    fn re_enrolment_keeps_the_old_secret_until_confirmed() {
        let f = fixture();
        let old = ready_user(&f, "alice", Role::Viewer);
        let new = f.begin_totp_enrolment("alice").unwrap();
        assert_ne!(old, new.secret_base32);
        let login = |secret: &str, at: i64| {
            f.verify_login("alice", PASSWORD, Some(&code(secret, at)), "p", at)
                .unwrap()
        };
        assert!(matches!(login(&old, T0), LoginOutcome::Ok(_)));
        f.confirm_totp("alice", &code(&new.secret_base32, T0 + 30_000), T0 + 30_000)
            .unwrap();
        assert_eq!(login(&old, T0 + 60_000), LoginOutcome::WrongCredentials);
        assert!(matches!(
            login(&new.secret_base32, T0 + 90_000),
            LoginOutcome::Ok(_)
        ));
    }
}
