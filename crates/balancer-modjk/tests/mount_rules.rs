//! jkstatus mode over a JkMountFile whose mount still carries a rule extension (`;disabled=`
//! left from the uriworkermap mode or written by hand): mod_jk applies the extension on that
//! mount whatever jkstatus says, so the driver refuses to report or set the member there,
//! naming the rule; once the extension is gone the same balancer works. Real Apache + mod_jk.

use std::time::Duration;

use nonstop_balancer_modjk::{ModjkBalancer, ModjkConfig, ModjkMode};
use nonstop_ports::{Balancer, LbState, NodeName};
use nonstop_testkit::apache::{Apache, ApacheOptions, JkMember, LB_WORKER};

fn jkstatus_balancer(apache: &Apache) -> ModjkBalancer {
    ModjkBalancer::new(ModjkConfig {
        lb_worker: LB_WORKER.into(),
        mode: ModjkMode::Jkstatus {
            url: apache.status_url.clone(),
            user: Some(apache.status_user.clone()),
            password_file: Some(apache.password_file.clone()),
        },
        probe_url: None,
        session_cookie: "JSESSIONID".into(),
        confirm_timeout: "30s".into(),
        confirm_requests: 40,
    })
    .unwrap()
}

/// Rewrites the JkMountFile once its mtime can differ from the loaded one (mod_jk compares
/// whole seconds), then sends requests until Apache's children have re-read it.
async fn rewrite_mounts(apache: &Apache, text: &str, lb: &ModjkBalancer, expect_refused: bool) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&apache.mount_file, text).unwrap();
    let url = nonstop_http_client::Url::parse(&apache.url("/app/x")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let _ = nonstop_http_client::get(&url, Vec::new(), Duration::from_secs(2)).await;
        if lb.members().await.is_err() == expect_refused {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Apache never applied the JkMountFile:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_rule_extension_is_named_in_jkstatus_mode_and_nothing_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let members = ["tomcat1", "tomcat2"]
        .iter()
        .map(|n| JkMember {
            name: n.to_string(),
            route: n.to_string(),
            ajp_port: nonstop_testkit::free_port(),
            secret: "ajp-secret".into(),
        })
        .collect();
    let apache = Apache::start(dir.path(), ApacheOptions::new(members))
        .await
        .unwrap();
    let lb = jkstatus_balancer(&apache);
    assert_eq!(lb.members().await.unwrap().len(), 2, "no extension: fine");

    rewrite_mounts(
        &apache,
        &format!("/app/*={LB_WORKER};disabled=tomcat1\n"),
        &lb,
        true,
    )
    .await;
    let err = lb.members().await.unwrap_err().to_string();
    eprintln!("refused: {err}");
    assert!(
        err.contains("mount `/app/*`")
            && err.contains("the JkMountFile")
            && err.contains("`disabled=tomcat1`")
            && err.contains("Nothing was changed"),
        "{err}"
    );
    let t1 = NodeName::from("tomcat1");
    let refused = lb.set_state(&t1, LbState::Disabled).await;
    assert!(refused.is_err(), "set_state goes through the same check");
    let err = lb.check_environment().await.unwrap_err().to_string();
    assert!(
        err.contains("`disabled=tomcat1`"),
        "config check says it too: {err}"
    );

    // The extension removed: the members are told again, and tomcat1 was never touched.
    rewrite_mounts(&apache, &format!("/app/*={LB_WORKER}\n"), &lb, false).await;
    let members = lb.members().await.unwrap();
    let t1_state = members.iter().find(|m| m.node == t1).map(|m| m.state);
    assert_eq!(t1_state, Some(LbState::Active), "{members:?}");
}
