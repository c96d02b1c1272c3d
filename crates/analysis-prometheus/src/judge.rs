//! Counting a window's measurements: every point of the one series a query returns is judged;
//! more failures than `failure_limit` fail, fewer than `count` measured points is no verdict.

use nonstop_ports::Verdict;

use crate::api::Series;
use crate::condition::Condition;

/// How the points of one window become a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub success: Condition,
    /// A value matching this fails even where `success` holds.
    pub failure: Option<Condition>,
    /// Measured points needed for a pass.
    pub count: u32,
    /// Failed points tolerated.
    pub failure_limit: u32,
}

/// Values shown in a message; the rest are counted.
const SHOWN: usize = 12;

impl Rule {
    fn failed(&self, value: f64) -> bool {
        !self.success.holds(value) || self.failure.is_some_and(|f| f.holds(value))
    }

    fn wanted(&self) -> String {
        match &self.failure {
            Some(f) => format!("`{}` and not `{f}`", self.success),
            None => format!("`{}`", self.success),
        }
    }

    /// The verdict on a range query's answer. Exactly one series is judged: several would need
    /// a choice of which one speaks for the canary, so they are inconclusive with that advice.
    pub fn judge(&self, series: &[Series]) -> Verdict {
        let one = match series {
            [] => {
                return Verdict::Inconclusive(
                    "inconclusive: the query returned no series (no data for this window: is Prometheus scraping the canary?)".into(),
                );
            }
            [one] => one,
            many => {
                return Verdict::Inconclusive(format!(
                    "inconclusive: the query returned {} series ({}); aggregate it to one, e.g. with sum(...)",
                    many.len(),
                    many.iter()
                        .take(3)
                        .map(labels)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        };
        let values: Vec<f64> = one.values.iter().map(|(_, v)| *v).collect();
        // NaN is "no value" (e.g. 0/0 before any request): not a measurement either way.
        let measured: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        let nan = values.len() - measured.len();
        let failed = measured.iter().filter(|v| self.failed(**v)).count();
        let seen = format!(
            "{} measured [{}]{}",
            measured.len(),
            show(&measured),
            if nan > 0 {
                format!(" and {nan} NaN")
            } else {
                String::new()
            }
        );
        if failed > self.failure_limit as usize {
            Verdict::Fail(format!(
                "{failed} of {} measurements failed {} (failure_limit {}): {seen}",
                measured.len(),
                self.wanted(),
                self.failure_limit
            ))
        } else if measured.len() < self.count as usize {
            Verdict::Inconclusive(format!(
                "inconclusive: {seen}, fewer than count = {} (the window holds window/interval + 1 points at most)",
                self.count
            ))
        } else {
            Verdict::Pass(format!(
                "{seen}, {failed} failed {} (failure_limit {})",
                self.wanted(),
                self.failure_limit
            ))
        }
    }
}

fn labels(series: &Series) -> String {
    let pairs: Vec<String> = series
        .metric
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn show(values: &[f64]) -> String {
    let mut shown: Vec<String> = values.iter().take(SHOWN).map(|v| number(*v)).collect();
    if values.len() > SHOWN {
        shown.push(format!("… {} more", values.len() - SHOWN));
    }
    shown.join(", ")
}

/// Four significant-ish digits: `0.2105`, `0.0001234` as `1.234e-4`, `1500`.
fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || v.abs() >= 0.01 {
        let fixed = format!("{v:.4}");
        let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
        if trimmed.is_empty() || trimmed == "-" {
            "0".into()
        } else {
            trimmed.into()
        }
    } else {
        format!("{v:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Series {
        Series {
            metric: Default::default(),
            values: values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v))
                .collect(),
        }
    }

    fn rule(count: u32, failure_limit: u32) -> Rule {
        Rule {
            success: Condition::parse("result < 0.01").unwrap(),
            failure: None,
            count,
            failure_limit,
        }
    }

    #[test]
    fn failures_above_the_limit_fail_and_say_the_values() {
        let v = rule(3, 0).judge(&[series(&[0.0, 0.2, 0.25, 0.0])]);
        let Verdict::Fail(m) = v else { panic!("{v:?}") };
        assert_eq!(
            m,
            "2 of 4 measurements failed `result < 0.01` (failure_limit 0): 4 measured [0, 0.2, 0.25, 0]"
        );
        let v = rule(3, 2).judge(&[series(&[0.0, 0.2, 0.25, 0.0])]);
        assert!(matches!(v, Verdict::Pass(_)), "{v:?}");
        // A failure is decided even when there are fewer points than `count`.
        let v = rule(5, 0).judge(&[series(&[0.5])]);
        assert!(matches!(v, Verdict::Fail(_)), "{v:?}");
    }

    #[test]
    fn enough_good_points_pass_with_their_values() {
        let v = rule(3, 0).judge(&[series(&[0.001, 0.0, 0.005])]);
        assert_eq!(
            v,
            Verdict::Pass(
                "3 measured [1.000e-3, 0, 5.000e-3], 0 failed `result < 0.01` (failure_limit 0)"
                    .into()
            )
        );
    }

    #[test]
    fn too_few_points_nan_empty_and_many_series_are_never_a_pass() {
        let v = rule(3, 0).judge(&[series(&[0.0, f64::NAN, f64::NAN, 0.0])]);
        let Verdict::Inconclusive(m) = v else {
            panic!("{v:?}")
        };
        assert!(
            m.contains("2 measured [0, 0] and 2 NaN, fewer than count = 3"),
            "{m}"
        );
        let all_nan = rule(1, 0).judge(&[series(&[f64::NAN; 5])]);
        assert!(matches!(all_nan, Verdict::Inconclusive(_)), "{all_nan:?}");
        let empty = rule(1, 0).judge(&[]);
        assert!(matches!(empty, Verdict::Inconclusive(m) if m.contains("no series")));
        let mut a = series(&[0.0]);
        a.metric.insert("backend".into(), "blue".into());
        let two = rule(1, 0).judge(&[a, series(&[0.0])]);
        let Verdict::Inconclusive(m) = two else {
            panic!("{two:?}")
        };
        assert!(m.contains("2 series ({backend=\"blue\"}, {})"), "{m}");
    }

    #[test]
    fn a_failure_condition_fails_values_success_lets_through() {
        let r = Rule {
            success: Condition::parse("result < 100").unwrap(),
            failure: Some(Condition::parse("result >= 50").unwrap()),
            count: 1,
            failure_limit: 0,
        };
        let v = r.judge(&[series(&[10.0, 60.0])]);
        let Verdict::Fail(m) = v else { panic!("{v:?}") };
        assert!(m.contains("`result < 100` and not `result >= 50`"), "{m}");
        assert!(matches!(r.judge(&[series(&[10.0])]), Verdict::Pass(_)));
        // +Inf (x/0 with x > 0) is a value, and a failing one here.
        assert!(matches!(
            r.judge(&[series(&[f64::INFINITY])]),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(0.21052631), "0.2105");
        assert_eq!(number(1500.0), "1500");
        assert_eq!(number(0.000_123_4), "1.234e-4");
        assert_eq!(number(-0.5), "-0.5");
    }
}
