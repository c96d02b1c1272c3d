//! The nginx driver against a real nginx (own prefix dir, 127.0.0.1, ephemeral ports) in front of
//! two sample-app instances: blue-green switches and a rolling pass under load, and a rejected edit.

mod support;

use nonstop_balancer_nginx::{NginxBalancer, NginxConfig};
use nonstop_ports::{Balancer, LbState, NodeName};
use nonstop_testkit::nginx::Nginx;
use support::*;

/// testkit's real nginx with one server proxying to upstream `app`, the include the driver owns.
struct Site {
    nginx: Nginx,
    port: u16,
}

impl Site {
    /// Starts nginx with `bootstrap` as the upstream include until the driver takes it over.
    async fn start(bootstrap: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        // Several main directives on one line, as nginx accepts them: the driver finds `pid`.
        let conf = format!(
            "worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log notice;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               include {d}/upstream.conf;\n\
               include {d}/extra.conf;\n\
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
        let files = [
            ("nginx.conf", conf),
            ("upstream.conf", bootstrap.to_string()),
            ("extra.conf", String::new()),
        ];
        let mut site = Site {
            nginx: Nginx::start_in(dir, &files).await,
            port,
        };
        let url = site.url("/health");
        wait_until("nginx answers", DEADLINE, || {
            let url = url.clone();
            async move { matches!(get(&client(), &url).await, Ok(r) if r.status == 200) }
        })
        .await;
        site.nginx.proc.assert_running("nginx");
        site
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn include(&self) -> std::path::PathBuf {
        self.nginx.path("upstream.conf")
    }

    fn argv(&self) -> Vec<String> {
        Nginx::argv(self.nginx.dir.path())
    }

    fn reloads(&self) -> usize {
        self.nginx.reloads()
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
    let nginx = Site::start(&format!("upstream app {{ server {}; }}\n", blue.addr())).await;
    let mut config = NginxConfig::new(nginx.include(), "app", nginx.argv());
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
    // The driver alone, reloading nginx at every change: an old worker closes its idle
    // keep-alives, so a GET caught by that is resent and counted apart (`resent`); the e2e of
    // crates/cli/tests/engine_nginx_modes.rs counts without resending.
    let load = Load::start_resending(url.clone(), 8, 200_000);
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
    let load = Load::start_resending(url.clone(), 8, 200_000);
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
    let load = Load::start_resending(url.clone(), 4, 200_000);
    load.wait_for_more(100).await;
    // Registered, it is out and not written; making it serve writes it, and nginx refuses.
    let broken = NodeName::from("broken");
    lb.register(&broken, "127.0.0.1:70000").await.unwrap();
    let err = lb
        .set_state(&broken, LbState::Active)
        .await
        .unwrap_err()
        .to_string();
    eprintln!("rejected edit: {err}");
    assert!(err.contains("invalid port"), "{err}");
    assert!(err.contains("upstream.conf"), "{err}");
    assert!(err.contains("test failed"), "{err}");
    assert_eq!(std::fs::read_to_string(nginx.include()).unwrap(), before);
    let after: Vec<(String, LbState)> = lb
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.node.0, m.state))
        .collect();
    assert_eq!(
        after,
        [
            ("blue".into(), LbState::Active),
            ("green".into(), LbState::Active),
            ("broken".into(), LbState::Disabled)
        ]
    );
    load.wait_for_more(200).await;
    let report = load.stop().await;
    assert_no_failures("nginx after a rejected edit", &report);
    assert!(report.by_node["blue"] > 0 && report.by_node["green"] > 0);

    // A second process (the CLI runs per command) sees the same members through the state file.
    let other = NginxBalancer::new(lb.config().clone()).unwrap();
    assert_eq!(other.members().await.unwrap(), lb.members().await.unwrap());
    drop(nginx);
}

/// nginx reloads only when what it reads changes: draining → disabled, a weight on a member that
/// is out, and re-registering the same address leave it alone; a broken nginx.conf outside the
/// include is an environment error quoting nginx, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_only_for_traffic_changes_and_a_broken_nginx_conf_is_the_environment() {
    let blue = Hello::start("blue", "1");
    let green = Hello::start("green", "2");
    let nginx = Site::start(&format!("upstream app {{ server {}; }}\n", blue.addr())).await;
    let lb = NginxBalancer::new(NginxConfig::new(nginx.include(), "app", nginx.argv())).unwrap();
    let (b, g) = (NodeName::from("blue"), NodeName::from("green"));
    lb.register(&b, &blue.addr()).await.unwrap();
    lb.register(&g, &green.addr()).await.unwrap();
    lb.set_state(&b, LbState::Active).await.unwrap();
    wait_serving(&nginx.url("/"), "blue").await;
    let start = nginx.reloads();
    assert!(start >= 1, "the first take-over reloads");

    // None of these changes where nginx sends a request.
    lb.set_state(&g, LbState::Draining).await.unwrap();
    lb.set_state(&g, LbState::Disabled).await.unwrap();
    lb.set_weight(&g, 5).await.unwrap();
    lb.register(&b, &blue.addr()).await.unwrap();
    assert_eq!(
        nginx.reloads(),
        start,
        "no reload for a change nginx cannot see"
    );
    assert_eq!(
        state_of(&lb.members().await.unwrap(), "green"),
        LbState::Disabled
    );

    // A real switch reloads once.
    lb.switch(&[
        (g.clone(), LbState::Active, Some(1)),
        (b.clone(), LbState::Draining, None),
    ])
    .await
    .unwrap();
    wait_serving(&nginx.url("/"), "green").await;
    assert_eq!(nginx.reloads(), start + 1);

    // The operator broke nginx.conf elsewhere: nginx's own words, an environment error.
    let fine = lb.check_environment().await.unwrap();
    assert!(fine.contains("-t` passes"), "{fine}");
    std::fs::write(nginx.nginx.path("extra.conf"), "bogus_directive on;\n").unwrap();
    let err = lb.check_environment().await.unwrap_err();
    assert!(
        err.is_environment() && err.to_string().contains("bogus_directive"),
        "{err}"
    );
    let before = std::fs::read_to_string(nginx.include()).unwrap();
    let err = lb
        .switch(&[
            (b.clone(), LbState::Active, None),
            (g.clone(), LbState::Draining, None),
        ])
        .await
        .unwrap_err();
    eprintln!("broken nginx.conf: {err}");
    assert!(err.is_environment(), "{err}");
    assert!(
        err.to_string()
            .contains("unknown directive \"bogus_directive\""),
        "{err}"
    );
    assert!(err.to_string().contains("extra.conf"), "{err}");
    assert_eq!(std::fs::read_to_string(nginx.include()).unwrap(), before);
    assert_eq!(
        state_of(&lb.members().await.unwrap(), "green"),
        LbState::Active
    );
    assert_eq!(nginx.reloads(), start + 1);
    // The include nonstop wrote itself being wrong is a rejected change, not the environment.
    std::fs::write(nginx.nginx.path("extra.conf"), "").unwrap();
    let broken = NodeName::from("broken");
    lb.register(&broken, "127.0.0.1:70000").await.unwrap();
    let err = lb
        .switch(&[
            (broken, LbState::Active, None),
            (g.clone(), LbState::Draining, None),
        ])
        .await
        .unwrap_err();
    assert!(!err.is_environment(), "{err}");
    assert!(err.to_string().contains("invalid port"), "{err}");
    wait_serving(&nginx.url("/"), "green").await;
}
