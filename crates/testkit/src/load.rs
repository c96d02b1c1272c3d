//! The load of the end-to-end tests, as counts: testkit's one load client ([`StickyLoad`]) with
//! keep-alive users sending GETs until stopped or bounded, each failure as the user saw it.
//! Nothing is resent unless the test asks ([`Load::start_resending`]); resends are counted apart.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::client::{LoadOptions, LoadReport, StickyLoad};

/// How long [`Load::wait_for_requests`] waits at most.
const DEADLINE: Duration = Duration::from_secs(20);

/// What a load run saw: every answer by outcome, node and version.
#[derive(Default, Debug)]
pub struct LoadCounts {
    pub sent: u64,
    pub ok: u64,
    /// Requests the user saw fail: non-2xx answers, connection errors and timeouts.
    pub failed: u64,
    /// `STATUS BODY` of a failed answer, or the client's error.
    pub failures: Vec<String>,
    pub by_node: BTreeMap<String, u64>,
    pub by_version: BTreeMap<String, u64>,
    /// GETs sent a second time because the server closed the kept connection under them (only
    /// with [`Load::start_resending`]); each is counted once in `sent`.
    pub resent: u64,
}

impl LoadCounts {
    fn of(report: &LoadReport) -> LoadCounts {
        let mut counts = LoadCounts::default();
        for sample in report.samples() {
            counts.sent += 1;
            counts.resent += u64::from(sample.resent);
            if sample.ok {
                counts.ok += 1;
                let node = sample.node.clone().or_else(|| sample.route.clone());
                *counts.by_node.entry(node.unwrap_or_default()).or_default() += 1;
                let version = sample.version.clone().unwrap_or_default();
                *counts.by_version.entry(version).or_default() += 1;
                continue;
            }
            counts.failed += 1;
            let error = sample.error.clone().unwrap_or_default();
            counts.failures.push(match sample.status {
                Some(status) => {
                    let prefix = format!("HTTP {status}: ");
                    let body = error.strip_prefix(&prefix).unwrap_or(&error).trim();
                    format!("{status} {body}")
                }
                None => error,
            });
        }
        counts
    }
}

/// `users` keep-alive users sending GETs to one URL, at most `max_requests` in all.
pub struct Load {
    sticky: StickyLoad,
}

impl Load {
    /// The load that resends nothing: what a user of Python `requests` or an API client sees.
    pub fn start(url: impl AsRef<str>, users: usize, max_requests: u64) -> Load {
        Load::with(url, users, max_requests, LoadOptions::keep_alive())
    }

    /// [`Load::start`], resending a GET once when the server closed the kept connection as it
    /// went out (what a browser does); the resends are in [`LoadCounts::resent`].
    pub fn start_resending(url: impl AsRef<str>, users: usize, max_requests: u64) -> Load {
        let options = LoadOptions {
            resend_closed_idle: true,
            ..LoadOptions::keep_alive()
        };
        Load::with(url, users, max_requests, options)
    }

    /// [`Load::start`] from the local address `local`.
    pub fn start_from(
        url: impl AsRef<str>,
        users: usize,
        max_requests: u64,
        local: IpAddr,
    ) -> Load {
        let options = LoadOptions {
            local: Some(local),
            ..LoadOptions::keep_alive()
        };
        Load::with(url, users, max_requests, options)
    }

    fn with(url: impl AsRef<str>, users: usize, max_requests: u64, options: LoadOptions) -> Load {
        let users = users.max(1);
        let options = LoadOptions {
            max_requests_per_user: max_requests.div_ceil(users as u64),
            max_duration: Duration::from_secs(600),
            ..options
        };
        Load {
            sticky: StickyLoad::start(url.as_ref(), users, options),
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sticky.sent()
    }

    /// Waits until `n` requests have been sent in all.
    pub async fn wait_for_requests(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.sent() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load sent {} of {n} requests within {DEADLINE:?}",
                self.sent()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` more requests than now have been sent.
    pub async fn wait_for_more(&self, n: u64) {
        self.wait_for_requests(self.sent() + n).await;
    }

    /// The counts so far, the load going on.
    pub fn counts(&self) -> LoadCounts {
        LoadCounts::of(&self.sticky.snapshot())
    }

    pub async fn stop(self) -> LoadCounts {
        LoadCounts::of(&self.sticky.stop().await)
    }
}
