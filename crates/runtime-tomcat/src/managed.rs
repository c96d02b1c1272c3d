//! `deploy = "manager"`: the Tomcat of a node keeps running and WARs go in through its Manager
//! text API.
//!
//! An [`Instance`] is one version of the context in that Tomcat: its `pid` is the Tomcat JVM
//! (0 for a Tomcat nonstop did not start, e.g. a systemd unit: its liveness then comes from the
//! manager alone), its `version` the release. The JVM nonstop starts is recorded in
//! `CATALINA_BASE/nonstop/tomcat.pid` so the next deploy (another nonstop process) finds it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nonstop_http_client as http;
use nonstop_ports::{Instance, InstanceSpec, is_plain_name};

use crate::manager::{Listed, Manager, context_path};
use crate::{
    FAILURE_MARKERS, LIST_CACHE, MANAGER_TIMEOUT, ManagerConfig, TomcatError, TomcatRuntime,
    read_from,
};

/// The Tomcat JVM that serves a node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    pid: i32,
    start_ticks: u64,
    log: PathBuf,
}

/// Refuses a password file others may read (or that cannot be read at all).
pub(crate) fn check_password_file(path: &Path) -> Result<(), TomcatError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |message: String| TomcatError::File {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("manager_password_file: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(err(format!(
            "manager_password_file is readable by everyone (mode {mode:03o}): chmod o-rwx it"
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| err(format!("manager_password_file: cannot read: {e}")))?;
    Ok(())
}

/// A Tomcat `##` version: a plain name (`+` is percent-encoded in the query); never `#` or `/`.
fn check_version(version: &str) -> Result<(), TomcatError> {
    if !is_plain_name(version, 100) {
        return Err(TomcatError::Refused(format!(
            "version `{version}` cannot be a Tomcat parallel-deployment version: use letters, \
             digits, `.`, `_`, `-` (e.g. a zero-padded build number or a timestamp)"
        )));
    }
    Ok(())
}

fn read_server(path: &Path) -> Option<Server> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let mut first = lines.next()?.split_whitespace();
    let pid = first.next()?.parse().ok()?;
    let start_ticks = first.next()?.parse().ok()?;
    let log = PathBuf::from(lines.next()?);
    Some(Server {
        pid,
        start_ticks,
        log,
    })
}

fn alive(pid: i32, start_ticks: u64) -> bool {
    pid > 0
        && nonstop_runtime_process::start_ticks(pid).is_some_and(|t| t == start_ticks)
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().chars().next()))
            .flatten()
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Lengths of the Tomcat's log and of the files in `CATALINA_BASE/logs/` (where a context's
/// listener exceptions go, in `localhost.DATE.log`), to read what a deploy adds to them.
fn log_marks(server_log: &Path, base: &Path) -> Vec<(PathBuf, u64)> {
    let mut marks = vec![(server_log.to_path_buf(), file_len(server_log))];
    if let Ok(entries) = std::fs::read_dir(base.join("logs")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && path != server_log {
                marks.push((path.clone(), file_len(&path)));
            }
        }
    }
    marks
}

/// Tomcat's own words about a failed context, from what its logs got since `marks` (files
/// created since are read whole): the SEVERE lines and the exception lines, at most `max`.
fn failure_lines(marks: &[(PathBuf, u64)], base: &Path, max: usize) -> String {
    let mut files: Vec<(PathBuf, u64)> = marks.to_vec();
    if let Ok(entries) = std::fs::read_dir(base.join("logs")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && !files.iter().any(|(p, _)| *p == path) {
                files.push((path, 0));
            }
        }
    }
    let mut lines = Vec::new();
    for (path, offset) in files {
        let text = read_from(&path, offset);
        lines.extend(
            text.lines()
                .filter(|l| {
                    l.contains("SEVERE")
                        || l.contains("Exception")
                        || FAILURE_MARKERS.iter().any(|m| l.contains(m))
                })
                .filter(|l| !l.trim_start().starts_with("at "))
                .map(|l| l.trim().chars().take(400).collect::<String>()),
        );
    }
    // The console log and logs/catalina.DATE.log carry the same lines.
    let mut seen = std::collections::BTreeSet::new();
    lines.retain(|l| seen.insert(l.clone()));
    lines[..lines.len().min(max)].join("\n")
}

