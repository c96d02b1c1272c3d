//! `success` / `failure` conditions: `result OP NUMBER`, e.g. `result < 0.01`, judged on one
//! measured value. Deliberately tiny: one comparison, so a reader sees at once what passes.

use std::fmt;

/// A comparison of a measurement (`result`) with a fixed number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub op: Op,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// Operators longest first, so `<=` is not read as `<` followed by `=0.5`.
const OPS: [(&str, Op); 5] = [
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("==", Op::Eq),
    ("<", Op::Lt),
    (">", Op::Gt),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("`{0}` does not start with `result`; write it like \"result < 0.01\"")]
    NoResult(String),
    #[error(
        "`{0}` has no comparison after `result`; use <, <=, >, >= or ==, e.g. \"result < 0.01\""
    )]
    NoOperator(String),
    #[error("`{number}` in `{text}` is not a finite number; write it like 0.01, 250 or 1e-3")]
    BadNumber { text: String, number: String },
}

impl Condition {
    /// Parses `result OP NUMBER` (spaces optional).
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let rest = text
            .trim()
            .strip_prefix("result")
            .ok_or_else(|| ConditionError::NoResult(text.to_string()))?
            .trim_start();
        let (op, number) = OPS
            .iter()
            .find_map(|(sym, op)| rest.strip_prefix(sym).map(|n| (*op, n.trim())))
            .ok_or_else(|| ConditionError::NoOperator(text.to_string()))?;
        let bad = || ConditionError::BadNumber {
            text: text.to_string(),
            number: number.to_string(),
        };
        let threshold: f64 = number.parse().map_err(|_| bad())?;
        if !threshold.is_finite() {
            return Err(bad());
        }
        Ok(Condition { op, threshold })
    }

    /// Whether `value` satisfies the comparison; NaN satisfies none.
    pub fn holds(&self, value: f64) -> bool {
        let t = self.threshold;
        match self.op {
            Op::Lt => value < t,
            Op::Le => value <= t,
            Op::Gt => value > t,
            Op::Ge => value >= t,
            Op::Eq => value == t,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sym = OPS
            .iter()
            .find_map(|(sym, op)| (*op == self.op).then_some(*sym))
            .unwrap_or("?");
        write!(f, "result {sym} {}", self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_parses_and_compares() {
        let cases = [
            ("result < 0.01", 0.005, true, 0.01, false),
            ("result<=0.01", 0.01, true, 0.02, false),
            ("result > 100", 101.0, true, 100.0, false),
            ("  result >= 1e-3 ", 0.001, true, 0.0005, false),
            ("result == 0", 0.0, true, 0.1, false),
            ("result < -2.5", -3.0, true, -2.5, false),
        ];
        for (text, yes, yes_holds, no, no_holds) in cases {
            let c = Condition::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.holds(yes), yes_holds, "{text} on {yes}");
            assert_eq!(c.holds(no), no_holds, "{text} on {no}");
            assert!(!c.holds(f64::NAN), "{text}: NaN never holds");
        }
        assert_eq!(Condition::parse("result<=0.5").unwrap().op, Op::Le);
        assert_eq!(
            Condition::parse("result >= 2").unwrap().to_string(),
            "result >= 2"
        );
    }

    #[test]
    fn mistakes_say_what_to_write() {
        assert!(matches!(
            Condition::parse("value < 1"),
            Err(ConditionError::NoResult(_))
        ));
        let err = Condition::parse("result ~ 1").unwrap_err();
        assert!(matches!(err, ConditionError::NoOperator(_)), "{err}");
        assert!(err.to_string().contains("<, <=, >, >= or =="), "{err}");
        for bad in [
            "result < ",
            "result < 0.01s",
            "result < NaN",
            "result < inf",
        ] {
            let err = Condition::parse(bad).unwrap_err();
            assert!(
                matches!(err, ConditionError::BadNumber { .. }),
                "{bad}: {err}"
            );
        }
        // `=` alone is an assignment typo, not a comparison.
        assert!(Condition::parse("result = 1").is_err());
    }
}
