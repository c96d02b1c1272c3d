//! The canary step: the new slots get a share of new requests for a window, judged against
//! the live release on the balancer's own counters; too few requests is inconclusive, never a pass.

use std::collections::BTreeMap;

use nonstop_ports::{
    AnalysisWindow, Balancer, LbState, NodeName, Probe, Runtime, Traffic, Verdict,
};
use tokio::time::{Duration, Instant};

use crate::error::StepError;
use crate::executor::Run;
use crate::reconcile::Members;
use crate::spec::CanarySpec;
use crate::{Engine, EventKind};

impl<B: Balancer, R: Runtime, P: Probe> Engine<B, R, P> {
    pub(crate) async fn canary(
        &self,
        run: &mut Run,
        canaries: &[NodeName],
        live: &[NodeName],
        share: u32,
        window: Duration,
    ) -> Result<String, StepError> {
        let base = self.members().await?;
        // Every step's share is of the weights before the first step (a later step's would
        // compound the earlier ones).
        let weights = run
            .canary_base
            .get_or_insert_with(|| base.iter().map(|(n, m)| (n.clone(), m.weight)).collect())
            .clone();
        let changes = canary_weights(canaries, live, &weights, share);
        self.balancer.switch(&changes).await?;
        // The window's counts start after the switch: mod_jk zeroes a member's counters as it
        // enables it (jkstatus `cmd=reset`), which read against earlier counts gave 0 requests.
        let before = self.members().await?;
        for (node, state, _) in &changes {
            run.last_seen.insert(node.clone(), *state);
        }
        let until = Instant::now() + window;
        let mut shown = Instant::now();
        let (deploy, step) = (run.deploy, run.index as i64 - 1);
        let started_ms = nonstop_store::now_ms();
        let record = |c: &Traffic, o: &Traffic, verdict: Option<&str>| {
            // The picture is best effort: a failed write must not fail the canary.
            let _ = self.store.canary_window(
                deploy,
                step,
                share,
                window.as_millis() as i64,
                started_ms,
                c,
                o,
                verdict,
            );
        };
        record(&Traffic::default(), &Traffic::default(), None);
        while Instant::now() < until {
            self.reconcile(run).await?;
            for node in canaries {
                if let Some(instance) = run.started.get(node)
                    && !self.runtime.is_running(instance).await
                {
                    return Err(StepError::Failed(format!(
                        "canary {node} {} died during its watch window (log: {})",
                        instance.version,
                        instance.log.display()
                    )));
                }
            }
            if shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                let now = self.members().await?;
                let c = traffic(&now, &before, canaries);
                record(&c, &traffic(&now, &before, live), None);
                self.event(
                    EventKind::Progress,
                    None,
                    format!(
                        "canary: {} requests, {:.2}% errors, {}s left",
                        c.requests,
                        c.error_rate() * 100.0,
                        until.saturating_duration_since(Instant::now()).as_secs()
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run.canary_steps += 1;
        let verdict = self
            .verdict(run, canaries, live, share, window, &before)
            .await?;
        if let Ok(after) = self.members().await {
            let shown = match &verdict {
                Verdict::Pass(m) => format!("passed: {m}"),
                Verdict::Fail(m) => format!("failed: {m}"),
                Verdict::Inconclusive(m) => m.clone(),
            };
            record(
                &traffic(&after, &before, canaries),
                &traffic(&after, &before, live),
                Some(&shown),
            );
        }
        match verdict {
            Verdict::Pass(summary) => Ok(format!("passed: {summary}")),
            Verdict::Fail(why) => Err(StepError::Failed(why)),
            // Too little data is nobody's verdict: a person decides (or the pause limit aborts).
            Verdict::Inconclusive(why) if self.spec.canary.pause_when_inconclusive => {
                let limit = self.spec.pause_limit;
                let decided = self.pause(run, &why, limit).await?;
                Ok(format!("{why}; {decided}"))
            }
            Verdict::Inconclusive(why) => Err(StepError::Failed(why)),
        }
    }

    /// The window's verdict: the balancer's counters (where it counts requests per member)
    /// and every configured analysis; the worst one wins, and no judge at all is no pass.
    async fn verdict(
        &self,
        run: &Run,
        canaries: &[NodeName],
        live: &[NodeName],
        share: u32,
        window: Duration,
        before: &Members,
    ) -> Result<Verdict, StepError> {
        let mut verdict = None::<Verdict>;
        if self.balancer.reports_traffic() {
            let after = self.members().await?;
            let c = traffic(&after, before, canaries);
            let o = traffic(&after, before, live);
            verdict = Some(judge(&c, &o, &self.spec.canary));
        }
        let asked = AnalysisWindow {
            service: self.service.clone(),
            version: run.release.version.clone(),
            step: run.canary_steps,
            share,
            window,
            canaries: canaries.to_vec(),
            stable: live.to_vec(),
        };
        for analysis in &self.analyses {
            let v = match analysis.analyze(&asked).await {
                Verdict::Pass(m) => Verdict::Pass(format!("{}: {m}", analysis.name())),
                Verdict::Fail(m) => Verdict::Fail(format!("{}: {m}", analysis.name())),
                Verdict::Inconclusive(m) => {
                    Verdict::Inconclusive(format!("{}: {m}", analysis.name()))
                }
            };
            verdict = Some(match verdict {
                Some(earlier) => earlier.and(v),
                None => v,
            });
        }
        Ok(verdict.unwrap_or_else(|| {
            Verdict::Inconclusive(
                "inconclusive: this balancer counts no requests per member and no analysis is configured".into(),
            )
        }))
    }
}

fn traffic(after: &Members, before: &Members, nodes: &[NodeName]) -> Traffic {
    let mut total = Traffic::default();
    for node in nodes {
        let Some(a) = after.get(node) else { continue };
        let b = before.get(node).map(|m| m.traffic).unwrap_or_default();
        let d = a.traffic.since(&b);
        total.requests += d.requests;
        total.errors += d.errors;
        total.latency_ms_sum += d.latency_ms_sum;
    }
    total
}

/// Weights that give `canaries` `share` percent of new requests next to `live`: the old weights
/// × (100 − share) against canary weights summing to the old total × share.
pub fn canary_weights(
    canaries: &[NodeName],
    live: &[NodeName],
    weights: &BTreeMap<NodeName, u32>,
    share: u32,
) -> Vec<(NodeName, LbState, Option<u32>)> {
    let weight_of = |n: &NodeName| weights.get(n).copied().unwrap_or(1);
    let live_total: u32 = live.iter().map(weight_of).sum();
    // 80:20 is 4:1: the smallest weights with the same shares (HAProxy takes at most 256).
    let g = gcd(100 - share, share).max(1);
    let (stable_part, canary_part) = ((100 - share) / g, share / g);
    let canary_weight = (live_total * canary_part / canaries.len().max(1) as u32).clamp(1, 10_000);
    live.iter()
        .map(|n| {
            let scaled = (weight_of(n) * stable_part).clamp(1, 10_000);
            (n.clone(), LbState::Active, Some(scaled))
        })
        .chain(
            canaries
                .iter()
                .map(|n| (n.clone(), LbState::Active, Some(canary_weight))),
        )
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The verdict on the balancer's counters of one window. Fewer requests than `min_requests`
/// is inconclusive, which is not a pass.
pub fn judge(canary: &Traffic, old: &Traffic, cfg: &CanarySpec) -> Verdict {
    let summary = format!(
        "canary: {} requests, {:.2}% errors, mean {:.1}ms; old: {} requests, {:.2}% errors, mean {:.1}ms",
        canary.requests,
        canary.error_rate() * 100.0,
        canary.mean_latency_ms().unwrap_or(0.0),
        old.requests,
        old.error_rate() * 100.0,
        old.mean_latency_ms().unwrap_or(0.0)
    );
    match judge_counters(canary, old, cfg) {
        Ok(()) => Verdict::Pass(summary),
        Err(why) if canary.requests < cfg.min_requests => {
            Verdict::Inconclusive(format!("{why} ({summary})"))
        }
        Err(why) => Verdict::Fail(format!("{why} ({summary})")),
    }
}

fn judge_counters(canary: &Traffic, old: &Traffic, cfg: &CanarySpec) -> Result<(), String> {
    if canary.requests < cfg.min_requests {
        return Err(format!(
            "inconclusive: the canary got {} requests in its window, fewer than min_requests = {} (does this balancer report traffic?)",
            canary.requests, cfg.min_requests
        ));
    }
    let allowed = old.error_rate() + cfg.max_error_rate;
    if canary.error_rate() > allowed {
        return Err(format!(
            "canary error rate {:.2}% exceeds the old release's {:.2}% by more than {:.2}%",
            canary.error_rate() * 100.0,
            old.error_rate() * 100.0,
            cfg.max_error_rate * 100.0
        ));
    }
    if let (Some(c), Some(o)) = (canary.mean_latency_ms(), old.mean_latency_ms()) {
        // A few milliseconds of slack: at sub-millisecond latencies a ratio is only noise.
        let limit = o * cfg.max_latency_ratio + 5.0;
        if c > limit {
            return Err(format!(
                "canary mean latency {c:.1}ms is above {limit:.1}ms ({}× the old release's {o:.1}ms)",
                cfg.max_latency_ratio
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(requests: u64, errors: u64, latency: f64) -> Traffic {
        Traffic {
            requests,
            errors,
            latency_ms_sum: latency * requests as f64,
        }
    }

    fn cfg() -> CanarySpec {
        CanarySpec {
            max_error_rate: 0.01,
            max_latency_ratio: 3.0,
            min_requests: 1,
            pause_when_inconclusive: true,
            steps: vec![crate::spec::CanaryPhase::Watch {
                share: 10,
                window: Duration::from_secs(30),
            }],
        }
    }

    #[test]
    fn canary_weights_give_the_configured_share() {
        let (a, b, c) = (
            NodeName::from("a"),
            NodeName::from("b"),
            NodeName::from("c"),
        );
        let one = canary_weights(
            std::slice::from_ref(&b),
            std::slice::from_ref(&a),
            &BTreeMap::new(),
            10,
        );
        assert_eq!(one[0], (a.clone(), LbState::Active, Some(9)));
        assert_eq!(one[1], (b.clone(), LbState::Active, Some(1)));
        let weights = BTreeMap::from([(a.clone(), 3), (b.clone(), 1)]);
        let two = canary_weights(std::slice::from_ref(&c), &[a, b], &weights, 20);
        let total: u32 = two.iter().filter_map(|(_, _, w)| *w).sum();
        let canary = two[2].2.unwrap();
        assert_eq!((canary * 100) / total, 20, "{two:?}");
    }

    #[test]
    fn canary_judgement() {
        let pass = |v: Verdict| matches!(v, Verdict::Pass(_));
        assert!(pass(judge(&t(100, 0, 2.0), &t(900, 0, 2.0), &cfg())));
        let Verdict::Fail(err) = judge(&t(100, 10, 2.0), &t(900, 0, 2.0), &cfg()) else {
            panic!("10 % errors passed")
        };
        assert!(err.contains("error rate 10.00%"), "{err}");
        assert!(pass(judge(&t(100, 1, 2.0), &t(900, 9, 2.0), &cfg())));
        let Verdict::Fail(err) = judge(&t(100, 0, 200.0), &t(900, 0, 10.0), &cfg()) else {
            panic!("20× latency passed")
        };
        assert!(err.contains("latency"), "{err}");
        let mut strict = cfg();
        strict.min_requests = 50;
        assert!(matches!(
            judge(&t(10, 0, 1.0), &t(900, 0, 1.0), &strict),
            Verdict::Inconclusive(_)
        ));
        // Zero requests (a balancer that reports no traffic) is never a pass.
        let Verdict::Inconclusive(err) = judge(&t(0, 0, 0.0), &t(0, 0, 0.0), &cfg()) else {
            panic!("zero requests was not inconclusive")
        };
        assert!(err.contains("inconclusive"), "{err}");
    }
}
