//! The jkstatus status worker over HTTP on loopback: `cmd=list` for activation, state, `busy`
//! (in-flight requests) and counters; `cmd=update` for `vwa` (activation) and `vwf` (lbfactor).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::ModjkError;
use crate::workers::{Activation, SharedWith};
use nonstop_http_client::{self as http, Url};

/// One member of the lb worker as jkstatus reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMember {
    pub name: String,
    pub address: String,
    pub route: String,
    pub activation: Activation,
    /// `OK`, `OK/IDLE`, `ERR`, `ERR/REC`, `N/A` ...
    pub state: String,
    /// Requests in flight right now.
    pub busy: i64,
    pub lbfactor: u32,
    pub elected: u64,
    pub errors: u64,
    /// The other lb workers jkstatus lists this member in (`line` 0: jkstatus has no lines).
    pub also_in: Vec<SharedWith>,
    /// Mounts of the lb worker whose rule extension (`;disabled=`, `;stopped=`, `;active=`)
    /// names this member: on that mount it wins over the activation jkstatus sets.
    pub mount_rules: Vec<MountRule>,
}

/// One mount rule extension naming a member, as jkstatus lists the lb worker's maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRule {
    /// `/app/*`.
    pub uri: String,
    /// Where mod_jk read it: `uriworkermap` (the JkMountFile), `JkMount`, …
    pub source: String,
    /// `disabled`, `stopped` or `active`.
    pub extension: &'static str,
}

/// A password file others can read is refused: it holds the key to stopping the site.
fn check_private(file: &std::path::Path) -> Result<(), ModjkError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| {
        ModjkError::Config(format!(
            "cannot read jkstatus password file {}: {e}",
            file.display()
        ))
    })?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(ModjkError::Config(format!(
            "the jkstatus password file {} is readable by every user (mode {:o}); run `chmod 600 {}`",
            file.display(),
            meta.permissions().mode() & 0o777,
            file.display()
        )));
    }
    Ok(())
}

/// The status worker's address and credentials.
#[derive(Debug, Clone)]
pub struct StatusClient {
    url: Url,
    user: Option<String>,
    password_file: Option<PathBuf>,
    timeout: Duration,
}

impl StatusClient {
    /// `url` must be on loopback: jkstatus can take the whole site down.
    pub fn new(
        url: &str,
        user: Option<String>,
        password_file: Option<PathBuf>,
    ) -> Result<StatusClient, ModjkError> {
        let url = Url::parse(url).map_err(|e| ModjkError::Config(e.to_string()))?;
        if !url.is_loopback() {
            return Err(ModjkError::Config(format!(
                "the jkstatus url must be on loopback (127.0.0.1, ::1 or localhost), not `{}`: \
                 a status worker reachable from the network lets anyone stop the site",
                url.host
            )));
        }
        if url.path.contains('?') {
            return Err(ModjkError::Config(
                "the jkstatus url is the status worker's mount (e.g. http://127.0.0.1:80/jkstatus), without a query".into(),
            ));
        }
        if user.is_none() || password_file.is_none() {
            return Err(ModjkError::Config(
                "jkstatus needs `user` and `password_file` (Basic auth): an unprotected status worker lets any local process stop the site; protect it in Apache (docs/balancers/modjk.md, \"Security of the status worker\") and give both".into(),
            ));
        }
        Ok(StatusClient {
            url,
            user,
            password_file,
            timeout: Duration::from_secs(5),
        })
    }

