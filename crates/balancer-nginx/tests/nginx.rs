//! The nginx driver against a real nginx (own prefix dir, 127.0.0.1, ephemeral ports) in front of
//! two sample-app instances: blue-green switches and a rolling pass under load, and a rejected edit.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use nonstop_balancer_nginx::{NginxBalancer, NginxConfig};
use nonstop_ports::{Balancer, LbState, NodeName};
use support::*;

/// A real nginx master in the foreground, with every path inside its temp dir.
struct Nginx {
    proc: Proc,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn argv(dir: &Path) -> Vec<String> {
        let d = dir.display();
        vec![
            nonstop_testkit::peer::require("nginx")
                .display()
                .to_string(),
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ]
    }

    /// Starts nginx with `bootstrap` as the upstream include until the driver takes it over.
    async fn start(bootstrap: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let conf = format!(
            "worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               include {d}/upstream.conf;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://app;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        std::fs::write(dir.path().join("upstream.conf"), bootstrap).unwrap();
        let argv = Self::argv(dir.path());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            proc: Proc { child },
            dir,
            port,
        };
        let url = nginx.url("/health");
        wait_until("nginx answers", DEADLINE, || {
            let url = url.clone();
            async move { matches!(get(&client(), &url).await, Ok(r) if r.status == 200) }
        })
        .await;
        nginx.proc.assert_running("nginx");
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn include(&self) -> std::path::PathBuf {
        self.dir.path().join("upstream.conf")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
            let head: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("[notice]"))
                .take(20)
                .collect();
            eprintln!("nginx error.log (first errors):\n{}", head.join("\n"));
            let _ = std::fs::copy(
                self.dir.path().join("error.log"),
                "/tmp/nonstop-nginx-error.log",
            );
        }
        // SIGTERM makes the master stop its workers too; a SIGKILL (Proc's drop) would orphan them.
        let _ = nonstop_testkit::process::send_signal(self.proc.child.id(), "TERM");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while matches!(self.proc.child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

async fn wait_serving(url: &str, node: &str) {
    wait_until(&format!("{node} serves {url}"), DEADLINE, || async move {
        node_of(url).await == node
    })
    .await;
}

fn state_of(members: &[nonstop_ports::Member], node: &str) -> LbState {
    members
        .iter()
        .find(|m| m.node.as_str() == node)
        .unwrap_or_else(|| panic!("no member {node} in {members:?}"))
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_rolls_and_rejects_a_broken_edit_under_load() {
    let blue = Hello::start("blue", "1");
    let green = Hello::start("green", "2");
    let nginx = Nginx::start(&format!("upstream app {{ server {}; }}\n", blue.addr())).await;
    let mut config = NginxConfig::new(nginx.include(), "app", Nginx::argv(nginx.dir.path()));
    config.keepalive = 8;
    let lb = NginxBalancer::new(config).unwrap();
    let (b, g) = (NodeName::from("blue"), NodeName::from("green"));

    lb.register(&b, &blue.addr()).await.unwrap();
    lb.register(&g, &green.addr()).await.unwrap();
    lb.set_state(&b, LbState::Active).await.unwrap();
    let url = nginx.url("/");
    wait_serving(&url, "blue").await;
    let members = lb.members().await.unwrap();
    assert_eq!(state_of(&members, "green"), LbState::Disabled);

    // Blue-green: four switches back and forth while 8 clients keep sending.
    let load = Load::start(url.clone(), 8, 200_000);
    load.wait_for_more(200).await;
    for (to, from) in [(&g, &b), (&b, &g), (&g, &b), (&b, &g)] {
        lb.switch(&[
            (to.clone(), LbState::Active, None),
            (from.clone(), LbState::Draining, None),
        ])
        .await
        .unwrap();
        wait_serving(&url, to.as_str()).await;
        load.wait_for_more(300).await;
    }
    let report = load.stop().await;
    assert_no_failures("nginx blue-green switches", &report);
    assert!(report.by_node["blue"] > 0 && report.by_node["green"] > 0);
    let members = lb.members().await.unwrap();
    assert_eq!(state_of(&members, "blue"), LbState::Active);
    assert_eq!(state_of(&members, "green"), LbState::Draining);

    // Rolling: both in, then each one out and back in turn.
    let load = Load::start(url.clone(), 8, 200_000);
    lb.set_state(&g, LbState::Active).await.unwrap();
    load.wait_for_more(300).await;
    for (out, stays) in [(&b, &g), (&g, &b)] {
        lb.set_state(out, LbState::Disabled).await.unwrap();
        wait_serving(&url, stays.as_str()).await;
        load.wait_for_more(300).await;
        lb.set_state(out, LbState::Active).await.unwrap();
        load.wait_for_more(300).await;
    }
    let report = load.stop().await;
    assert_no_failures("nginx rolling", &report);

    // Weight: 3:1 shows in the include; a later edit nginx rejects leaves everything as it was.
    lb.set_weight(&b, 3).await.unwrap();
    let before = std::fs::read_to_string(nginx.include()).unwrap();
    assert!(
        before.contains(&format!("server {} weight=3;", blue.addr())),
        "{before}"
    );
    let load = Load::start(url.clone(), 4, 200_000);
    load.wait_for_more(100).await;
    let err = lb
        .register(&NodeName::from("broken"), "127.0.0.1:70000")
        .await
        .unwrap_err()
        .to_string();
    eprintln!("rejected edit: {err}");
    assert!(err.contains("invalid port"), "{err}");
    assert!(err.contains("upstream.conf"), "{err}");
    assert!(err.contains("test failed"), "{err}");
    assert_eq!(std::fs::read_to_string(nginx.include()).unwrap(), before);
    let after_names: Vec<String> = lb
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.node.0)
        .collect();
    assert_eq!(after_names, ["blue", "green"]);
    load.wait_for_more(200).await;
    let report = load.stop().await;
    assert_no_failures("nginx after a rejected edit", &report);
    assert!(report.by_node["blue"] > 0 && report.by_node["green"] > 0);

    // A second process (the CLI runs per command) sees the same members through the state file.
    let other = NginxBalancer::new(lb.config().clone()).unwrap();
    assert_eq!(other.members().await.unwrap(), lb.members().await.unwrap());
    drop(nginx);
}
