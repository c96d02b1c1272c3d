//! A client for Tomcat's Manager text API (`/manager/text/…`, role `manager-script`): deploy a
//! WAR by `PUT`, list contexts, undeploy. Every reply starts with `OK` or `FAIL`; errors quote
//! Tomcat's own words. The password is read from its file for each call (so it can be rotated),
//! goes only into the `Authorization` header, and never into a message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nonstop_http_client as http;

use crate::TomcatError;

/// One line of `/manager/text/list`: `/app:running:3:app##v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The context path, `/app` (`/` for ROOT).
    pub path: String,
    /// `running` or `stopped`.
    pub state: String,
    /// Active sessions.
    pub sessions: u64,
    /// The name Tomcat deployed it as: `app`, `app##v2`, `ROOT`; the last component of the
    /// docBase, without `.war`.
    pub name: String,
}

impl Listed {
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// The `##` version, if any.
    pub fn version(&self) -> Option<&str> {
        self.name.split_once("##").map(|(_, v)| v)
    }
}

/// Parses a `list` reply (after its `OK` line).
pub fn parse_list(body: &str) -> Vec<Listed> {
    body.lines()
        .skip(1)
        .filter_map(|line| {
            // docBase may itself hold ':' (never in webapps/ names, but an absolute path could).
            let mut parts = line.trim().splitn(4, ':');
            let path = parts.next()?.to_string();
            let state = parts.next()?.to_string();
            let sessions = parts.next()?.parse().ok()?;
            let doc_base = parts.next()?;
            let last = doc_base
                .trim_end_matches(['/', '\\'])
                .rsplit(['/', '\\'])
                .next()
                .unwrap_or(doc_base);
            let name = last.strip_suffix(".war").unwrap_or(last).to_string();
            Some(Listed {
                path,
                state,
                sessions,
                name,
            })
        })
        .collect()
}

/// Percent-encodes a query value made of plain-name characters (only `+` needs it).
fn query_value(value: &str) -> String {
    value.replace('%', "%25").replace('+', "%2B")
}

/// One Tomcat's manager.
#[derive(Debug, Clone)]
pub struct Manager {
    /// `http://127.0.0.1:8080/manager/text`, without a trailing `/`.
    pub url: String,
    pub user: String,
    pub password_file: PathBuf,
}

impl Manager {
    fn password(&self) -> Result<String, TomcatError> {
        let text = std::fs::read_to_string(&self.password_file).map_err(|e| TomcatError::File {
            path: self.password_file.clone(),
            message: format!("cannot read the manager password: {e}"),
        })?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    fn url(&self, command: &str) -> Result<http::Url, TomcatError> {
        http::Url::parse(&format!("{}/{command}", self.url))
            .map_err(|e| TomcatError::Config(format!("manager_url: {e}")))
    }

    fn error(&self, command: &str, message: String) -> TomcatError {
        TomcatError::Manager {
            url: format!("{}/{}", self.url, command.split('?').next().unwrap_or("")),
            message,
        }
    }

    /// Checks the status and the `OK` line; returns the whole body.
    fn check(&self, command: &str, answer: http::Response) -> Result<String, TomcatError> {
        match answer.status {
            200 => {}
            401 => {
                return Err(self.error(
                    command,
                    format!(
                        "user `{}` was refused (HTTP 401): check manager_user, the password in {} \
                         and that conf/tomcat-users.xml gives the user the role manager-script",
                        self.user,
                        self.password_file.display()
                    ),
                ));
            }
            403 => {
                return Err(self.error(
                    command,
                    format!(
                        "HTTP 403 for user `{}`: the user lacks the role manager-script (manager-gui \
                         is not enough for /manager/text), or the manager's RemoteAddrValve/RemoteCIDRValve \
                         refuses this address",
                        self.user
                    ),
                ));
            }
            404 => {
                return Err(self.error(
                    command,
                    "HTTP 404: no manager webapp there (Debian: apt-get install tomcat10-admin, and a \
                     conf/Catalina/localhost/manager.xml); check manager_url"
                        .into(),
                ));
            }
            status => {
                let first = answer.body.lines().next().unwrap_or_default();
                return Err(self.error(command, format!("HTTP {status}: {first}")));
            }
        }
        let first = answer.body.lines().next().unwrap_or_default().trim();
        if first.starts_with("OK") {
            Ok(answer.body)
        } else {
            Err(self.error(command, format!("Tomcat answered \"{first}\"")))
        }
    }

    async fn get(&self, command: &str, timeout: Duration) -> Result<String, TomcatError> {
        let url = self.url(command)?;
        let auth = http::basic_auth(&self.user, &self.password()?);
        let answer = http::get(&url, vec![("authorization", auth)], timeout)
            .await
            .map_err(|e| self.error(command, e.to_string()))?;
        self.check(command, answer)
    }

    /// `list`: every context of the host.
    pub async fn list(&self, timeout: Duration) -> Result<Vec<Listed>, TomcatError> {
        Ok(parse_list(&self.get("list", timeout).await?))
    }

    /// `PUT deploy?path=/CONTEXT` with the WAR: `version` for a parallel deployment, else
    /// `update=true` (the running one is undeployed first). Tomcat answers once the context has
    /// started or failed to; the `OK` line is returned.
    pub async fn deploy(
        &self,
        context: &str,
        version: Option<&str>,
        war: &Path,
        timeout: Duration,
    ) -> Result<String, TomcatError> {
        let command = match version {
            Some(v) => format!(
                "deploy?path={}&version={}",
                context_path(context),
                query_value(v)
            ),
            None => format!("deploy?path={}&update=true", context_path(context)),
        };
        let url = self.url(&command)?;
        let auth = http::basic_auth(&self.user, &self.password()?);
        let answer = http::send_file(&url, "PUT", &[("authorization", auth)], war, timeout)
            .await
            .map_err(|e| self.error(&command, e.to_string()))?;
        let body = self.check(&command, answer)?;
        Ok(body.lines().next().unwrap_or_default().trim().to_string())
    }

    /// `undeploy?path=/CONTEXT[&version=V]`: stops the context and deletes its WAR and directory.
    pub async fn undeploy(
        &self,
        context: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<(), TomcatError> {
        let mut command = format!("undeploy?path={}", context_path(context));
        if let Some(v) = version {
            command.push_str(&format!("&version={}", query_value(v)));
        }
        self.get(&command, timeout).await.map(drop)
    }
}

/// `/app` for context `app`, `/` for `ROOT`.
pub fn context_path(context: &str) -> String {
    if context == "ROOT" {
        "/".into()
    } else {
        format!("/{context}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_are_parsed() {
        let body = "OK - Listed applications for virtual host [localhost]\n\
                    /manager:running:0:/usr/share/tomcat10-admin/manager\n\
                    /app:running:3:app##0002\n\
                    /app:stopped:0:app##0003\n\
                    /:running:0:ROOT\n\
                    garbage\n";
        let listed = parse_list(body);
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].name, "manager");
        assert_eq!(
            listed[1],
            Listed {
                path: "/app".into(),
                state: "running".into(),
                sessions: 3,
                name: "app##0002".into()
            }
        );
        assert_eq!(listed[1].version(), Some("0002"));
        assert!(!listed[2].running());
        assert_eq!(listed[3].version(), None);
        assert_eq!(query_value("1.4+b"), "1.4%2Bb");
        assert_eq!(context_path("ROOT"), "/");
    }
}
