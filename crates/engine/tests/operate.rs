//! An operator's drain and enable through the engine keep the invariants a deploy keeps.

mod support;

use nonstop_ports::{LbState, NodeName};
use support::Service;

#[tokio::test(start_paused = true)]
async fn a_drain_that_would_break_an_invariant_is_refused() {
    let svc = Service::new("blue-green", false);
    let mut engine = svc.engine(|_, _| {});
    svc.deploy(&mut engine, "1").await.unwrap();
    let err = engine
        .set_node_state(&NodeName::from("n1"), LbState::Draining)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(
        err.to_string().contains("no backend would be eligible"),
        "{err}"
    );
    assert!(svc.world.lock().violations.is_empty());

    let svc = Service::new("rolling", false);
    let mut engine = svc.engine(|_, _| {});
    svc.deploy(&mut engine, "1").await.unwrap();
    engine
        .set_node_state(&NodeName::from("n1"), LbState::Draining)
        .await
        .unwrap();
    let err = engine
        .set_node_state(&NodeName::from("n2"), LbState::Disabled)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_unavailable = 1"), "{err}");
    engine
        .set_node_state(&NodeName::from("n1"), LbState::Active)
        .await
        .unwrap();
    engine
        .set_node_state(&NodeName::from("n2"), LbState::Disabled)
        .await
        .unwrap();
    assert!(svc.world.lock().violations.is_empty());
}
