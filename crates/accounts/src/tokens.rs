//! API tokens for CI: a random secret shown once of which only the SHA-256 is stored, scoped to
//! a list of services, with an expiry; a token never allows more than its owner may do right now.

use std::fmt;

use rusqlite::params;
use serde::Serialize;

use crate::{
    Accounts, AccountsError, Action, Result, check_service, check_user_name, digest, random_hex,
};

/// Prefixed so that a leaked token is recognisable to secret scanners and to people.
const TOKEN_PREFIX: &str = "nst_";

/// A token just created: `plaintext` is for the owner to copy into their CI, once.
pub struct NewToken {
    secret: String,
    pub owner: String,
    pub name: String,
    pub services: Vec<String>,
    pub expires_ms: i64,
}

impl NewToken {
    pub fn plaintext(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("secret", &"<redacted>")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("services", &self.services)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// Who a presented token speaks for; ask `Accounts::token_can` what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub owner: String,
    pub name: String,
    pub services: Vec<String>,
}

/// A token as listed to its owner or an admin: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub owner: String,
    pub name: String,
    pub services: Vec<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub last_used_ms: Option<i64>,
}

// `check_service` allows no commas, so a comma-joined list splits back unambiguously.
fn join_services(services: &[String]) -> String {
    services.join(",")
}

fn split_services(stored: &str) -> Vec<String> {
    stored.split(',').map(str::to_string).collect()
}

