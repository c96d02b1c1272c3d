//! The JkMountFile mode without `status` (what `nonstop import modjk` writes): a switch that hands
//! back each member's configured lbfactor, or names a member whose activation does not change,
//! neither fails nor waits for a confirmation that cannot come; a member another lb worker also
//! routes to is not taken out. The probe is a loopback stub
//! whose every new session lands on tomcat1, as Apache does while tomcat2 has no free slot.

use std::time::{Duration, Instant};

use nonstop_balancer_modjk::{ModjkBalancer, ModjkConfig, ModjkMode};
use nonstop_ports::{Balancer, LbState, NodeName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKERS: &str = "worker.list=balancer\n\
    worker.tomcat1.type=ajp13\nworker.tomcat1.host=127.0.0.1\nworker.tomcat1.port=8009\nworker.tomcat1.route=tomcat1\n\
    worker.tomcat2.type=ajp13\nworker.tomcat2.host=127.0.0.1\nworker.tomcat2.port=8010\nworker.tomcat2.route=tomcat2\n\
    worker.balancer.type=lb\nworker.balancer.balance_workers=tomcat1,tomcat2\nworker.balancer.sticky_session=true\n";

/// Answers every request with a new session on route tomcat1.
async fn probe_on_tomcat1() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = "HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=ABC.tomcat1; Path=/\r\n\
                             Content-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/app/count")
}

async fn balancer(dir: &std::path::Path, mount: &str) -> ModjkBalancer {
    balancer_over(dir, WORKERS, mount).await
}

async fn balancer_over(dir: &std::path::Path, workers: &str, mount: &str) -> ModjkBalancer {
    std::fs::write(dir.join("workers.properties"), workers).unwrap();
    std::fs::write(dir.join("uriworkermap.properties"), mount).unwrap();
    ModjkBalancer::new(ModjkConfig {
        lb_worker: "balancer".into(),
        mode: ModjkMode::Uriworkermap {
            file: dir.join("uriworkermap.properties"),
            reload_secs: 1,
            workers_file: dir.join("workers.properties"),
            status: None,
        },
        probe_url: Some(probe_on_tomcat1().await),
        session_cookie: "JSESSIONID".into(),
        confirm_timeout: "4s".into(),
        confirm_requests: 3,
    })
    .unwrap()
}

#[tokio::test]
async fn an_unchanged_lbfactor_and_an_unchanged_member_need_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lb = balancer(dir.path(), "/app/*=balancer\n").await;
    let (t1, t2) = (NodeName::from("tomcat1"), NodeName::from("tomcat2"));
    let found = lb.check_environment().await.unwrap();
    assert_eq!(found, "mod_jk lb worker `balancer` found");
    let unmounted = tempfile::tempdir().unwrap();
    let err = balancer(unmounted.path(), "/other/*=elsewhere\n")
        .await
        .check_environment()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no mount rule maps to `balancer`"), "{err}");

    // The engine's enable step passes the lbfactor it read (1): nothing to change, no error.
    let started = Instant::now();
    lb.switch(&[(t2.clone(), LbState::Active, Some(1))])
        .await
        .unwrap();
    lb.switch(&[
        (t1.clone(), LbState::Active, None),
        (t2.clone(), LbState::Active, None),
    ])
    .await
    .unwrap();
    // tomcat2 was active already: no probe waits for a new session on it.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    lb.set_weight(&t1, 1).await.unwrap();
    let err = lb.set_weight(&t1, 3).await.unwrap_err().to_string();
    assert!(err.contains("configure `status`"), "{err}");

    // A real change still is written and confirmed: tomcat2 out, new sessions avoid it.
    lb.switch(&[
        (t1.clone(), LbState::Active, Some(1)),
        (t2.clone(), LbState::Disabled, Some(1)),
    ])
    .await
    .unwrap();
    let mount = std::fs::read_to_string(dir.path().join("uriworkermap.properties")).unwrap();
    assert_eq!(mount, "/app/*=balancer;stopped=tomcat2\n");
    let states: Vec<LbState> = lb
        .members()
        .await
        .unwrap()
        .iter()
        .map(|m| m.state)
        .collect();
    assert_eq!(states, [LbState::Active, LbState::Disabled]);
}

#[tokio::test]
async fn a_member_another_lb_worker_routes_to_is_not_taken_out() {
    let dir = tempfile::tempdir().unwrap();
    let workers = format!("{WORKERS}worker.pin1.type=lb\nworker.pin1.balance_workers=tomcat1\n");
    let mount = "/app/*=balancer\n/pin1/*=pin1\n";
    let lb = balancer_over(dir.path(), &workers, mount).await;
    let err = lb.check_environment().await.unwrap_err().to_string();
    assert!(err.contains("also a member of lb worker `pin1`"), "{err}");
    let err = lb
        .switch(&[(NodeName::from("tomcat1"), LbState::Draining, None)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("also a member of lb worker `pin1`"), "{err}");
    assert!(err.contains("line 14, as its only member"), "{err}");
    assert!(err.contains("Nothing was changed"), "{err}");
    let file = std::fs::read_to_string(dir.path().join("uriworkermap.properties")).unwrap();
    assert_eq!(file, mount);
    // Naming it unchanged (a restore) is fine, and so is a member no other lb worker lists.
    lb.switch(&[
        (NodeName::from("tomcat1"), LbState::Active, None),
        (NodeName::from("tomcat2"), LbState::Disabled, None),
    ])
    .await
    .unwrap();
}