    async fn call(&self, query: &str) -> Result<BTreeMap<String, String>, ModjkError> {
        let mut url = self.url.clone();
        url.path = format!("{}?{query}", url.path);
        let mut headers = Vec::new();
        if let (Some(user), Some(file)) = (&self.user, &self.password_file) {
            check_private(file)?;
            let password = std::fs::read_to_string(file).map_err(|e| {
                ModjkError::Config(format!(
                    "cannot read jkstatus password file {}: {e}",
                    file.display()
                ))
            })?;
            let password = password.trim_end_matches(['\n', '\r']);
            headers.push(("Authorization", http::basic_auth(user, password)));
        }
        let response = http::get(&url, headers, self.timeout)
            .await
            .map_err(|e| ModjkError::Status(e.to_string()))?;
        if response.status != 200 {
            return Err(ModjkError::Status(format!(
                "jkstatus at {}:{}{} answered HTTP {}{}",
                self.url.host,
                self.url.port,
                self.url.path,
                response.status,
                if response.status == 401 || response.status == 403 {
                    " (check the driver's user/password_file and Apache's Require lines)"
                } else {
                    ""
                }
            )));
        }
        let props = parse_props(&response.body);
        match props.get("worker.result.type").map(String::as_str) {
            Some("OK") => Ok(props),
            other => Err(ModjkError::Status(format!(
                "jkstatus refused `{query}`: {} {}",
                other.unwrap_or("no result"),
                props
                    .get("worker.result.message")
                    .map_or("", String::as_str)
            ))),
        }
    }

    /// The members of load-balancer worker `lb`.
    pub async fn list(&self, lb: &str) -> Result<Vec<StatusMember>, ModjkError> {
        let props = self.call("cmd=list&mime=prop").await?;
        members(&props, lb)
    }

    pub async fn set_activation(
        &self,
        lb: &str,
        member: &str,
        activation: Activation,
    ) -> Result<(), ModjkError> {
        let vwa = match activation {
            Activation::Active => "a",
            Activation::Disabled => "d",
            Activation::Stopped => "s",
        };
        self.update(lb, member, &format!("vwa={vwa}")).await
    }

    pub async fn set_lbfactor(
        &self,
        lb: &str,
        member: &str,
        lbfactor: u32,
    ) -> Result<(), ModjkError> {
        self.update(lb, member, &format!("vwf={lbfactor}")).await
    }

    /// Clears the member's runtime state (an error state from while its Tomcat was down), so
    /// mod_jk tries it at once instead of after the lb's `recover_time` (60 s by default).
    pub async fn reset(&self, lb: &str, member: &str) -> Result<(), ModjkError> {
        check_worker_names(lb, member)?;
        self.call(&format!("cmd=reset&mime=prop&w={lb}&sw={member}"))
            .await
            .map(drop)
    }

    async fn update(&self, lb: &str, member: &str, change: &str) -> Result<(), ModjkError> {
        check_worker_names(lb, member)?;
        self.call(&format!("cmd=update&mime=prop&w={lb}&sw={member}&{change}"))
            .await
            .map(drop)
    }
}

/// Worker names go into a query string: only what mod_jk itself allows in a name.
fn check_worker_names(lb: &str, member: &str) -> Result<(), ModjkError> {
    for name in [lb, member] {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ModjkError::Config(format!(
                "`{name}` is not a mod_jk worker name"
            )));
        }
    }
    Ok(())
}

/// `key=value` lines; a repeated `worker.LB.balance_workers` is joined with `,`: mod_jk 1.2.48's
/// `mime=prop` list prints one such line per member, each before that member's own lines.
fn parse_props(body: &str) -> BTreeMap<String, String> {
    let mut props = BTreeMap::new();
    for (key, value) in body.lines().filter_map(|l| l.split_once('=')) {
        let (key, value) = (key.trim(), value.trim());
        match props.get_mut(key) {
            Some(old) if key.ends_with(".balance_workers") => {
                let old: &mut String = old;
                if !old.split(',').any(|m| m == value) {
                    old.push(',');
                    old.push_str(value);
                }
            }
            _ => {
                props.insert(key.to_string(), value.to_string());
            }
        }
    }
    props
}

