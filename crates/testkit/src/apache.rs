//! Our own Apache httpd + mod_jk instance: ServerRoot, config, logs, pid and mod_jk shm all in one
//! directory, `-DFOREGROUND` as our child, listening on 127.0.0.1 (plus any extra addresses).
//! Never the system's /etc/apache2 instance.
//!
//! mod_jk: one `lb` worker [`LB_WORKER`] (`sticky_session=true`) over `ajp13` members with
//! `route=` and `secret=`; `/app/*` mounted on it in the JkMountFile (`JkMountFileReload 1`);
//! the status worker [`STATUS_WORKER`] at `/jkstatus`, only from 127.0.0.1 *and* with Basic auth.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nonstop_http_client as http;

pub const APACHE: &str = "/usr/sbin/apache2";
pub const MODULES: &str = "/usr/lib/apache2/modules";
/// Debian's mod_jk (package libapache2-mod-jk), loaded from [`MODULES`].
pub const MOD_JK: &str = "/usr/lib/apache2/modules/mod_jk.so";
pub const LB_WORKER: &str = "balancer";
pub const STATUS_WORKER: &str = "jkstatus";

/// One `ajp13` member of the lb worker.
#[derive(Debug, Clone)]
pub struct JkMember {
    pub name: String,
    pub route: String,
    pub ajp_port: u16,
    pub secret: String,
}

#[derive(Debug, Clone)]
pub struct ApacheOptions {
    pub members: Vec<JkMember>,
    /// Addresses Apache also listens on (same port as 127.0.0.1), e.g. a veth address.
    pub extra_listen: Vec<IpAddr>,
    pub status_user: String,
    pub status_password: String,
    /// Extra `worker.<member>.<key>=<value>` lines applied to every member.
    pub member_settings: Vec<(String, String)>,
    /// Extra `worker.<lb>.<key>=<value>` lines for the lb worker, e.g. `("lock", "P")`.
    pub lb_settings: Vec<(String, String)>,
    /// Extra global `worker.<key>=<value>` lines, e.g. `("maintain", "1")`.
    pub global_settings: Vec<(String, String)>,
    /// `JkMountFileReload` seconds.
    pub mount_reload_secs: u64,
    /// More lb workers over some of the members, each mounted at `/NAME/*` (is-deploy's
    /// `balancer_ex1`/`balancer_ex2`, each over one member of the main lb worker).
    pub extra_lbs: Vec<(String, Vec<String>)>,
}

impl ApacheOptions {
    pub fn new(members: Vec<JkMember>) -> ApacheOptions {
        ApacheOptions {
            members,
            extra_listen: Vec::new(),
            status_user: "nonstop".into(),
            status_password: format!("pw-{}-{}", std::process::id(), crate::free_port()),
            member_settings: Vec::new(),
            lb_settings: Vec::new(),
            global_settings: Vec::new(),
            mount_reload_secs: 1,
            extra_lbs: Vec::new(),
        }
    }
}

/// A running Apache; SIGTERM on [`Apache::stop`] or drop.
#[derive(Debug)]
pub struct Apache {
    child: Option<Child>,
    pub pid: u32,
    pub dir: PathBuf,
    pub port: u16,
    pub listen: Vec<IpAddr>,
    pub conf: PathBuf,
    pub workers_file: PathBuf,
    pub mount_file: PathBuf,
    pub mount_reload_secs: u64,
    pub error_log: PathBuf,
    pub jk_log: PathBuf,
    pub status_url: String,
    pub status_user: String,
    /// The plain password, one line, mode 0600: for the driver's `password_file`.
    pub password_file: PathBuf,
    pub status_password: String,
    /// The hashed htpasswd file Apache reads.
    pub htpasswd_file: PathBuf,
}

fn workers_properties(options: &ApacheOptions) -> String {
    let names: Vec<&str> = options.members.iter().map(|m| m.name.as_str()).collect();
    let extra: String = options
        .extra_lbs
        .iter()
        .map(|(lb, _)| format!(",{lb}"))
        .collect();
    let mut out = format!(
        "# written by nonstop-testkit\nworker.list={LB_WORKER},{STATUS_WORKER}{extra}\n\
         worker.{LB_WORKER}.type=lb\nworker.{LB_WORKER}.balance_workers={}\n\
         worker.{LB_WORKER}.sticky_session=true\n",
        names.join(",")
    );
    for (lb, members) in &options.extra_lbs {
        out.push_str(&format!(
            "worker.{lb}.type=lb\nworker.{lb}.balance_workers={}\n",
            members.join(",")
        ));
    }
    for (key, value) in &options.lb_settings {
        out.push_str(&format!("worker.{LB_WORKER}.{key}={value}\n"));
    }
    for (key, value) in &options.global_settings {
        out.push_str(&format!("worker.{key}={value}\n"));
    }
    for m in &options.members {
        out.push_str(&format!(
            "worker.{n}.type=ajp13\nworker.{n}.host=127.0.0.1\nworker.{n}.port={p}\n\
             worker.{n}.route={r}\nworker.{n}.secret={s}\n",
            n = m.name,
            p = m.ajp_port,
            r = m.route,
            s = m.secret
        ));
        for (key, value) in &options.member_settings {
            out.push_str(&format!("worker.{}.{key}={value}\n", m.name));
        }
    }
    out.push_str(&format!("worker.{STATUS_WORKER}.type=status\n"));
    out
}

