//! Pauses over the fakes: a canary pause step, `--pause-before-switch`, rolling's pause after
//! the first batch and an inconclusive window wait for a decision; promote goes on, abort and
//! the pause limit roll back, and a deploy whose process died while paused is resumed or undone
//! by whoever decides.

mod support;

use std::collections::BTreeSet;

use nonstop_engine::{Decided, Decision, DeployRequest, Paused, Step};
use nonstop_ports::Version;
use support::{DEAD_PID, FakeEngine, Service};
use tokio::time::Duration;

const STEPS: &str = r#"canary = { steps = [{ weight = 20, for = "2s" }, { pause = true }, { weight = 50, for = "2s" }] }"#;

fn canary_with(line: &str) -> Service {
    Service::edited("canary", false, |text| {
        text.replace(r#"canary = { weight = 20, window = "5s" }"#, line)
    })
}

async fn deployed_v1(svc: &Service) {
    let mut first = svc.engine(|_, _| {});
    svc.deploy(&mut first, "1").await.expect("v1");
}

/// Waits (on the paused clock) until the service's deploy waits for a decision.
async fn until_paused(engine: &FakeEngine) -> Paused {
    for _ in 0..10_000 {
        if let Some(p) = engine.paused().expect("store") {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the deploy never paused");
}

fn versions(set: BTreeSet<String>) -> Vec<String> {
    set.into_iter().collect()
}

async fn decide_when_paused(svc: &Service, decision: Decision) -> Paused {
    let mut other = svc.engine(|_, _| {});
    let paused = until_paused(&other).await;
    match other.decide(decision, "ann").await.expect("decide") {
        Decided::Relayed { .. } => {}
        other => panic!("the deploy's own process should act, got {other:?}"),
    }
    paused
}

#[tokio::test(start_paused = true)]
async fn a_canary_pause_step_waits_and_promote_goes_on() {
    let svc = canary_with(STEPS);
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let plan = engine.plan(&Version::from("2"), None).await.unwrap();
    let kinds: Vec<&str> = plan.steps.iter().map(Step::kind).collect();
    let pause = kinds
        .iter()
        .position(|k| *k == "pause")
        .expect("a pause step");
    assert_eq!(kinds[pause - 1], "canary", "{kinds:?}");
    assert_eq!(kinds[pause + 1], "canary", "{kinds:?}");

    let (result, paused) = tokio::join!(
        svc.deploy(&mut engine, "2"),
        decide_when_paused(&svc, Decision::Promote)
    );
    result.expect("promoted deploy succeeds");
    assert_eq!(paused.step as usize, pause + 1);
    assert!(paused.holder_alive);
    assert_eq!(versions(svc.world.serving_versions()), ["2"]);
    let journal = engine.store.journal_of(2).unwrap();
    assert!(
        journal
            .iter()
            .any(|e| e.step == "pause" && e.detail.starts_with("promoted by ann")),
        "{journal:#?}"
    );
    assert!(engine.paused().unwrap().is_none());
    let view = engine.canary_view().unwrap().expect("a canary to show");
    let states: Vec<(&str, &str)> = view.steps.iter().map(|s| (s.kind, s.state)).collect();
    assert_eq!(
        states,
        [
            ("canary", "passed"),
            ("pause", "passed"),
            ("canary", "passed")
        ]
    );
    assert_eq!(view.steps[0].share, Some(20));
    assert!(view.steps[0].canary.is_some() && view.steps[0].stable.is_some());
    assert!(
        view.steps[1]
            .result
            .as_deref()
            .is_some_and(|r| r.starts_with("promoted by ann")),
        "{:?}",
        view.steps[1]
    );
}

#[tokio::test(start_paused = true)]
async fn abort_at_a_pause_rolls_back_to_the_old_release() {
    let svc = canary_with(STEPS);
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let (result, _) = tokio::join!(
        svc.deploy(&mut engine, "2"),
        decide_when_paused(&svc, Decision::Abort)
    );
    let err = result.expect_err("aborted");
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("aborted by ann"), "{err}");
    assert_eq!(versions(svc.world.serving_versions()), ["1"]);
    assert!(svc.world.lock().violations.is_empty());
    // The stable node's canary weight is undone too, or the next canary would compound it.
    let weights: Vec<u32> = svc
        .world
        .lock()
        .members
        .values()
        .map(|m| m.weight)
        .collect();
    assert!(weights.iter().all(|w| *w == 1), "{weights:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pause_longer_than_its_limit_aborts_on_its_own() {
    let svc = Service::edited("canary", false, |text| {
        text.replace(
            r#"canary = { weight = 20, window = "5s" }"#,
            &format!("pause_limit = \"30s\"\n{STEPS}"),
        )
    });
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let err = svc.deploy(&mut engine, "2").await.expect_err("timed out");
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("aborted on its own"), "{err}");
    assert_eq!(versions(svc.world.serving_versions()), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_window_pauses_and_never_passes_by_itself() {
    // No fake request reaches the canary often enough for a million.
    let svc = canary_with(r#"canary = { weight = 20, window = "2s", min_requests = 1000000 }"#);
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let (result, paused) = tokio::join!(
        svc.deploy(&mut engine, "2"),
        decide_when_paused(&svc, Decision::Promote)
    );
    result.expect("a person promoted it");
    assert!(paused.why.contains("inconclusive"), "{}", paused.why);
    assert_eq!(versions(svc.world.serving_versions()), ["2"]);

    // `inconclusive = "abort"`: the same window rolls back at once.
    let svc = canary_with(
        r#"canary = { weight = 20, window = "2s", min_requests = 1000000, inconclusive = "abort" }"#,
    );
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let err = svc
        .deploy(&mut engine, "2")
        .await
        .expect_err("inconclusive");
    assert!(err.to_string().contains("inconclusive"), "{err}");
    assert_eq!(versions(svc.world.serving_versions()), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn pause_before_switch_keeps_users_on_the_old_release_until_promoted() {
    let svc = Service::new("blue-green", false);
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let plan = engine
        .plan_with(&Version::from("2"), None, true)
        .await
        .unwrap();
    let kinds: Vec<&str> = plan.steps.iter().map(Step::kind).collect();
    let pause = kinds.iter().position(|k| *k == "pause").expect("pause");
    assert!(
        pause < kinds.iter().position(|k| *k == "switch").unwrap(),
        "{kinds:?}"
    );
    let request = DeployRequest {
        artifact: svc.artifact("2"),
        version: Some(Version::from("2")),
        strategy: None,
        env: Default::default(),
        pause_before_switch: true,
    };
    let world = svc.world.clone();
    let check_then_promote = async {
        let mut other = svc.engine(|_, _| {});
        until_paused(&other).await;
        // Up and healthy, but no user request reaches it yet.
        assert_eq!(versions(world.serving_versions()), ["1"]);
        assert!(world.running().iter().any(|(_, v)| v == "2"));
        other.decide(Decision::Promote, "ann").await.unwrap();
    };
    let (result, ()) = tokio::join!(engine.deploy(request), check_then_promote);
    result.expect("deploy");
    assert_eq!(versions(svc.world.serving_versions()), ["2"]);

    let rolling = Service::new("rolling", false);
    let engine = rolling.engine(|_, _| {});
    let err = engine
        .plan_with(&Version::from("2"), None, true)
        .await
        .expect_err("rolling has no switch");
    assert!(err.to_string().contains("pause_after_first_batch"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn rolling_can_pause_after_its_first_batch() {
    let svc = Service::edited("rolling", false, |text| {
        text.replace(
            "rolling = { max_unavailable = 1 }",
            "rolling = { max_unavailable = 1, pause_after_first_batch = true }",
        )
    });
    deployed_v1(&svc).await;
    let mut engine = svc.engine(|_, _| {});
    let world = svc.world.clone();
    let check_then_promote = async {
        let mut other = svc.engine(|_, _| {});
        until_paused(&other).await;
        let on_new = world.running().iter().filter(|(_, v)| v == "2").count();
        assert_eq!(on_new, 1, "{:?}", world.running());
        assert_eq!(versions(world.serving_versions()), ["1", "2"]);
        other.decide(Decision::Promote, "ann").await.unwrap();
    };
    let (result, ()) = tokio::join!(svc.deploy(&mut engine, "2"), check_then_promote);
    result.expect("deploy");
    assert_eq!(versions(svc.world.serving_versions()), ["2"]);
}

/// The deploy's process dies while it waits (its future dropped, as SIGKILL drops a process).
async fn killed_while_paused(svc: &Service) {
    let mut engine = svc.engine(|_, _| {});
    engine.holder_pid(DEAD_PID);
    let watcher = svc.engine(|_, _| {});
    tokio::select! {
        _ = svc.deploy(&mut engine, "2") => panic!("the deploy should wait at its pause"),
        _ = until_paused(&watcher) => {}
    }
}

#[tokio::test(start_paused = true)]
async fn a_paused_deploy_survives_its_process_and_is_resumed_by_promote() {
    let svc = canary_with(STEPS);
    deployed_v1(&svc).await;
    killed_while_paused(&svc).await;

    // Nobody undoes it behind the back of whoever is to decide.
    let mut third = svc.engine(|_, _| {});
    let err = svc.deploy(&mut third, "3").await.expect_err("refused");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains("is paused"), "{err}");
    let status = third.status().await;
    let paused = status.paused.expect("status shows the pause");
    assert!(!paused.holder_alive);

    let mut promoter = svc.engine(|_, _| {});
    match promoter
        .decide(Decision::Promote, "ann")
        .await
        .expect("resume")
    {
        Decided::Resumed(report) => assert_eq!(report.version, Version::from("2")),
        other => panic!("expected a resumed deploy, got {other:?}"),
    }
    assert_eq!(versions(svc.world.serving_versions()), ["2"]);
    assert!(svc.world.lock().violations.is_empty());
    let last = promoter.store.deployments(1).unwrap().remove(0);
    assert_eq!(last.outcome, nonstop_store::Outcome::Succeeded);
    // Every new instance is tracked: nothing runs that the store does not know.
    let tracked: BTreeSet<String> = promoter
        .store
        .instances()
        .unwrap()
        .into_iter()
        .map(|r| r.instance.node.to_string())
        .collect();
    for (node, _) in svc.world.running() {
        assert!(tracked.contains(&node), "{node} runs untracked");
    }
}

#[tokio::test(start_paused = true)]
async fn a_paused_deploy_whose_process_died_is_undone_by_abort() {
    let svc = canary_with(STEPS);
    deployed_v1(&svc).await;
    killed_while_paused(&svc).await;
    let mut aborter = svc.engine(|_, _| {});
    match aborter.decide(Decision::Abort, "ann").await.expect("abort") {
        Decided::Undone { .. } => {}
        other => panic!("expected an undone deploy, got {other:?}"),
    }
    assert_eq!(versions(svc.world.serving_versions()), ["1"]);
    assert!(aborter.paused().unwrap().is_none());
    let err = aborter
        .decide(Decision::Promote, "bob")
        .await
        .expect_err("nothing waits");
    assert_eq!(err.exit_code(), 3);
}