impl Accounts {
    /// A new token `name` of `owner` for `services`, good until `expires_ms`.
    pub fn create_token(
        &self,
        owner: &str,
        name: &str,
        services: &[String],
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<NewToken> {
        check_user_name(name)?;
        if services.is_empty() {
            return Err(AccountsError::NoServices);
        }
        for service in services {
            check_service(service)?;
        }
        if expires_ms <= now_ms {
            return Err(AccountsError::AlreadyExpired);
        }
        self.existing_user(owner)?;
        let mut services = services.to_vec();
        services.sort();
        services.dedup();
        let secret = format!("{TOKEN_PREFIX}{}", random_hex::<32>()?);
        let inserted = self.db.execute(
            "INSERT INTO api_tokens (hash, owner, name, services, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (owner, name) DO NOTHING",
            params![
                digest(&secret),
                owner,
                name,
                join_services(&services),
                now_ms,
                expires_ms
            ],
        )?;
        if inserted == 0 {
            return Err(AccountsError::TokenExists {
                owner: owner.to_string(),
                name: name.to_string(),
            });
        }
        Ok(NewToken {
            secret,
            owner: owner.to_string(),
            name: name.to_string(),
            services,
            expires_ms,
        })
    }

    /// The identity of the token `secret` if it exists and has not expired at `now_ms`; records
    /// the use. Unknown, revoked and expired tokens all give `None`.
    pub fn token_identity(&self, secret: &str, now_ms: i64) -> Result<Option<TokenIdentity>> {
        let mut stmt = self.db.prepare(
            "UPDATE api_tokens SET last_used_ms = MAX(COALESCE(last_used_ms, ?2), ?2)
             WHERE hash = ?1 AND expires_ms > ?2
             RETURNING owner, name, services",
        )?;
        let mut rows = stmt.query(params![digest(secret), now_ms])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let services: String = row.get(2)?;
        Ok(Some(TokenIdentity {
            owner: row.get(0)?,
            name: row.get(1)?,
            services: split_services(&services),
        }))
    }

    /// Deletes `owner`'s token `name`; false if there was none.
    pub fn revoke_token(&self, owner: &str, name: &str) -> Result<bool> {
        Ok(self.db.execute(
            "DELETE FROM api_tokens WHERE owner = ?1 AND name = ?2",
            params![owner, name],
        )? > 0)
    }

    /// `owner`'s tokens by name, expired ones included until `prune_expired` removes them.
    pub fn tokens(&self, owner: &str) -> Result<Vec<TokenInfo>> {
        let mut stmt = self.db.prepare(
            "SELECT owner, name, services, created_ms, expires_ms, last_used_ms
             FROM api_tokens WHERE owner = ?1 ORDER BY name",
        )?;
        let tokens = stmt
            .query_map(params![owner], |r| {
                let services: String = r.get(2)?;
                Ok(TokenInfo {
                    owner: r.get(0)?,
                    name: r.get(1)?,
                    services: split_services(&services),
                    created_ms: r.get(3)?,
                    expires_ms: r.get(4)?,
                    last_used_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(tokens)
    }

    /// Whether the token may do `action` on `service`: only on its services, only what its owner
    /// may do there now (so a demoted or deleted owner takes the token's rights along), and
    /// never `ManageUsers` or `ViewAudit`: those are for a person who passed TOTP.
    pub fn token_can(&self, token: &TokenIdentity, service: &str, action: Action) -> Result<bool> {
        if matches!(action, Action::ManageUsers | Action::ViewAudit) {
            return Ok(false);
        }
        if !token.services.iter().any(|s| s == service) {
            return Ok(false);
        }
        self.can(&token.owner, service, action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use crate::testing::*;

    const HOUR: i64 = 3_600_000;

    fn services(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_hash_is_stored_and_the_secret_identifies() {
        let f = fixture();
        ready_user(&f, "dana", Role::Deployer);
        let token = f
            .create_token(
                "dana",
                "ci",
                &services(&["shop", "api", "shop"]),
                T0 + HOUR,
                T0,
            )
            .unwrap();
        let secret = token.plaintext();
        assert!(secret.starts_with("nst_"), "{secret}");
        assert_eq!(secret.len(), 4 + 64);
        assert!(!format!("{token:?}").contains(secret));
        let (hash, stored_services): (Vec<u8>, String) =
            f.db.query_row("SELECT hash, services FROM api_tokens", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(hash, digest(secret));
        assert_eq!(stored_services, "api,shop");
        assert_eq!(
            f.token_identity(secret, T0 + 1).unwrap(),
            Some(TokenIdentity {
                owner: "dana".into(),
                name: "ci".into(),
                services: services(&["api", "shop"]),
            })
        );
        assert_eq!(f.token_identity("nst_00", T0).unwrap(), None);
        let listed = f.tokens("dana").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].created_ms, T0);
        assert_eq!(listed[0].last_used_ms, Some(T0 + 1));
        assert!(f.tokens("someone-else").unwrap().is_empty());
    }

    #[test]
    fn creation_is_checked() {
        let f = fixture();
        ready_user(&f, "dana", Role::Deployer);
        let shop = services(&["shop"]);
        assert!(matches!(
            f.create_token("dana", "ci", &[], T0 + HOUR, T0),
            Err(AccountsError::NoServices)
        ));
        assert!(matches!(
            f.create_token("dana", "ci", &services(&["a,b"]), T0 + HOUR, T0),
            Err(AccountsError::BadService(_))
        ));
        assert!(matches!(
            f.create_token("dana", "ci", &shop, T0, T0),
            Err(AccountsError::AlreadyExpired)
        ));
        assert!(matches!(
            f.create_token("dana", "CI job", &shop, T0 + HOUR, T0),
            Err(AccountsError::BadName(_))
        ));
        assert!(matches!(
            f.create_token("ghost", "ci", &shop, T0 + HOUR, T0),
            Err(AccountsError::NoSuchUser(_))
        ));
        f.create_token("dana", "ci", &shop, T0 + HOUR, T0).unwrap();
        assert!(matches!(
            f.create_token("dana", "ci", &shop, T0 + HOUR, T0),
            Err(AccountsError::TokenExists { .. })
        ));
        assert_eq!(f.tokens("dana").unwrap().len(), 1);
    }

    #[test]
    fn a_token_acts_only_on_its_services() {
        let f = fixture();
        ready_user(&f, "dana", Role::Deployer);
        f.grant("dana", "shop", Role::Deployer).unwrap();
        f.grant("dana", "api", Role::Deployer).unwrap();
        let token = f
            .create_token("dana", "ci", &services(&["shop"]), T0 + HOUR, T0)
            .unwrap();
        let id = f.token_identity(token.plaintext(), T0).unwrap().unwrap();
        assert!(f.token_can(&id, "shop", Action::Deploy).unwrap());
        assert!(f.token_can(&id, "shop", Action::Rollback).unwrap());
        // The owner may deploy `api`, the token may not.
        assert!(f.can("dana", "api", Action::Deploy).unwrap());
        assert!(!f.token_can(&id, "api", Action::Deploy).unwrap());
        assert!(!f.token_can(&id, "api", Action::View).unwrap());
    }

    #[test]
    fn a_token_never_exceeds_its_owner() {
        let f = fixture();
        ready_user(&f, "vera", Role::Viewer);
        f.grant("vera", "shop", Role::Viewer).unwrap();
        let viewer = f
            .create_token("vera", "ci", &services(&["shop", "api"]), T0 + HOUR, T0)
            .unwrap();
        let id = f.token_identity(viewer.plaintext(), T0).unwrap().unwrap();
        assert!(f.token_can(&id, "shop", Action::View).unwrap());
        assert!(!f.token_can(&id, "shop", Action::Deploy).unwrap());
        // Listed on the token but not granted to the owner.
        assert!(!f.token_can(&id, "api", Action::View).unwrap());

        ready_user(&f, "dana", Role::Deployer);
        f.grant("dana", "shop", Role::Deployer).unwrap();
        let deployer = f
            .create_token("dana", "ci", &services(&["shop"]), T0 + HOUR, T0)
            .unwrap();
        let id = f.token_identity(deployer.plaintext(), T0).unwrap().unwrap();
        assert!(f.token_can(&id, "shop", Action::Deploy).unwrap());
        // Demoting the owner demotes the token at once.
        f.set_role("dana", Role::Viewer).unwrap();
        assert!(!f.token_can(&id, "shop", Action::Deploy).unwrap());
        assert!(f.token_can(&id, "shop", Action::View).unwrap());
        f.revoke("dana", "shop").unwrap();
        assert!(!f.token_can(&id, "shop", Action::View).unwrap());
    }

    #[test]
    fn an_admin_token_is_still_only_for_its_services() {
        let f = fixture();
        ready_user(&f, "root", Role::Admin);
        let token = f
            .create_token("root", "ci", &services(&["shop"]), T0 + HOUR, T0)
            .unwrap();
        let id = f.token_identity(token.plaintext(), T0).unwrap().unwrap();
        assert!(f.token_can(&id, "shop", Action::Deploy).unwrap());
        assert!(f.token_can(&id, "shop", Action::Drain).unwrap());
        assert!(!f.token_can(&id, "billing", Action::Deploy).unwrap());
        assert!(!f.token_can(&id, "shop", Action::ManageUsers).unwrap());
        assert!(!f.token_can(&id, "shop", Action::ViewAudit).unwrap());
    }

    #[test]
    fn an_owner_with_setup_pending_lends_no_rights() {
        let f = fixture();
        f.create_user("newbie", PASSWORD, Role::Admin).unwrap();
        let token = f
            .create_token("newbie", "ci", &services(&["shop"]), T0 + HOUR, T0)
            .unwrap();
        let id = f.token_identity(token.plaintext(), T0).unwrap().unwrap();
        assert!(!f.token_can(&id, "shop", Action::View).unwrap());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let f = fixture();
        ready_user(&f, "dana", Role::Deployer);
        let token = f
            .create_token("dana", "ci", &services(&["shop"]), T0 + HOUR, T0)
            .unwrap();
        assert!(
            f.token_identity(token.plaintext(), T0 + HOUR - 1)
                .unwrap()
                .is_some()
        );
        assert!(
            f.token_identity(token.plaintext(), T0 + HOUR)
                .unwrap()
                .is_none()
        );
        // A refused use is not recorded as a use.
        assert_eq!(
            f.tokens("dana").unwrap()[0].last_used_ms,
            Some(T0 + HOUR - 1)
        );
        assert_eq!(f.prune_expired(T0 + HOUR).unwrap(), 1);
        assert!(f.tokens("dana").unwrap().is_empty());
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let f = fixture();
        ready_user(&f, "dana", Role::Deployer);
        let shop = services(&["shop"]);
        let ci = f.create_token("dana", "ci", &shop, T0 + HOUR, T0).unwrap();
        let other = f
            .create_token("dana", "nightly", &shop, T0 + HOUR, T0)
            .unwrap();
        assert!(f.revoke_token("dana", "ci").unwrap());
        assert!(!f.revoke_token("dana", "ci").unwrap());
        assert!(f.token_identity(ci.plaintext(), T0).unwrap().is_none());
        assert!(f.token_identity(other.plaintext(), T0).unwrap().is_some());
        // The name is free again, for a new secret.
        let again = f.create_token("dana", "ci", &shop, T0 + HOUR, T0).unwrap();
        assert_ne!(again.plaintext(), ci.plaintext());
        assert!(f.token_identity(ci.plaintext(), T0).unwrap().is_none());
    }
}
