//! A minimal Tomcat 10 CATALINA_BASE and the test WAR.
//!
//! The base has an HTTP connector on 127.0.0.1 (or another address) at `${nonstop.http.port}` (the property that
//! `nonstop-runtime-tomcat` passes in CATALINA_OPTS), an AJP connector on 127.0.0.1 that requires
//! a secret, an Engine `jvmRoute`, no manager app and no session persistence (a base joins a
//! session-replicating `<Cluster>` only through [`TomcatBase::join_cluster`]).
//!
//! The WAR is compiled with `javac` against Tomcat's own servlet API jar and packed with `jar`
//! (no Maven). Compiled classes and built WARs are cached under `target/<profile>/nonstop-testkit/`
//! keyed by the sources, so only the first run pays for `javac`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

mod cluster;
pub use cluster::{Cluster, ClusterMember};

/// Debian's Tomcat 10.
pub const CATALINA_HOME: &str = "/usr/share/tomcat10";

/// Its start script, which the Tomcat runtime runs (a [`crate::peer`]).
pub const CATALINA_SH: &str = "/usr/share/tomcat10/bin/catalina.sh";

/// Debian's manager webapp (package tomcat10-admin).
pub const MANAGER_DOCBASE: &str = "/usr/share/tomcat10-admin/manager";

/// JVM options for quick test starts with a small heap.
pub fn java_opts() -> Vec<String> {
    [
        "-Xms32m",
        "-Xmx128m",
        "-XX:TieredStopAtLevel=1",
        "-Xshare:auto",
        "-XX:+UseSerialGC",
        "-Djava.security.egd=file:/dev/./urandom",
    ]
    .map(String::from)
    .to_vec()
}

/// One Tomcat instance's CATALINA_BASE.
#[derive(Debug, Clone)]
pub struct TomcatBase {
    pub dir: PathBuf,
    /// The port the caller passes as `InstanceSpec::port` (server.xml reads `${nonstop.http.port}`).
    pub http_port: u16,
    pub ajp_port: u16,
    pub jvm_route: String,
    pub ajp_secret: String,
}

fn check_token(what: &str, value: &str) -> io::Result<()> {
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} `{value}` must be [A-Za-z0-9_.-]+"),
        ));
    }
    Ok(())
}

/// The first of `names` that exists in /etc/tomcat10 or /usr/share/tomcat10/etc.
fn stock_conf(name: &str) -> io::Result<PathBuf> {
    ["/etc/tomcat10", "/usr/share/tomcat10/etc"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {name} in /etc/tomcat10 or /usr/share/tomcat10/etc (apt-get install tomcat10)"),
            )
        })
}

