//! Roles: admin is global; deployer and viewer are granted per service and never exceed the
//! account's own role. An account that has not finished its setup may do nothing.

use std::fmt;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Accounts, AccountsError, Result, check_service};

/// Ordered weakest first, so `min` of two roles is the one that allows less.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    View,
    Deploy,
    Rollback,
    Drain,
    ManageUsers,
    ViewAudit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "deployer" => Some(Role::Deployer),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// What this role allows on a service it applies to.
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Deployer => matches!(
                action,
                Action::View | Action::Deploy | Action::Rollback | Action::Drain
            ),
            Role::Viewer => action == Action::View,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for Role {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Role {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Role::parse(text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown role `{text}`").into()))
    }
}

impl Accounts {
    /// Gives `user` `role` on `service` (replacing an earlier grant there).
    pub fn grant(&self, user: &str, service: &str, role: Role) -> Result<()> {
        check_service(service)?;
        if role == Role::Admin {
            return Err(AccountsError::AdminIsGlobal);
        }
        let account = self.existing_user(user)?;
        if role > account.role {
            return Err(AccountsError::GrantAboveRole {
                user: user.to_string(),
                role: account.role,
                granted: role,
            });
        }
        self.db.execute(
            "INSERT INTO grants (user, service, role) VALUES (?1, ?2, ?3)
             ON CONFLICT (user, service) DO UPDATE SET role = excluded.role",
            params![user, service, role],
        )?;
        Ok(())
    }

    /// Takes back `user`'s grant on `service`; false if there was none.
    pub fn revoke(&self, user: &str, service: &str) -> Result<bool> {
        Ok(self.db.execute(
            "DELETE FROM grants WHERE user = ?1 AND service = ?2",
            params![user, service],
        )? > 0)
    }

    /// `user`'s grants as (service, role), by service.
    pub fn grants(&self, user: &str) -> Result<Vec<(String, Role)>> {
        let mut stmt = self
            .db
            .prepare("SELECT service, role FROM grants WHERE user = ?1 ORDER BY service")?;
        let grants = stmt
            .query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(grants)
    }

    /// Whether `user` may do `action` on `service` (`ManageUsers` and `ViewAudit` are for admins
    /// only, whatever the service). Unknown users and unfinished accounts may do nothing.
    pub fn can(&self, user: &str, service: &str, action: Action) -> Result<bool> {
        let Some(account) = self.user(user)? else {
            return Ok(false);
        };
        if account.setup_pending() {
            return Ok(false);
        }
        if account.role == Role::Admin {
            return Ok(true);
        }
        let granted: Option<Role> = self
            .db
            .query_row(
                "SELECT role FROM grants WHERE user = ?1 AND service = ?2",
                params![user, service],
                |r| r.get(0),
            )
            .optional()?;
        Ok(granted.is_some_and(|role| role.min(account.role).allows(action)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    const ALL: [Action; 6] = [
        Action::View,
        Action::Deploy,
        Action::Rollback,
        Action::Drain,
        Action::ManageUsers,
        Action::ViewAudit,
    ];

    #[test]
    fn admin_can_do_everything_everywhere() {
        let f = fixture();
        ready_user(&f, "root", Role::Admin);
        for action in ALL {
            assert!(f.can("root", "shop", action).unwrap(), "{action:?}");
            assert!(
                f.can("root", "never-granted", action).unwrap(),
                "{action:?}"
            );
        }
    }

    #[test]
    fn viewer_can_only_view() {
        let f = fixture();
        ready_user(&f, "vera", Role::Viewer);
        f.grant("vera", "shop", Role::Viewer).unwrap();
        assert!(f.can("vera", "shop", Action::View).unwrap());
        for action in &ALL[1..] {
            assert!(!f.can("vera", "shop", *action).unwrap(), "{action:?}");
        }
        assert!(!f.can("vera", "billing", Action::View).unwrap());
    }

    #[test]
    fn deployer_acts_only_on_granted_services() {
        let f = fixture();
        ready_user(&f, "dana", Role::Deployer);
        f.grant("dana", "a", Role::Deployer).unwrap();
        for action in [
            Action::View,
            Action::Deploy,
            Action::Rollback,
            Action::Drain,
        ] {
            assert!(f.can("dana", "a", action).unwrap(), "{action:?}");
            assert!(!f.can("dana", "b", action).unwrap(), "{action:?}");
        }
        assert!(!f.can("dana", "a", Action::ManageUsers).unwrap());
        assert!(!f.can("dana", "a", Action::ViewAudit).unwrap());

        f.grant("dana", "b", Role::Viewer).unwrap();
        assert!(f.can("dana", "b", Action::View).unwrap());
        assert!(!f.can("dana", "b", Action::Deploy).unwrap());

        assert!(f.revoke("dana", "a").unwrap());
        assert!(!f.revoke("dana", "a").unwrap());
        assert!(!f.can("dana", "a", Action::Deploy).unwrap());
        assert_eq!(f.grants("dana").unwrap(), vec![("b".into(), Role::Viewer)]);
    }

    #[test]
    fn grants_never_exceed_the_account_role() {
        let f = fixture();
        ready_user(&f, "vera", Role::Viewer);
        assert!(matches!(
            f.grant("vera", "shop", Role::Deployer),
            Err(AccountsError::GrantAboveRole { .. })
        ));
        assert!(matches!(
            f.grant("vera", "shop", Role::Admin),
            Err(AccountsError::AdminIsGlobal)
        ));
        assert!(matches!(
            f.grant("vera", "bad service", Role::Viewer),
            Err(AccountsError::BadService(_))
        ));
        assert!(matches!(
            f.grant("ghost", "shop", Role::Viewer),
            Err(AccountsError::NoSuchUser(_))
        ));

        // Lowering the account role takes effect on existing grants at once.
        ready_user(&f, "dana", Role::Deployer);
        f.grant("dana", "shop", Role::Deployer).unwrap();
        f.set_role("dana", Role::Viewer).unwrap();
        assert!(!f.can("dana", "shop", Action::Deploy).unwrap());
        assert!(f.can("dana", "shop", Action::View).unwrap());
    }

    #[test]
    fn unfinished_and_unknown_accounts_can_do_nothing() {
        let f = fixture();
        f.create_user("newbie", PASSWORD, Role::Admin).unwrap();
        assert!(!f.can("newbie", "shop", Action::View).unwrap());
        assert!(!f.can("nobody", "shop", Action::View).unwrap());
    }
}