fn httpd_conf(dir: &Path, port: u16, options: &ApacheOptions, as_root: bool) -> String {
    let d = dir.display();
    let mut listen = format!("Listen 127.0.0.1:{port}\n");
    for addr in &options.extra_listen {
        match addr {
            IpAddr::V4(a) => listen.push_str(&format!("Listen {a}:{port}\n")),
            IpAddr::V6(a) => listen.push_str(&format!("Listen [{a}]:{port}\n")),
        }
    }
    let modules = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authn_core_module", "mod_authn_core.so"),
        ("authn_file_module", "mod_authn_file.so"),
        ("auth_basic_module", "mod_auth_basic.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("authz_host_module", "mod_authz_host.so"),
        ("authz_user_module", "mod_authz_user.so"),
        ("jk_module", "mod_jk.so"),
    ]
    .iter()
    .map(|(name, file)| format!("LoadModule {name} {MODULES}/{file}\n"))
    .collect::<String>();
    // As root, children drop to nobody (Apache refuses to serve as root): every file they read
    // (JkMountFile, htpasswd) is world-readable and the directory world-traversable.
    let user = if as_root {
        "User nobody\nGroup nogroup\n"
    } else {
        ""
    };
    format!(
        "# written by nonstop-testkit: our own instance, not the system one\n\
         ServerRoot \"{d}\"\nServerName 127.0.0.1\nDefaultRuntimeDir \"{d}/run\"\n\
         PidFile \"{d}/run/httpd.pid\"\nErrorLog \"{d}/logs/error.log\"\nLogLevel warn\n\
         {listen}{modules}{user}\
         StartServers 2\nServerLimit 4\nThreadsPerChild 25\nMaxRequestWorkers 100\n\
         MinSpareThreads 25\nMaxSpareThreads 75\nMaxConnectionsPerChild 0\n\
         KeepAlive On\nTimeout 60\n\
         DocumentRoot \"{d}/htdocs\"\n\
         <Directory />\n  AllowOverride None\n  Require all denied\n</Directory>\n\
         JkWorkersFile \"{d}/workers.properties\"\nJkShmFile \"{d}/run/jk.shm\"\n\
         JkLogFile \"{d}/logs/mod_jk.log\"\nJkLogLevel info\n\
         JkMountFile \"{d}/uriworkermap.properties\"\nJkMountFileReload {reload}\n\
         JkMount /jkstatus {STATUS_WORKER}\n\
         <Location /app>\n  Require all granted\n</Location>\n\
         <Location /jkstatus>\n  AuthType Basic\n  AuthName \"jkstatus\"\n\
         \x20 AuthBasicProvider file\n  AuthUserFile \"{d}/htpasswd\"\n\
         \x20 <RequireAll>\n    Require ip 127.0.0.1\n    Require valid-user\n  </RequireAll>\n\
         </Location>\n",
        reload = options.mount_reload_secs,
    )
}