impl TomcatRuntime {
    /// `CATALINA_BASE/nonstop/CONTEXT.NAME`: one Tomcat may hold several contexts.
    fn keep_file(&self, base: &Path, name: &str) -> PathBuf {
        base.join("nonstop")
            .join(format!("{}.{name}", self.config.context))
    }

    /// The manager of `node`'s Tomcat, listening on `port`.
    pub(crate) fn manager_of(&self, m: &ManagerConfig, node: &str, port: u16) -> Manager {
        let template = m.urls.get(node).unwrap_or(&m.url);
        Manager {
            url: template
                .replace("{port}", &port.to_string())
                .trim_end_matches('/')
                .to_string(),
            user: m.user.clone(),
            password_file: m.password_file.clone(),
        }
    }

    /// The name Tomcat deploys this version as: `app`, or `app##VERSION` with `parallel`.
    fn deployed_name(&self, m: &ManagerConfig, version: &str) -> String {
        if m.parallel {
            format!("{}##{version}", self.config.context)
        } else {
            self.config.context.clone()
        }
    }

    pub(crate) fn ours<'a>(&self, listed: &'a [Listed]) -> impl Iterator<Item = &'a Listed> + 'a {
        let path = context_path(&self.config.context);
        listed.iter().filter(move |l| l.path == path)
    }

    async fn list(&self, manager: &Manager) -> Result<Vec<Listed>, TomcatError> {
        let listed = manager.list(MANAGER_TIMEOUT).await?;
        if let Ok(mut cache) = self.lists.lock() {
            cache.insert(manager.url.clone(), (Instant::now(), listed.clone()));
        }
        Ok(listed)
    }

    async fn cached_list(&self, manager: &Manager) -> Result<Vec<Listed>, TomcatError> {
        if let Ok(cache) = self.lists.lock()
            && let Some((at, listed)) = cache.get(&manager.url)
            && at.elapsed() < LIST_CACHE
        {
            return Ok(listed.clone());
        }
        self.list(manager).await
    }

    /// The Tomcat serving `spec.node`: the one nonstop started before if it still runs, a Tomcat
    /// someone else started on the node's port (pid 0), or a new `catalina.sh run` whose manager
    /// answers.
    async fn ensure_server(
        &self,
        spec: &InstanceSpec,
        base: &Path,
        manager: &Manager,
    ) -> Result<Server, TomcatError> {
        let state = base.join("nonstop/tomcat.pid");
        if let Some(server) = read_server(&state)
            && alive(server.pid, server.start_ticks)
        {
            return Ok(server);
        }
        if std::net::TcpStream::connect(("127.0.0.1", spec.port)).is_ok() {
            // Not ours (systemd, a distro service): deployed to as it is, never stopped.
            return Ok(Server {
                pid: 0,
                start_ticks: 0,
                log: base.join("logs"),
            });
        }
        let (instance, offset) = self.launch(spec, base)?;
        let server = Server {
            pid: instance.pid,
            start_ticks: instance.start_ticks,
            log: instance.log.clone(),
        };
        let keep = base.join("nonstop");
        std::fs::create_dir_all(&keep)
            .and_then(|()| {
                std::fs::write(
                    &state,
                    format!(
                        "{} {}\n{}\n",
                        server.pid,
                        server.start_ticks,
                        server.log.display()
                    ),
                )
            })
            .map_err(|e| TomcatError::File {
                path: state.clone(),
                message: format!("cannot record the Tomcat's pid: {e}"),
            })?;
        let deadline = Instant::now() + self.startup_timeout;
        let last = loop {
            if !alive(server.pid, server.start_ticks) {
                break "the JVM exited".to_string();
            }
            let last = match manager.list(Duration::from_secs(5)).await {
                Ok(_) => return Ok(server),
                // A wrong password or a missing manager is not going to fix itself.
                Err(e @ TomcatError::Manager { .. })
                    if !e.to_string().contains("cannot reach")
                        && !e.to_string().contains("did not answer") =>
                {
                    let _ = nonstop_runtime_process::stop(&instance, Duration::from_secs(20)).await;
                    return Err(e);
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                break last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let _ = nonstop_runtime_process::stop(&instance, Duration::from_secs(20)).await;
        Err(TomcatError::StartFailed {
            node: spec.node.to_string(),
            reason: format!(
                "its manager did not answer within {:?}: {last}",
                self.startup_timeout
            ),
            log: server.log.display().to_string(),
            tail: nonstop_runtime_process::log_tail(&server.log, offset, 15),
        })
    }

    /// Manager mode: makes sure the node's Tomcat runs, then `PUT deploy` of the WAR —
    /// `update=true` in place, or with `parallel` as `CONTEXT##VERSION` beside the running
    /// versions (refused unless it sorts after all of them: Tomcat sends new sessions to the
    /// version that sorts last) — then waits until the manager lists it as running and the
    /// health path answers 200.
    ///
    /// On failure the runtime cleans up on its own: a failed parallel version is undeployed (the
    /// old ones never stopped serving); in place, the WAR that was deployed before is deployed
    /// again. The error quotes Tomcat.
    pub async fn manager_start(
        &self,
        spec: &InstanceSpec,
        m: &ManagerConfig,
    ) -> Result<Instance, TomcatError> {
        let base = self.base(&spec.node)?.to_path_buf();
        let version = spec.version.as_str();
        if m.parallel {
            check_version(version)?;
        }
        let manager = self.manager_of(m, spec.node.as_str(), spec.port);
        let server = self.ensure_server(spec, &base, &manager).await?;
        let instance = Instance {
            node: spec.node.clone(),
            version: spec.version.clone(),
            port: spec.port,
            pid: server.pid,
            start_ticks: server.start_ticks,
            log: server.log.clone(),
        };
        let name = self.deployed_name(m, version);
        let listed = self.list(&manager).await?;
        let keep = base.join("nonstop");
        if m.parallel {
            if let Some(newer) = self
                .ours(&listed)
                .filter(|l| l.name != name && l.running())
                .find(|l| l.version().unwrap_or("") >= version)
            {
                return Err(TomcatError::Refused(format!(
                    "Tomcat {} runs {} whose version sorts after (or as) `{version}`: Tomcat sends \
                     new sessions to the version that sorts last as a string, so `{version}` would \
                     get none; use versions that sort in deploy order (zero-padded numbers, \
                     timestamps) or undeploy {} first",
                    spec.node, newer.name, newer.name
                )));
            }
            if let Some(same) = self.ours(&listed).find(|l| l.name == name) {
                if same.running() {
                    // Already deployed (a rollback to a version still serving its sessions).
                    self.wait_healthy(spec, &instance).await?;
                    return Ok(instance);
                }
                manager
                    .undeploy(&self.config.context, Some(version), MANAGER_TIMEOUT)
                    .await?;
            }
        } else {
            std::fs::create_dir_all(&keep).map_err(|e| TomcatError::File {
                path: keep.clone(),
                message: format!("cannot create: {e}"),
            })?;
            let war = self.war(&base);
            if war.is_file() {
                crate::copy_synced(&war, &self.keep_file(&base, "previous.war")).map_err(|e| {
                    TomcatError::File {
                        path: war.clone(),
                        message: format!("cannot back up: {e}"),
                    }
                })?;
            } else {
                let _ = std::fs::remove_file(self.keep_file(&base, "previous.war"));
            }
        }
        let marks = log_marks(&server.log, &base);
        let deployed = manager
            .deploy(
                &self.config.context,
                m.parallel.then_some(version),
                &spec.artifact,
                self.startup_timeout + Duration::from_secs(60),
            )
            .await;
        let result = match deployed {
            Ok(_) => self.wait_running(&manager, &name).await,
            Err(e) => Err(e.to_string()),
        };
        let result = match result {
            Ok(()) => self
                .wait_healthy(spec, &instance)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let Err(reason) = result else {
            if !m.parallel {
                let _ = std::fs::write(self.keep_file(&base, "deployed-version"), version);
            }
            return Ok(instance);
        };
        // Tomcat's words from its log: the manager's FAIL line says only that it failed. The
        // context's exception goes to logs/localhost.DATE.log through JULI's AsyncFileHandler,
        // which writes from a thread of its own: it may land a moment after the FAIL answer.
        let said = {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let said = failure_lines(&marks, &base, 10);
                if said.contains("Exception") || Instant::now() >= deadline {
                    break said;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let cleanup = if m.parallel {
            match manager
                .undeploy(&self.config.context, Some(version), MANAGER_TIMEOUT)
                .await
            {
                Ok(()) => {
                    let serving: Vec<String> = self
                        .list(&manager)
                        .await
                        .map(|l| {
                            self.ours(&l)
                                .filter(|l| l.running())
                                .map(|l| l.name.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    format!(
                        "{name} was undeployed again; still serving: {}",
                        if serving.is_empty() {
                            "nothing".into()
                        } else {
                            serving.join(", ")
                        }
                    )
                }
                Err(e) => format!("undeploying {name} again failed too: {e}"),
            }
        } else {
            let previous = self.keep_file(&base, "previous.war");
            if previous.is_file() {
                // The manager may delete its own copy: deploy from one of ours.
                let again = self.keep_file(&base, "redeploy.war");
                let restored = match crate::copy_synced(&previous, &again) {
                    Ok(()) => manager
                        .deploy(
                            &self.config.context,
                            None,
                            &again,
                            self.startup_timeout + Duration::from_secs(60),
                        )
                        .await
                        .map(drop),
                    Err(e) => Err(TomcatError::File {
                        path: previous.clone(),
                        message: e.to_string(),
                    }),
                };
                let _ = std::fs::remove_file(&again);
                match restored {
                    Ok(()) => "the WAR deployed before was deployed again".to_string(),
                    Err(e) => format!("deploying the WAR from before again failed too: {e}"),
                }
            } else {
                let _ = std::fs::remove_file(self.keep_file(&base, "deployed-version"));
                "there was no WAR before it to deploy again".to_string()
            }
        };
        Err(TomcatError::StartFailed {
            node: spec.node.to_string(),
            reason: format!("{reason}; {cleanup}"),
            log: server.log.display().to_string(),
            tail: said,
        })
    }

    /// Until the manager lists `name` as running; a stopped one (its start failed) is an error.
    async fn wait_running(&self, manager: &Manager, name: &str) -> Result<(), String> {
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            let listed = self.list(manager).await.map_err(|e| e.to_string())?;
            match self.ours(&listed).find(|l| l.name == name) {
                Some(l) if l.running() => return Ok(()),
                Some(l) => {
                    return Err(format!(
                        "the manager lists {} as {} after deploying it",
                        l.name, l.state
                    ));
                }
                None if Instant::now() >= deadline => {
                    return Err(format!(
                        "{name} is not in the manager's list within {:?}",
                        self.startup_timeout
                    ));
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until the health path answers 200 on the node's port (a request without a session: the
    /// newest version answers it).
    async fn wait_healthy(
        &self,
        spec: &InstanceSpec,
        instance: &Instance,
    ) -> Result<(), TomcatError> {
        let url = http::Url::parse(&format!(
            "http://127.0.0.1:{}{}",
            spec.port,
            self.health_path()
        ))
        .map_err(|e| TomcatError::Config(format!("health_path: {e}")))?;
        let deadline = Instant::now() + self.startup_timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if instance.pid != 0 && !alive(instance.pid, instance.start_ticks) {
                last = "the JVM exited".into();
                break;
            }
            match http::get(&url, Vec::new(), Duration::from_secs(5)).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{} answered HTTP {}", url.path, r.status),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(TomcatError::Refused(format!(
            "{} {} deployed but not healthy within {:?}: {last}",
            spec.node, spec.version, self.startup_timeout
        )))
    }

    /// Manager mode: undeploys this version; the Tomcat keeps running. With `parallel`, first
    /// waits until the version has no active sessions left or `grace` has passed (new sessions
    /// already go to the newer version, so the old one only serves the ones it has). In place,
    /// undeploys at once (the engine drained the node) — unless a newer deploy has replaced
    /// this version already, then there is nothing to stop.
    pub async fn manager_stop(
        &self,
        instance: &Instance,
        m: &ManagerConfig,
        grace: Duration,
    ) -> Result<(), TomcatError> {
        let base = self.base(&instance.node)?.to_path_buf();
        let manager = self.manager_of(m, instance.node.as_str(), instance.port);
        let name = self.deployed_name(m, instance.version.as_str());
        if !m.parallel {
            let recorded = std::fs::read_to_string(self.keep_file(&base, "deployed-version")).ok();
            if recorded.is_some_and(|v| v.trim() != instance.version.as_str()) {
                return Ok(());
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let listed = match self.list(&manager).await {
                Ok(listed) => listed,
                // No Tomcat, no context to stop.
                Err(_) if instance.pid != 0 && !alive(instance.pid, instance.start_ticks) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let Some(entry) = self.ours(&listed).find(|l| l.name == name) else {
                return Ok(());
            };
            if !m.parallel || entry.sessions == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let version = m.parallel.then_some(instance.version.as_str());
        manager
            .undeploy(&self.config.context, version, MANAGER_TIMEOUT)
            .await?;
        if !m.parallel {
            let _ = std::fs::remove_file(self.keep_file(&base, "deployed-version"));
        }
        if let Ok(mut cache) = self.lists.lock() {
            cache.remove(&manager.url);
        }
        Ok(())
    }

    /// Manager mode: the JVM is alive (when nonstop started it) and the manager lists this
    /// version as running. A manager that does not answer is taken as "still running" while
    /// the JVM lives, so one slow answer does not roll a deploy back.
    pub async fn manager_is_running(&self, instance: &Instance, m: &ManagerConfig) -> bool {
        let ours = instance.pid != 0;
        if ours && !alive(instance.pid, instance.start_ticks) {
            return false;
        }
        if !m.parallel
            && let Ok(base) = self.base(&instance.node)
            && let Ok(recorded) = std::fs::read_to_string(self.keep_file(base, "deployed-version"))
            && recorded.trim() != instance.version.as_str()
        {
            return false;
        }
        let manager = self.manager_of(m, instance.node.as_str(), instance.port);
        let name = self.deployed_name(m, instance.version.as_str());
        match self.cached_list(&manager).await {
            Ok(listed) => self.ours(&listed).any(|l| l.name == name && l.running()),
            Err(_) => ours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_password_files() {
        assert!(check_version("0002").is_ok());
        assert!(check_version("1.4.2-rc1").is_ok());
        assert!(check_version("a##b").is_err());
        assert!(check_version("../x").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_password_file(&file).unwrap_err().to_string();
        assert!(e.contains("readable by everyone (mode 644)"), "{e}");
        assert!(!e.contains("s3cret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_password_file(&file).is_ok());
        assert!(check_password_file(&dir.path().join("none")).is_err());
    }

    #[test]
    fn the_server_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tomcat.pid");
        std::fs::write(&path, "123 456\n/var/log/t.log\n").unwrap();
        assert_eq!(
            read_server(&path),
            Some(Server {
                pid: 123,
                start_ticks: 456,
                log: "/var/log/t.log".into()
            })
        );
        assert!(!alive(0, 0));
        let me = std::process::id() as i32;
        assert!(alive(me, nonstop_runtime_process::start_ticks(me).unwrap()));
    }
}
