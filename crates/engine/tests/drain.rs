//! A session drain ends when the runtime counts no open session on the node, says so, and
//! waits for its timeout only where the runtime cannot count them.

mod support;

use std::cell::RefCell;
use std::rc::Rc;

use nonstop_config::HumanDuration;
use nonstop_engine::{Engine, Event, EventKind};
use support::{FakeEngine, Service};
use tokio::time::{Duration, Instant};

/// A rolling service with `drain = { timeout = "60s", sessions = true }` and an engine that
/// keeps every progress line.
fn session_drain(svc: &mut Service) -> (FakeEngine, Rc<RefCell<Vec<String>>>) {
    svc.config.drain.sessions = true;
    svc.config.drain.timeout = HumanDuration(Duration::from_secs(60));
    let lines = Rc::new(RefCell::new(Vec::new()));
    let seen = lines.clone();
    let emit = Box::new(move |e: &Event| {
        if e.kind == EventKind::Progress {
            seen.borrow_mut().push(e.message.clone());
        }
    });
    let engine = Engine::new(
        "shop",
        svc.config.clone(),
        svc.dir.path().join("shop"),
        svc.world.balancer(),
        svc.world.runtime(),
        svc.world.probe(),
        emit,
    )
    .expect("engine");
    (engine, lines)
}

fn drains(lines: &Rc<RefCell<Vec<String>>>) -> Vec<String> {
    let drains = lines
        .borrow()
        .iter()
        .filter(|l| l.starts_with("drain ended") || l.starts_with("nothing to drain"))
        // Step lines end with the step's duration, ` (5.2s)`: the tests read what comes before.
        .map(|l| match l.rsplit_once(" (") {
            Some((line, _)) => line.to_string(),
            None => l.clone(),
        })
        .collect();
    lines.borrow_mut().clear();
    drains
}

#[tokio::test(start_paused = true)]
async fn a_session_drain_ends_when_the_sessions_end() {
    let mut svc = Service::new("rolling", false);
    let (mut engine, lines) = session_drain(&mut svc);
    svc.world.lock().sessions = Some(Default::default());
    svc.deploy(&mut engine, "1").await.unwrap();
    lines.borrow_mut().clear();

    // No open session anywhere: each drain ends at once on the runtime's count.
    let started = Instant::now();
    svc.deploy(&mut engine, "2").await.unwrap();
    let ended = drains(&lines);
    assert_eq!(ended.len(), 3, "{ended:?}");
    for line in &ended {
        assert!(
            line.starts_with("drain ended on sessions = 0 (fake runtime) and in-flight = 0 after "),
            "{line}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A session open on n1 for 5 s more: n1's drain waits for it, not for the 60 s timeout.
    svc.world
        .lock()
        .sessions
        .as_mut()
        .unwrap()
        .insert(20001, Instant::now() + Duration::from_secs(5));
    svc.deploy(&mut engine, "3").await.unwrap();
    let ended = drains(&lines);
    let waited: Vec<u64> = ended
        .iter()
        .filter_map(|l| l.rsplit("after ").next()?.strip_suffix("ms")?.parse().ok())
        .collect();
    assert_eq!(waited.len(), 3, "{ended:?}");
    assert!(
        waited
            .iter()
            .filter(|ms| (4_500..10_000).contains(*ms))
            .count()
            == 1,
        "one drain waited for the session: {ended:?}"
    );

    // A runtime that cannot count sessions: the drain keeps to its timeout, and says why.
    svc.world.lock().sessions = None;
    let started = Instant::now();
    svc.deploy(&mut engine, "4").await.unwrap();
    let ended = drains(&lines);
    assert!(
        ended
            .iter()
            .all(|l| l.contains("the runtime cannot count sessions")),
        "{ended:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(180));
}

#[tokio::test(start_paused = true)]
async fn a_dead_node_is_not_drained() {
    let mut svc = Service::new("rolling", false);
    let (mut engine, lines) = session_drain(&mut svc);
    svc.deploy(&mut engine, "1").await.unwrap();
    lines.borrow_mut().clear();
    svc.world.crash("n1");
    svc.deploy(&mut engine, "2").await.unwrap();
    let ended = drains(&lines);
    assert!(
        ended
            .iter()
            .any(|l| l == "nothing to drain (no live instance)"),
        "{ended:?}"
    );
}
