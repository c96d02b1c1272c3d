//! The fault matrix: for each strategy × pool health checks on/off × every step k of its plan ×
//! each fault, inject the fault as step k begins, then check what the issue promises: the
//! balancer never lost its last eligible backend (nor more than `max_unavailable`) through an
//! engine change, no instance runs untracked, the serving release is the old or the new one,
//! an operator's change stays, and the exit code is the documented one.

mod support;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use nonstop_ports::{NodeName, Version};
use support::{DEAD_PID, FAULTS, Fault, Service};
use tokio::time::Duration;

/// The "exit code" of a deploy whose process was killed.
const KILLED: u8 = 137;

async fn plan_len(strategy: &'static str, health: bool) -> usize {
    let svc = Service::new(strategy, health);
    let mut engine = svc.engine(|_, _| {});
    svc.deploy(&mut engine, "1").await.expect("v1");
    engine
        .plan(&Version::from("2"), None)
        .await
        .expect("plan")
        .steps
        .len()
}

async fn run_case(
    strategy: &'static str,
    health: bool,
    fault: Fault,
    k: usize,
) -> Result<String, String> {
    let svc = Service::new(strategy, health);
    let mut first = svc.engine(|_, _| {});
    svc.deploy(&mut first, "1")
        .await
        .map_err(|e| format!("setup v1: {e}"))?;
    drop(first);
    svc.world.lock().violations.clear();

    let operator: Rc<RefCell<Option<(String, nonstop_ports::LbState)>>> = Rc::default();
    let fired = Rc::new(Cell::new(false));
    let (world, nodes, seen, done) = (
        svc.world.clone(),
        svc.nodes.clone(),
        operator.clone(),
        fired.clone(),
    );
    let mut engine = svc.engine(move |i, _| {
        if i == k && !done.get() {
            done.set(true);
            *seen.borrow_mut() = support::inject(&world, &nodes, fault, "2");
        }
    });
    engine.holder_pid(DEAD_PID);
    match fault {
        Fault::Crash => engine.crash_at = Some(k),
        Fault::Journal => engine.store.fail_journal_after(2 * k),
        _ => {}
    }
    // A deploy that never returns was killed (its future dropped, as SIGKILL drops a process).
    let result =
        tokio::time::timeout(Duration::from_secs(3600), svc.deploy(&mut engine, "2")).await;
    drop(engine);
    {
        let mut w = svc.world.lock();
        w.fail_next_mutation = false;
        w.hang_after_spawn = false;
    }
    let (code, message) = match result {
        Err(_) => (KILLED, "killed".to_string()),
        Ok(Ok(())) => (0, String::new()),
        Ok(Err(e)) => (e.exit_code(), e.to_string()),
    };

    // The next command recovers a deploy left unfinished.
    let mut next = svc.engine(|_, _| {});
    let recovered = next
        .store
        .unfinished()
        .map_err(|e| e.to_string())?
        .is_some();
    if recovered {
        match next.rollback().await {
            Err(e) if e.exit_code() == 2 => {}
            other => return Err(format!("recovery: {other:?}")),
        }
    }

    let allowed: &[u8] = match fault {
        Fault::KilledAfterSpawn => &[0, 2, KILLED],
        Fault::Crash => &[3],
        Fault::Journal => &[3],
        Fault::OperatorDisablesNew | Fault::OperatorDrainsOld if strategy == "rolling" => {
            &[0, 1, 2]
        }
        _ => &[0, 2],
    };
    if !allowed.contains(&code) {
        return Err(format!(
            "exit {code}, expected one of {allowed:?}: {message}"
        ));
    }
    if (matches!(fault, Fault::Crash | Fault::Journal) || code == KILLED) != recovered {
        return Err(format!(
            "recovered = {recovered} after exit {code}: {message}"
        ));
    }
    let violations = svc.world.lock().violations.clone();
    if !violations.is_empty() {
        return Err(format!("invariants broken: {violations:?} ({message})"));
    }
    // No orphan: every live instance is one the store records; after an undo, exactly those.
    let records: BTreeSet<(String, String)> = next
        .store
        .instances()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| (r.instance.node.to_string(), r.instance.version.to_string()))
        .collect();
    let running: BTreeSet<(String, String)> = svc.world.running().into_iter().collect();
    if !running.is_subset(&records) {
        return Err(format!(
            "untracked instances: running {running:?}, store {records:?}"
        ));
    }
    let serving = svc.world.serving_versions();
    let expect: &[&str] = match code {
        0 => &["2"],
        1 => &["1", "2"],
        _ => &["1"],
    };
    let code = if code == KILLED { 2 } else { code };
    if !serving.iter().all(|v| expect.contains(&v.as_str())) {
        return Err(format!("serving {serving:?} after exit {code}: {message}"));
    }
    if code != 0 && code != 1 {
        if running.iter().any(|(_, v)| v == "2") {
            return Err(format!("v2 still runs after exit {code}: {running:?}"));
        }
        let operator_out = operator.borrow().is_some();
        if serving.is_empty() && !operator_out && fault != Fault::FlapOld {
            return Err(format!("nothing serves after exit {code}: {message}"));
        }
        let (current, _) = next.store.releases().map_err(|e| e.to_string())?;
        if current != Some(Version::from("1")) {
            return Err(format!("store names {current:?} current after exit {code}"));
        }
    }
    // When the deploy noticed the operator's change, the node stays as the operator set it.
    if let Some((node, state)) = operator.borrow().clone()
        && message.contains("someone else changed")
    {
        let now = svc.world.lock().members[&NodeName::from(node.as_str())].state;
        if now != state {
            return Err(format!(
                "the operator set {node} {state}, the deploy left it {now}"
            ));
        }
    }
    if std::env::var_os("NONSTOP_MATRIX_VERBOSE").is_some() {
        eprintln!("{strategy} health={health} {fault:?}@{k}: exit {code}: {message}");
    }
    Ok(format!("exit {code}"))
}

#[tokio::test(start_paused = true)]
async fn every_fault_at_every_step_keeps_the_promises() {
    let (mut total, mut failures) = (0, Vec::new());
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for strategy in ["blue-green", "rolling", "canary"] {
        for health in [false, true] {
            let steps = plan_len(strategy, health).await;
            for fault in FAULTS {
                for k in 0..steps {
                    total += 1;
                    match run_case(strategy, health, fault, k).await {
                        Ok(outcome) => {
                            *outcomes.entry(format!("{fault:?}: {outcome}")).or_default() += 1
                        }
                        Err(e) => failures.push(format!(
                            "{strategy}, pool health {health}, {fault:?} at step {k}: {e}"
                        )),
                    }
                }
            }
        }
    }
    println!(
        "fault matrix: {} of {total} cases passed",
        total - failures.len()
    );
    for (outcome, count) in &outcomes {
        println!("  {outcome}: {count}");
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