fn members(props: &BTreeMap<String, String>, lb: &str) -> Result<Vec<StatusMember>, ModjkError> {
    let list = props
        .get(&format!("worker.{lb}.balance_workers"))
        .ok_or_else(|| {
            ModjkError::Status(format!("jkstatus knows no load-balancer worker `{lb}`"))
        })?;
    let others: Vec<(&str, Vec<&str>)> = props
        .iter()
        .filter_map(|(key, value)| {
            let other = key
                .strip_prefix("worker.")?
                .strip_suffix(".balance_workers")?;
            let names = value.split(',').map(str::trim).filter(|n| !n.is_empty());
            (other != lb).then(|| (other, names.collect()))
        })
        .collect();
    let maps = mount_rules(props, lb);
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let get = |key: &str| props.get(&format!("worker.{name}.{key}")).cloned();
        let number = |key: &str| get(key).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let activation = match get("activation").as_deref() {
            Some("DIS") => Activation::Disabled,
            Some("STP") => Activation::Stopped,
            _ => Activation::Active,
        };
        out.push(StatusMember {
            name: name.to_string(),
            address: get("address").unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    get("host").unwrap_or_default(),
                    get("port").unwrap_or_default()
                )
            }),
            route: get("route").unwrap_or_else(|| name.to_string()),
            activation,
            state: get("state").unwrap_or_default(),
            busy: number("busy"),
            lbfactor: number("lbfactor").try_into().unwrap_or(1),
            elected: number("elected").try_into().unwrap_or(0),
            errors: number("errors").try_into().unwrap_or(0),
            also_in: others
                .iter()
                .filter(|(_, names)| names.contains(&name))
                .map(|(other, names)| SharedWith {
                    lb: other.to_string(),
                    line: 0,
                    members: names.len(),
                })
                .collect(),
            mount_rules: maps
                .iter()
                .filter(|(member, _)| member == name)
                .map(|(_, rule)| rule.clone())
                .collect(),
        });
    }
    Ok(out)
}