impl TomcatBase {
    /// Writes `dir/conf/{server.xml,context.xml,web.xml,logging.properties,catalina.properties}`
    /// and empty `webapps/ logs/ temp/ work/`. `shutdown_port` -1 disables the shutdown port.
    pub fn create(
        dir: &Path,
        http_port: u16,
        ajp_port: u16,
        shutdown_port: i32,
        jvm_route: &str,
        ajp_secret: &str,
    ) -> io::Result<TomcatBase> {
        check_token("jvmRoute", jvm_route)?;
        check_token("AJP secret", ajp_secret)?;
        // What starts this base later, so a missing Tomcat or JVM is named here, not by a runtime.
        crate::peer::require(CATALINA_SH);
        crate::peer::require("java");
        let conf = dir.join("conf");
        for sub in ["conf", "webapps", "logs", "temp", "work"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let server_xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- written by nonstop-testkit -->
<Server port="{shutdown_port}" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="${{nonstop.http.port}}" address="127.0.0.1" protocol="HTTP/1.1"
               connectionTimeout="20000" />
    <Connector port="{ajp_port}" address="127.0.0.1" protocol="AJP/1.3"
               secret="{ajp_secret}" secretRequired="true" />
    <Engine name="Catalina" defaultHost="localhost" jvmRoute="{jvm_route}">
      <Host name="localhost" appBase="webapps" unpackWARs="true" autoDeploy="false"
            deployOnStartup="true" />
    </Engine>
  </Service>
</Server>
"#
        );
        std::fs::write(conf.join("server.xml"), server_xml)?;
        // No session persistence across restarts: a restarted node starts with no sessions.
        std::fs::write(
            conf.join("context.xml"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Context>\n  <Manager pathname=\"\" />\n</Context>\n",
        )?;
        for name in ["web.xml", "logging.properties", "catalina.properties"] {
            std::fs::copy(stock_conf(name)?, conf.join(name))?;
        }
        Ok(TomcatBase {
            dir: dir.to_path_buf(),
            http_port,
            ajp_port,
            jvm_route: jvm_route.to_string(),
            ajp_secret: ajp_secret.to_string(),
        })
    }

    /// Installs the manager webapp at `/manager` (`conf/Catalina/localhost/manager.xml` with
    /// [`MANAGER_DOCBASE`], loopback only) and a `conf/tomcat-users.xml` (read by a MemoryRealm
    /// of that context) with `user` in the role `manager-script`; writes `password` to
    /// `dir/manager.password` (mode 0600), which it returns.
    pub fn install_manager(&self, user: &str, password: &str) -> io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        check_token("manager user", user)?;
        check_token("manager password", password)?;
        crate::peer::require(MANAGER_DOCBASE);
        let host = self.dir.join("conf/Catalina/localhost");
        std::fs::create_dir_all(&host)?;
        // The context file replaces the webapp's META-INF/context.xml, so it repeats its valve.
        std::fs::write(
            host.join("manager.xml"),
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- written by nonstop-testkit -->
<Context path="/manager" docBase="{MANAGER_DOCBASE}" privileged="true" antiResourceLocking="false">
  <Valve className="org.apache.catalina.valves.RemoteCIDRValve" allow="127.0.0.0/8, ::1/128" />
  <Realm className="org.apache.catalina.realm.MemoryRealm" pathname="conf/tomcat-users.xml" />
</Context>
"#
            ),
        )?;
        let users = self.dir.join("conf/tomcat-users.xml");
        std::fs::write(
            &users,
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<tomcat-users>
  <role rolename="manager-script" />
  <user username="{user}" password="{password}" roles="manager-script" />
</tomcat-users>
"#
            ),
        )?;
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600))?;
        let file = self.dir.join("manager.password");
        std::fs::write(&file, format!("{password}\n"))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }

    /// Moves the HTTP connector from 127.0.0.1 to `address` (e.g. `0.0.0.0` for a base on a
    /// network-namespace host that a proxy outside reaches); AJP stays on loopback.
    pub fn listen_http_on(&self, address: &str) -> io::Result<()> {
        let path = self.dir.join("conf/server.xml");
        let xml = std::fs::read_to_string(&path)?;
        let from = r#"address="127.0.0.1" protocol="HTTP/1.1""#;
        if !xml.contains(from) {
            return Err(io::Error::other(format!(
                "no HTTP connector on 127.0.0.1 in {}",
                path.display()
            )));
        }
        let to = format!(r#"address="{address}" protocol="HTTP/1.1""#);
        std::fs::write(&path, xml.replacen(from, &to, 1))
    }

    /// The deployed WAR of context `context`.
    pub fn war(&self, context: &str) -> PathBuf {
        self.dir.join("webapps").join(format!("{context}.war"))
    }
}

/// Which test WAR to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `/health`, `/count`, `/slow?ms=N`.
    Good,
    /// The same app plus a ServletContextListener that throws: the context fails to start.
    Failing,
    /// The same app answering 500 on `percent` % of `/` and `/count` (every Nth request, so a
    /// test's bound is stable; context-param `errorRate`); `/health` stays 200.
    Erroring { percent: u8 },
    /// The good app marked `<distributable/>`: under a `<Cluster>` its sessions replicate
    /// ([`TomcatBase::join_cluster`]).
    Distributable,
}

const SERVLET: &str = include_str!("java/CounterServlet.java");
const LISTENER: &str = include_str!("java/FailingListener.java");

