//! `nonstop deploy` of a WAR to two real Tomcat 10 instances (jvmRoute tomcat1/tomcat2) behind a
//! real Apache + mod_jk, with sticky clients: rolling deploys through both mod_jk modes (the
//! JkMountFile one with and without jkstatus), and a WAR that fails to start rolled back.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nonstop_testkit::apache::{Apache, ApacheOptions, JkMember};
use nonstop_testkit::client::{LoadOptions, LoadReport, StickyLoad};
use nonstop_testkit::tomcat::{TomcatBase, Variant, build_war, java_opts};
use support::{KillUnder, assert_all_on, nonstop_bin, text, write};

const SECRET: &str = "ajp-secret-for-tests";

struct Site {
    work: tempfile::TempDir,
    apache: Apache,
    bases: Vec<TomcatBase>,
    wars: BTreeMap<&'static str, PathBuf>,
}

impl Site {
    async fn start() -> Site {
        let work = tempfile::tempdir().unwrap();
        let mut wars = BTreeMap::new();
        for (name, variant) in [
            ("v1", Variant::Good),
            ("v2", Variant::Good),
            ("v3", Variant::Good),
            ("v4", Variant::Good),
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
        let members = bases
            .iter()
            .map(|b| JkMember {
                name: b.jvm_route.clone(),
                route: b.jvm_route.clone(),
                ajp_port: b.ajp_port,
                secret: SECRET.into(),
            })
            .collect();
        let apache = Apache::start(&work.path().join("apache"), ApacheOptions::new(members))
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
    fn config(&self, mode: &str) -> PathBuf {
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
runtime = {{ kind = "tomcat", catalina_home = "/usr/share/tomcat10", context = "app", health_path = "/app/health", bases = {{ {bases} }}, java_opts = [{opts}], startup_timeout = "90s", stop_grace = "20s" }}
releases = {{ dir = "{releases}", keep = 3 }}
health = {{ path = "/app/health", interval = "100ms", deadline = "60s", successes = 2 }}
drain = {{ timeout = "2s", sessions = true }}
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
    fn uriworkermap_as_imported(&self) -> String {
        format!(
            "{{ kind = \"uriworkermap\", file = \"{}\", workers_file = \"{}\", reload_secs = {} }}",
            self.apache.mount_file.display(),
            self.apache.workers_file.display(),
            self.apache.mount_reload_secs,
        )
    }

    fn uriworkermap(&self) -> String {
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

    fn jkstatus(&self) -> String {
        format!(
            "{{ kind = \"jkstatus\", url = \"{}\", user = \"{}\", password_file = \"{}\" }}",
            self.apache.status_url,
            self.apache.status_user,
            self.apache.password_file.display(),
        )
    }

    fn deploy(&self, config: &Path, war: &str) -> Output {
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
async fn users_on_both(site: &Site, per_node: usize) -> (StickyLoad, Vec<usize>) {
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

/// A rolling deploy of `war` under sticky load; returns the load's report.
async fn rolling_under_load(site: &Site, config: &Path, war: &str) -> LoadReport {
    let (load, all) = users_on_both(site, 3).await;
    let out = site.deploy(config, war);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "rolling deploy of {war}: {}",
        text(&out)
    );
    assert_all_on(config, war);
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    load.stop().await
}

fn check(what: &str, report: &LoadReport, war: &str) {
    eprintln!("{what}: {}", report.summary());
    report.assert_none_failed(what);
    assert!(
        report.by_version().contains_key(war),
        "{what}: {war} answered"
    );
    // Within a session the counter goes up by exactly 1; a session ends only when its node goes
    // away (the user moves to the other route), never while its Tomcat keeps running.
    let resets = report
        .check_counts()
        .unwrap_or_else(|bad| panic!("{what}: {:#?}", &bad[..bad.len().min(5)]));
    let lost_in_place: Vec<_> = resets
        .iter()
        .filter(|r| r.from_route == r.to_route)
        .collect();
    assert!(
        lost_in_place.is_empty(),
        "{what}: sessions lost on a running node: {lost_in_place:?}"
    );
    eprintln!(
        "{what}: {} session moves, all off a node being replaced; longest session before its move: {:?}",
        resets.len(),
        resets.iter().filter_map(|r| r.from_count).max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wars_roll_through_mod_jk_with_sticky_sessions_and_a_failing_war_rolls_back() {
    let site = Site::start().await;
    let _instances = KillUnder(site.work.path().to_path_buf());
    // The first deploy starts both Tomcats; probes meanwhile put them in mod_jk's error state,
    // which only jkstatus can reset early (without it, mod_jk retries after `recover_time`).
    let out = site.deploy(&site.config(&site.uriworkermap()), "v1");
    assert!(out.status.success(), "first deploy: {}", text(&out));

    // The JkMountFile mode as `nonstop import modjk` writes it (no `status`): enabling a member
    // hands back its unchanged lbfactor, which needs no jkstatus.
    let config = site.config(&site.uriworkermap_as_imported());
    let report = rolling_under_load(&site, &config, "v2").await;
    check(
        "mod_jk uriworkermap (as imported, no status) rolling v1 -> v2",
        &report,
        "v2",
    );
    assert!(
        !report.users_started_on("tomcat1").is_empty()
            && !report.users_started_on("tomcat2").is_empty(),
        "sticky users on both nodes"
    );
    // Without jkstatus nothing resets a member that came back: mod_jk sends it the new sessions
    // until its load value catches up, so the next load may start on one node only.

    // uriworkermap mode with jkstatus read for busy counts.
    let config = site.config(&site.uriworkermap());
    let report = rolling_under_load(&site, &config, "v3").await;
    check("mod_jk uriworkermap rolling v2 -> v3", &report, "v3");

    // jkstatus mode, same guarantees.
    let config = site.config(&site.jkstatus());
    let report = rolling_under_load(&site, &config, "v4").await;
    check("mod_jk jkstatus rolling v3 -> v4", &report, "v4");

    // A WAR whose app fails to start: tomcat1 gets v4 back and rejoins, nothing fails meanwhile.
    let load = StickyLoad::start(&site.apache.url("/app/count"), 6, LoadOptions::default());
    let all: Vec<usize> = (0..6).collect();
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let out = site.deploy(&config, "bad");
    assert_eq!(out.status.code(), Some(2), "rolled back: {}", text(&out));
    load.wait_progress(&all, 5, Duration::from_secs(30)).await;
    let report = load.stop().await;
    check("failing WAR rolled back", &report, "v4");
    assert!(!report.by_version().contains_key("bad"));
    let restored = std::fs::read(site.bases[0].dir.join("webapps/app.war")).unwrap();
    assert_eq!(
        restored,
        std::fs::read(&site.wars["v4"]).unwrap(),
        "v4's WAR is back"
    );
}