/// Every (member, rule) of lb worker `lb`'s maps: `worker.LB.map.N.{disabled,stopped,active}`
/// list members (comma-separated; empty when the mount has no such extension).
fn mount_rules(props: &BTreeMap<String, String>, lb: &str) -> Vec<(String, MountRule)> {
    let prefix = format!("worker.{lb}.map.");
    let mut rules = Vec::new();
    for (key, value) in props {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let Some((n, field)) = rest.split_once('.') else {
            continue;
        };
        let extension = match field {
            "disabled" => "disabled",
            "stopped" => "stopped",
            "active" => "active",
            _ => continue,
        };
        let map = |f: &str| {
            props
                .get(&format!("{prefix}{n}.{f}"))
                .cloned()
                .unwrap_or_default()
        };
        for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            rules.push((
                member.to_string(),
                MountRule {
                    uri: map("uri"),
                    source: map("source"),
                    extension,
                },
            ));
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_no_auth_and_a_world_readable_password_file() {
        let url = "http://127.0.0.1:9/jkstatus";
        let err = StatusClient::new(url, None, None).unwrap_err().to_string();
        assert!(err.contains("needs `user` and `password_file`"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jk.pw");
        std::fs::write(&file, "secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let client = StatusClient::new(url, Some("nonstop".into()), Some(file.clone())).unwrap();
        let err = client.list("lb").await.unwrap_err().to_string();
        assert!(err.contains("readable by every user (mode 644)"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        // Private, it is used (here the port is closed: the error is reaching it).
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = client.list("lb").await.unwrap_err().to_string();
        assert!(!err.contains("readable"), "{err}");
    }

    #[test]
    fn parses_a_list_reply() {
        let body = "worker.result.type=OK\nworker.result.message=Action finished\n\
                    worker.list=lb,jkstatus\nworker.lb.type=lb\nworker.lb.balance_workers=tomcat1,tomcat2\n\
                    worker.tomcat1.type=ajp13\nworker.tomcat1.address=127.0.0.1:8009\n\
                    worker.tomcat1.activation=DIS\nworker.tomcat1.lbfactor=1\nworker.tomcat1.route=tomcat1\n\
                    worker.tomcat1.state=OK\nworker.tomcat1.busy=3\nworker.tomcat1.elected=42\nworker.tomcat1.errors=0\n\
                    worker.tomcat2.activation=ACT\nworker.tomcat2.state=OK/IDLE\nworker.tomcat2.busy=0\n";
        let m = members(&parse_props(body), "lb").unwrap();
        assert_eq!(m[0].activation, Activation::Disabled);
        assert_eq!(
            (m[0].busy, m[0].elected, m[0].address.as_str()),
            (3, 42, "127.0.0.1:8009")
        );
        assert_eq!(
            (m[1].activation, m[1].state.as_str()),
            (Activation::Active, "OK/IDLE")
        );
        assert!(members(&parse_props(body), "other").is_err());
        assert!(m.iter().all(|m| m.mount_rules.is_empty()));
    }

    /// The map lines of mod_jk 1.2.48 for `/app/*=lb;disabled=tomcat1` read from a JkMountFile.
    #[test]
    fn reads_the_mount_rules_that_name_a_member() {
        let body = "worker.result.type=OK\nworker.lb.type=lb\nworker.lb.balance_workers=tomcat1,tomcat2\n\
                    worker.lb.map_count=2\n\
                    worker.lb.map.1.uri=/app/*\nworker.lb.map.1.source=uriworkermap\n\
                    worker.lb.map.1.active=\nworker.lb.map.1.disabled=tomcat1\nworker.lb.map.1.stopped=\n\
                    worker.lb.map.2.uri=/api/*\nworker.lb.map.2.source=JkMount\n\
                    worker.lb.map.2.disabled=\nworker.lb.map.2.stopped=tomcat1, tomcat2\n";
        let m = members(&parse_props(body), "lb").unwrap();
        let rule = |uri: &str, source: &str, extension| MountRule {
            uri: uri.into(),
            source: source.into(),
            extension,
        };
        assert_eq!(
            m[0].mount_rules,
            [
                rule("/app/*", "uriworkermap", "disabled"),
                rule("/api/*", "JkMount", "stopped")
            ]
        );
        assert_eq!(m[1].mount_rules, [rule("/api/*", "JkMount", "stopped")]);
    }

    /// The shape of a real `cmd=list&mime=prop` reply of mod_jk 1.2.48 (Debian 12), shortened:
    /// `balance_workers` comes once per member.
    #[test]
    fn parses_one_balance_workers_line_per_member() {
        let body = "worker.list=balancer\nworker.balancer.type=lb\nworker.balancer.member_count=2\n\
                    worker.balancer.balance_workers=tomcat1\nworker.tomcat1.type=ajp13\n\
                    worker.tomcat1.address=127.0.0.1:39437\nworker.tomcat1.activation=ACT\n\
                    worker.tomcat1.state=OK\nworker.tomcat1.busy=1\n\
                    worker.balancer.balance_workers=tomcat2\nworker.tomcat2.type=ajp13\n\
                    worker.tomcat2.activation=DIS\nworker.tomcat2.state=OK/IDLE\nworker.tomcat2.busy=0\n\
                    worker.balancer.map.1.uri=/app/*\nworker.result.type=OK\n";
        let m = members(&parse_props(body), "balancer").unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["tomcat1", "tomcat2"]);
        assert!(m.iter().all(|m| m.also_in.is_empty()));
        // is-deploy's balancer_ex1: another lb worker over tomcat2 alone.
        let shared = format!("{body}worker.balancer_ex1.balance_workers=tomcat2\n");
        let m = members(&parse_props(&shared), "balancer").unwrap();
        assert_eq!(
            m[1].also_in,
            [SharedWith {
                lb: "balancer_ex1".into(),
                line: 0,
                members: 1
            }]
        );
        assert_eq!((m[0].busy, m[1].activation), (1, Activation::Disabled));
    }

    #[test]
    fn refuses_a_non_loopback_status_url() {
        let e = StatusClient::new("http://10.1.2.3/jkstatus", None, None).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let pw = Some(PathBuf::from("/etc/nonstop/jk.pw"));
        assert!(StatusClient::new("http://127.0.0.1:81/jkstatus", Some("u".into()), pw).is_ok());
        assert!(StatusClient::new("http://localhost/jkstatus", Some("u".into()), None).is_err());
    }
}