fn web_xml(version: &str, variant: Variant) -> String {
    let extra = match variant {
        Variant::Good => String::new(),
        Variant::Distributable => "  <distributable />\n".into(),
        Variant::Failing => {
            "  <listener>\n    <listener-class>nonstop.testapp.FailingListener</listener-class>\n  </listener>\n".into()
        }
        Variant::Erroring { percent } => format!(
            "  <context-param>\n    <param-name>errorRate</param-name>\n    <param-value>{}</param-value>\n  </context-param>\n",
            f64::from(percent) / 100.0
        ),
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="https://jakarta.ee/xml/ns/jakartaee https://jakarta.ee/xml/ns/jakartaee/web-app_6_0.xsd"
         version="6.0" metadata-complete="true">
  <absolute-ordering />
  <context-param>
    <param-name>version</param-name>
    <param-value>{version}</param-value>
  </context-param>
{extra}  <servlet>
    <servlet-name>app</servlet-name>
    <servlet-class>nonstop.testapp.CounterServlet</servlet-class>
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet-mapping>
    <servlet-name>app</servlet-name>
    <url-pattern>/*</url-pattern>
  </servlet-mapping>
</web-app>
"#
    )
}

fn sources_key() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (
        SERVLET,
        LISTENER,
        web_xml("v", Variant::Failing),
        web_xml("v", Variant::Erroring { percent: 1 }),
        web_xml("v", Variant::Distributable),
    )
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

fn cache_dir() -> PathBuf {
    crate::target_dir()
        .join("nonstop-testkit")
        .join(sources_key())
}

fn run(command: &mut Command) -> io::Result<()> {
    let out = command.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {:?}: {e}", command.get_program()),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed ({}): {}{}",
            command,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// A unique scratch path beside `path`, for build-then-rename.
fn scratch(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(
        ".{name}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The compiled classes dir, compiled once (per sources, across runs) with `javac`.
fn compiled_classes() -> io::Result<PathBuf> {
    static CLASSES: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CLASSES
        .get_or_init(|| {
            let classes = cache_dir().join("classes");
            if classes
                .join("nonstop/testapp/CounterServlet.class")
                .is_file()
            {
                return Ok(classes);
            }
            let build = || -> io::Result<()> {
                std::fs::create_dir_all(cache_dir())?;
                let work = scratch(&classes);
                let src = work.join("src");
                let out = work.join("classes");
                std::fs::create_dir_all(&src)?;
                std::fs::write(src.join("CounterServlet.java"), SERVLET)?;
                std::fs::write(src.join("FailingListener.java"), LISTENER)?;
                run(crate::peer::command("javac")
                    .args(["--release", "17", "-nowarn", "-encoding", "UTF-8", "-cp"])
                    .arg(Path::new(CATALINA_HOME).join("lib/servlet-api.jar"))
                    .arg("-d")
                    .arg(&out)
                    .arg(src.join("CounterServlet.java"))
                    .arg(src.join("FailingListener.java")))?;
                // Another process may have won the race: either copy is the same build.
                if std::fs::rename(&out, &classes).is_err() && !classes.is_dir() {
                    return Err(io::Error::other(format!(
                        "cannot move classes to {}",
                        classes.display()
                    )));
                }
                let _ = std::fs::remove_dir_all(&work);
                Ok(())
            };
            build().map(|()| classes).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(io::Error::other)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Builds (or takes from the cache) the test WAR of `version` and copies it to
/// `out_dir/app-<version>[-failing|-err<percent>].war`, which it returns. The app answers
/// `version=<version> route=<jvmRoute> count=<n>` on `/` and `/count`.
pub fn build_war(out_dir: &Path, version: &str, variant: Variant) -> io::Result<PathBuf> {
    check_token("version", version)?;
    if let Variant::Erroring { percent } = variant
        && percent > 100
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("error rate {percent}% is above 100%"),
        ));
    }
    // javac compiles against Tomcat's servlet API jar.
    crate::peer::require(CATALINA_SH);
    static BUILDING: Mutex<()> = Mutex::new(());
    let name = match variant {
        Variant::Good => format!("app-{version}.war"),
        Variant::Failing => format!("app-{version}-failing.war"),
        Variant::Erroring { percent } => format!("app-{version}-err{percent}.war"),
        Variant::Distributable => format!("app-{version}-distributable.war"),
    };
    let cached = cache_dir().join("wars").join(&name);
    {
        let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        if !cached.is_file() {
            let classes = compiled_classes()?;
            std::fs::create_dir_all(cached.parent().expect("wars dir"))?;
            let stage = scratch(&cached);
            copy_tree(&classes, &stage.join("WEB-INF/classes"))?;
            std::fs::write(stage.join("WEB-INF/web.xml"), web_xml(version, variant))?;
            let war = scratch(&cached);
            run(crate::peer::command("jar")
                .arg("--create")
                .arg("--no-manifest")
                .arg("--file")
                .arg(&war)
                .arg("-C")
                .arg(&stage)
                .arg("."))?;
            std::fs::rename(&war, &cached)?;
            let _ = std::fs::remove_dir_all(&stage);
        }
    }
    std::fs::create_dir_all(out_dir)?;
    let out = out_dir.join(&name);
    std::fs::copy(&cached, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_xml_names_the_version_and_the_failing_listener() {
        assert!(web_xml("v7", Variant::Good).contains("<param-value>v7</param-value>"));
        assert!(!web_xml("v7", Variant::Good).contains("FailingListener"));
        assert!(web_xml("v7", Variant::Failing).contains("FailingListener"));
        let erroring = web_xml("v7", Variant::Erroring { percent: 20 });
        assert!(
            erroring
                .contains("<param-name>errorRate</param-name>\n    <param-value>0.2</param-value>"),
            "{erroring}"
        );
        assert!(!web_xml("v7", Variant::Good).contains("errorRate"));
        assert!(!web_xml("v7", Variant::Good).contains("distributable"));
        assert!(web_xml("v7", Variant::Distributable).contains("  <distributable />\n"));
        assert!(check_token("route", "tomcat1").is_ok());
        assert!(check_token("route", "a\"b").is_err());
    }
}
