//! `Site`: two real Tomcat 10 bases (jvmRoute tomcat1/tomcat2) behind a real Apache + mod_jk in
//! one temp dir, with the test WARs and the `[services.shop]` config the mod_jk e2e tests deploy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nonstop_testkit::apache::{Apache, ApacheOptions, JkMember};
use nonstop_testkit::client::{LoadOptions, StickyLoad};
use nonstop_testkit::tomcat::{Cluster, TomcatBase, Variant, build_war, java_opts};

use super::{nonstop_bin, write};

/// What a [`Site`] is made of beyond the default.
#[derive(Debug, Default)]
pub struct SiteOptions {
    /// More lb workers over some members (`ApacheOptions::extra_lbs`).
    pub extra_lbs: Vec<(String, Vec<String>)>,
    /// Both Tomcats replicate sessions (a static-membership `<Cluster>`).
    pub cluster: bool,
    /// The v1..v4 WARs are `<distributable/>`.
    pub distributable: bool,
}

pub const SECRET: &str = "ajp-secret-for-tests";

pub struct Site {
    pub work: tempfile::TempDir,
    pub apache: Apache,
    pub bases: Vec<TomcatBase>,
    pub wars: BTreeMap<&'static str, PathBuf>,
}

impl Site {
    pub async fn start() -> Site {
        Site::start_with(SiteOptions::default()).await
    }

    pub async fn start_with(opts: SiteOptions) -> Site {
        let work = tempfile::tempdir().unwrap();
        let mut wars = BTreeMap::new();
        let good = if opts.distributable {
            Variant::Distributable
        } else {
            Variant::Good
        };
        for (name, variant) in [
            ("v1", good),
            ("v2", good),
            ("v3", good),
            ("v4", good),
            ("bad", Variant::Failing),
        ] {
            let war = build_war(&work.path().join("wars").join(name), name, variant).unwrap();
            wars.insert(name, war);
        }
        let bases: Vec<TomcatBase> = ["tomcat1", "tomcat2"]
            .iter()
            .map(|name| {
                let port = nonstop_testkit::free_port;
                TomcatBase::create(&work.path().join(name), port(), port(), -1, name, SECRET)
                    .unwrap()
            })
            .collect();
        if opts.cluster {
            let cluster = Cluster::on_loopback(&["tomcat1", "tomcat2"]).unwrap();
            for base in &bases {
                base.join_cluster(&cluster).unwrap();
            }
        }
        let members = bases
            .iter()
            .map(|b| JkMember {
                name: b.jvm_route.clone(),
                route: b.jvm_route.clone(),
                ajp_port: b.ajp_port,
                secret: SECRET.into(),
            })
            .collect();
        let mut options = ApacheOptions::new(members);
        options.extra_lbs = opts.extra_lbs;
        let apache = Apache::start(&work.path().join("apache"), options)
            .await
            .unwrap();
        Site {
            work,
            apache,
            bases,
            wars,
        }
    }

    /// The service config; `mode` is the mod_jk driver's mode table.
    pub fn config(&self, mode: &str) -> PathBuf {
        self.config_with(mode, "", "{ timeout = \"2s\", sessions = true }")
    }

    /// The service config with more runtime keys (`, key = value` each) and a drain table.
    pub fn config_with(&self, mode: &str, runtime_extra: &str, drain: &str) -> PathBuf {
        let bases: Vec<String> = self
            .bases
            .iter()
            .map(|b| format!("{} = \"{}\"", b.jvm_route, b.dir.display()))
            .collect();
        let opts: Vec<String> = java_opts().iter().map(|o| format!("\"{o}\"")).collect();
        let mut text = format!(
            r#"[services.shop]
strategy = "rolling"
balancer = {{ kind = "modjk", lb_worker = "balancer", probe_url = "{probe}", mode = {mode} }}
runtime = {{ kind = "tomcat", catalina_home = "/usr/share/tomcat10", context = "app", health_path = "/app/health", bases = {{ {bases} }}, java_opts = [{opts}], startup_timeout = "90s", stop_grace = "20s"{runtime_extra} }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/app/health", interval = "100ms", deadline = "60s", successes = 2 }}
drain = {drain}
verify = "500ms"
"#,
            probe = self.apache.url("/app/count"),
            bases = bases.join(", "),
            opts = opts.join(", "),
            releases = self.work.path().join("releases").display(),
        );
        for b in &self.bases {
            text.push_str(&format!(
                "[[services.shop.nodes]]\nname = \"{}\"\nport = {}\n",
                b.jvm_route, b.http_port
            ));
        }
        let path = self.work.path().join("nonstop.toml");
        write(&path, &text);
        path
    }

    /// The JkMountFile mode as `nonstop import modjk` writes it: no status worker.
    pub fn uriworkermap_as_imported(&self) -> String {
        format!(
            "{{ kind = \"uriworkermap\", file = \"{}\", workers_file = \"{}\", reload_secs = {} }}",
            self.apache.mount_file.display(),
            self.apache.workers_file.display(),
            self.apache.mount_reload_secs,
        )
    }

    pub fn uriworkermap(&self) -> String {
        format!(
            "{{ kind = \"uriworkermap\", file = \"{}\", workers_file = \"{}\", reload_secs = {}, status = {{ url = \"{}\", user = \"{}\", password_file = \"{}\" }} }}",
            self.apache.mount_file.display(),
            self.apache.workers_file.display(),
            self.apache.mount_reload_secs,
            self.apache.status_url,
            self.apache.status_user,
            self.apache.password_file.display(),
        )
    }

    pub fn jkstatus(&self) -> String {
        format!(
            "{{ kind = \"jkstatus\", url = \"{}\", user = \"{}\", password_file = \"{}\" }}",
            self.apache.status_url,
            self.apache.status_user,
            self.apache.password_file.display(),
        )
    }

    pub fn deploy(&self, config: &Path, war: &str) -> Output {
        Command::new(nonstop_bin())
            .args(["deploy", "shop"])
            .arg(&self.wars[war])
            .args(["--version", war, "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// Sticky users through Apache until at least `per_node` of them started on each Tomcat: mod_jk
/// sends every new session to a member that just came back until its counts catch up.
pub async fn users_on_both(site: &Site, per_node: usize) -> (StickyLoad, Vec<usize>) {
    let url = site.apache.url("/app/count");
    StickyLoad::spread_over(
        &url,
        6,
        LoadOptions::default(),
        &["tomcat1", "tomcat2"],
        per_node,
        20,
    )
    .await
}
