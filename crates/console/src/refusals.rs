//! Refused credentials on state-changing requests go to the audit log, but only so many a
//! minute per address and in all, so that a flood of junk tokens cannot fill the disk.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Records per address per window.
pub const PER_ADDRESS: u32 = 10;
/// Records from all addresses per window.
pub const TOTAL: u32 = 100;

/// This window's counts and what was left out since the last record.
#[derive(Debug)]
pub struct Refusals {
    since: Instant,
    per_address: HashMap<String, u32>,
    total: u32,
    left_out: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            since: Instant::now(),
            per_address: HashMap::new(),
            total: 0,
            left_out: 0,
        }
    }
}

impl Refusals {
    /// Whether a refusal from `address` is recorded at `now`; `Some(n)` says yes, and that `n`
    /// refusals before it were left out (for the record to say so).
    pub fn admit(&mut self, address: &str, now: Instant) -> Option<u64> {
        if now.duration_since(self.since) >= WINDOW {
            self.since = now;
            self.per_address.clear();
            self.total = 0;
        }
        let mine = self.per_address.get(address).copied().unwrap_or(0);
        if self.total >= TOTAL || mine >= PER_ADDRESS {
            self.left_out += 1;
            return None;
        }
        // The map is bounded by TOTAL entries per window: only admitted addresses get one.
        self.per_address.insert(address.to_string(), mine + 1);
        self.total += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_address_and_in_all_then_a_new_window() {
        let mut r = Refusals::default();
        let t0 = r.since;
        for _ in 0..PER_ADDRESS {
            assert_eq!(r.admit("10.0.0.1", t0), Some(0));
        }
        assert_eq!(r.admit("10.0.0.1", t0), None);
        assert_eq!(r.admit("10.0.0.1", t0), None);
        // Another address still gets in, and hears about the two left out.
        assert_eq!(r.admit("10.0.0.2", t0), Some(2));
        for i in 0..TOTAL {
            r.admit(&format!("192.0.2.{i}"), t0);
        }
        assert_eq!(r.admit("10.0.0.3", t0), None);
        assert!(r.per_address.len() <= TOTAL as usize);
        let later = t0 + WINDOW;
        assert!(r.admit("10.0.0.1", later).is_some());
    }
}