/// An htpasswd line from `htpasswd -nbB` (apache2-utils).
fn htpasswd_line(user: &str, password: &str) -> Result<String, String> {
    let out = crate::peer::command("htpasswd")
        .args(["-nbB", "-C", "5", user, password])
        .output()
        .map_err(|e| format!("cannot run htpasswd: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !line.starts_with(&format!("{user}:")) {
        return Err(format!("htpasswd printed `{line}`"));
    }
    Ok(format!("{line}\n"))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

impl Apache {
    /// The JkMountFile text the instance starts with: `/app/*` on the lb worker.
    pub fn initial_mounts() -> String {
        format!("# written by nonstop-testkit\n/app/*={LB_WORKER}\n")
    }

    /// Writes the config into `dir` (made world-traversable) and starts Apache on a free port;
    /// returns once it answers on 127.0.0.1.
    pub async fn start(dir: &Path, options: ApacheOptions) -> Result<Apache, String> {
        let mut last = String::new();
        // The port is picked free, then bound by Apache: retry if someone took it in between.
        for _ in 0..3 {
            match Self::start_once(dir, &options).await {
                Ok(apache) => return Ok(apache),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn start_once(dir: &Path, options: &ApacheOptions) -> Result<Apache, String> {
        crate::peer::require(APACHE);
        crate::peer::require(MOD_JK);
        let as_root = rustix::process::geteuid().is_root();
        for sub in ["", "run", "logs", "htdocs"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
        let port = crate::free_port();
        let conf = dir.join("httpd.conf");
        write(&conf, &httpd_conf(dir, port, options, as_root), 0o644)?;
        let workers_file = dir.join("workers.properties");
        write(&workers_file, &workers_properties(options), 0o644)?;
        let mount_file = dir.join("uriworkermap.properties");
        let mut mounts = Self::initial_mounts();
        for (lb, _) in &options.extra_lbs {
            mounts.push_str(&format!("/{lb}/*={lb}\n"));
        }
        write(&mount_file, &mounts, 0o644)?;
        let htpasswd_file = dir.join("htpasswd");
        write(
            &htpasswd_file,
            &htpasswd_line(&options.status_user, &options.status_password)?,
            0o644,
        )?;
        let password_file = dir.join("jkstatus.password");
        write(
            &password_file,
            &format!("{}\n", options.status_password),
            0o600,
        )?;
        let error_log = dir.join("logs/error.log");
        let stderr_path = dir.join("logs/stderr.log");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| format!("create {}: {e}", stderr_path.display()))?;
        let child = crate::peer::command(APACHE)
            .arg("-d")
            .arg(dir)
            .arg("-f")
            .arg(&conf)
            .arg("-DFOREGROUND")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {APACHE}: {e}"))?;
        let mut apache = Apache {
            pid: child.id(),
            child: Some(child),
            dir: dir.to_path_buf(),
            port,
            listen: std::iter::once(IpAddr::from([127, 0, 0, 1]))
                .chain(options.extra_listen.iter().copied())
                .collect(),
            conf,
            workers_file,
            mount_file,
            mount_reload_secs: options.mount_reload_secs,
            error_log: error_log.clone(),
            jk_log: dir.join("logs/mod_jk.log"),
            status_url: format!("http://127.0.0.1:{port}/jkstatus"),
            status_user: options.status_user.clone(),
            password_file,
            status_password: options.status_password.clone(),
            htpasswd_file,
        };
        let url = http::Url::parse(&apache.url("/")).map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = apache
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                apache.child = None;
                return Err(format!(
                    "apache2 exited at start ({status}): {}{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                ));
            }
            if http::get(&url, Vec::new(), Duration::from_secs(2))
                .await
                .is_ok()
            {
                return Ok(apache);
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "apache2 did not answer on 127.0.0.1:{port} within 20s; error log:\n{}",
                    std::fs::read_to_string(&error_log).unwrap_or_default()
                ));
            }
            tokio::time::sleep(crate::POLL).await;
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The same path on another of the listen addresses.
    pub fn url_on(&self, addr: IpAddr, path: &str) -> String {
        match addr {
            IpAddr::V4(a) => format!("http://{a}:{}{path}", self.port),
            IpAddr::V6(a) => format!("http://[{a}]:{}{path}", self.port),
        }
    }

    /// True while our apache2 parent is alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Lines of the mod_jk log that contain `needle`.
    pub fn jk_log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.jk_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    fn terminate(&mut self, grace: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let mut status = None;
        crate::poll_blocking(grace, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "apache2 (pid {}) did not exit within {grace:?} of SIGTERM; killed",
            self.pid
        ))
    }

    /// SIGTERM to the parent; waits for it to exit (it stops its children first) up to 15 s.
    pub async fn stop(mut self) -> Result<(), String> {
        tokio::task::spawn_blocking(move || self.terminate(Duration::from_secs(15)))
            .await
            .map_err(|e| e.to_string())?
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_self_contained() {
        let mut options = ApacheOptions::new(vec![JkMember {
            name: "tomcat1".into(),
            route: "tomcat1".into(),
            ajp_port: 8009,
            secret: "s".into(),
        }]);
        options.extra_listen.push("10.0.0.1".parse().unwrap());
        options
            .global_settings
            .push(("maintain".into(), "1".into()));
        let conf = httpd_conf(Path::new("/tmp/x"), 8080, &options, true);
        assert!(conf.contains("Listen 127.0.0.1:8080\nListen 10.0.0.1:8080\n"));
        assert!(!conf.contains("/etc/apache2"));
        assert!(conf.contains("Require ip 127.0.0.1"));
        let workers = workers_properties(&options);
        assert!(workers.contains("worker.balancer.balance_workers=tomcat1\n"));
        assert!(workers.contains("worker.tomcat1.secret=s\n"));
        assert!(workers.contains("\nworker.maintain=1\n"));
    }
}
