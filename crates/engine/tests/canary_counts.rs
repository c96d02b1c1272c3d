//! A canary window over a balancer that zeroes a member's counters as it enables it (mod_jk's
//! jkstatus reset): the window's counts start after the step's switch, not before it.

mod support;

use support::Service;

#[tokio::test(start_paused = true)]
async fn a_window_counts_from_after_the_switch_that_reset_the_counters() {
    let svc = Service::new("canary", false);
    let mut first = svc.engine(|_, _| {});
    svc.deploy(&mut first, "1").await.expect("v1");
    {
        let mut w = svc.world.lock();
        w.resets_counts_on_switch = true;
        // The old release has served for a long time before this deploy.
        for m in w.members.values_mut() {
            m.requests = 1_000_000;
        }
    }
    let mut engine = svc.engine(|_, _| {});
    svc.deploy(&mut engine, "2").await.expect("v2 promoted");
    let journal = engine.store.journal_of(2).unwrap();
    let verdict = journal
        .iter()
        .find(|e| e.step == "canary" && e.detail.starts_with("passed: "))
        .unwrap_or_else(|| panic!("a passed canary window: {journal:#?}"))
        .detail
        .clone();
    let old: u64 = verdict
        .split("; old: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{verdict}"));
    assert!(
        old > 0,
        "the old release's requests were counted: {verdict}"
    );
    let counts: Vec<u64> = svc
        .world
        .lock()
        .members
        .values()
        .map(|m| m.requests)
        .collect();
    assert!(
        counts.iter().all(|&n| n < 1_000_000),
        "the switches reset the counts: {counts:?}"
    );
}
