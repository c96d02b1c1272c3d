//! The process's outbox: deliveries run on a thread of their own, at most `QUEUE` waiting or
//! under way, each retried with back-off; `finish` bounds how long a command waits at its end.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nonstop_config::notify::NotifyEvent;
use nonstop_http_client::{self as http, HttpError};

use crate::sign;
use crate::webhook::Webhook;

/// Deliveries waiting or under way at once; one more is dropped with a warning.
pub const QUEUE: usize = 64;
/// How long one attempt may take, connect to answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The waits between attempts: four tries in all.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// How long a `nonstop` command waits at its end for deliveries still under way.
pub const FINISH_BOUND: Duration = Duration::from_secs(5);
/// Failure lines kept for `finish` to print (a console runs long; the rest are counted).
const KEPT_FAILURES: usize = 16;

/// One body for one webhook.
pub struct Delivery {
    pub hook: Arc<Webhook>,
    pub event: NotifyEvent,
    pub body: Vec<u8>,
}

/// A queue and the thread that drains it.
pub struct Outbox {
    queue: tokio::sync::mpsc::UnboundedSender<Delivery>,
    tally: Arc<Tally>,
}

/// What is still under way and what went wrong, shared with the delivery thread.
#[derive(Default)]
struct Tally {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pending: usize,
    failures: Vec<String>,
    more_failures: usize,
}

impl Tally {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, line: String) {
        tracing::warn!("{line}");
        let mut state = self.lock();
        if state.failures.len() < KEPT_FAILURES {
            state.failures.push(line);
        } else {
            state.more_failures += 1;
        }
    }

    fn ended(&self) {
        let mut state = self.lock();
        state.pending = state.pending.saturating_sub(1);
        self.changed.notify_all();
    }
}

static GLOBAL: OnceLock<Option<Outbox>> = OnceLock::new();

/// The process's outbox, started on first use; `None` if its thread could not be started.
pub fn global() -> Option<&'static Outbox> {
    GLOBAL.get_or_init(Outbox::start).as_ref()
}

/// [`Outbox::finish`] of the process's outbox; nothing to say if none was ever used.
pub fn finish(bound: Duration) -> Vec<String> {
    match GLOBAL.get() {
        Some(Some(outbox)) => outbox.finish(bound),
        _ => Vec::new(),
    }
}

impl Outbox {
    /// An outbox with its own delivery thread (and single-threaded runtime).
    pub fn start() -> Option<Outbox> {
        let (queue, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
        let tally = Arc::new(Tally::default());
        let shared = tally.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        std::thread::Builder::new()
            .name("nonstop-notify".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(delivery) = incoming.recv().await {
                        let tally = shared.clone();
                        tokio::spawn(async move {
                            if let Err(line) = deliver(&delivery, || attempt(&delivery)).await {
                                tally.failed(line);
                            }
                            tally.ended();
                        });
                    }
                })
            })
            .ok()?;
        Some(Outbox { queue, tally })
    }

    /// Queues `delivery` without waiting; `false` (and a failure line) when `QUEUE` are
    /// already waiting or under way.
    pub fn enqueue(&self, delivery: Delivery) -> bool {
        let (label, event) = (delivery.hook.label.clone(), delivery.event.as_str());
        {
            let mut state = self.tally.lock();
            if state.pending >= QUEUE {
                drop(state);
                self.tally.failed(format!(
                    "notify: {label}: {event} not sent, {QUEUE} deliveries are already waiting or under way"
                ));
                return false;
            }
            state.pending += 1;
        }
        if self.queue.send(delivery).is_err() {
            self.tally.ended();
            self.tally.failed(format!(
                "notify: {label}: {event} not sent, the delivery thread is gone"
            ));
            return false;
        }
        true
    }

    /// Waits up to `bound` for every queued delivery to end (sent or given up); then the
    /// lines to print: deliveries that failed, and one line if some were still under way.
    pub fn finish(&self, bound: Duration) -> Vec<String> {
        let state = self.tally.lock();
        let (mut state, _) = self
            .tally
            .changed
            .wait_timeout_while(state, bound, |s| s.pending > 0)
            .unwrap_or_else(|e| e.into_inner());
        let mut lines = std::mem::take(&mut state.failures);
        if state.more_failures > 0 {
            lines.push(format!(
                "notify: {} more deliveries failed",
                std::mem::take(&mut state.more_failures)
            ));
        }
        if state.pending > 0 {
            lines.push(format!(
                "notify: gave up after {bound:?} on {} webhook deliveries still under way (receiver down or slow)",
                state.pending
            ));
        }
        lines
    }
}

/// How an attempt went, in words that never hold the URL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attempt {
    Delivered,
    /// Worth another try (no answer, 5xx, 408, 429).
    Retry(String),
    /// The receiver refused it for good (another 4xx).
    Refused(u16),
}

async fn attempt(delivery: &Delivery) -> Attempt {
    let hook = &delivery.hook;
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("X-Nonstop-Event", delivery.event.as_str().to_string()),
    ];
    if let Some(key) = &hook.key {
        headers.push((sign::HEADER, sign::signature(key, t, &delivery.body)));
    }
    let request = http::Request {
        method: "POST",
        headers,
        body: &delivery.body,
    };
    let late = || format!("no answer within {ATTEMPT_TIMEOUT:?}");
    let answer = match &hook.tls {
        None => http::send(&hook.url, &request, ATTEMPT_TIMEOUT)
            .await
            .map_err(|e| match e {
                HttpError::Timeout { .. } => late(),
                _ => "unreachable".into(),
            }),
        Some(tls) => tokio::time::timeout(ATTEMPT_TIMEOUT, tls.send(&hook.url, &request))
            .await
            .unwrap_or_else(|_| Err(late())),
    };
    match answer {
        Ok(answer) if (200..300).contains(&answer.status) => Attempt::Delivered,
        Ok(answer) if matches!(answer.status, 408 | 429) || answer.status >= 500 => {
            Attempt::Retry(format!("answered {}", answer.status))
        }
        Ok(answer) => Attempt::Refused(answer.status),
        Err(why) => Attempt::Retry(why),
    }
}

/// Tries `delivery` by `attempt` at once, then after each wait of `BACKOFF`; the line to
/// report when it was refused or every try failed.
async fn deliver<F, Fut>(delivery: &Delivery, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let (label, event) = (&delivery.hook.label, delivery.event.as_str());
    let mut last = String::new();
    for wait in std::iter::once(Duration::ZERO).chain(BACKOFF) {
        tokio::time::sleep(wait).await;
        match attempt().await {
            Attempt::Delivered => {
                tracing::debug!("notify: {label}: {event} delivered");
                return Ok(());
            }
            Attempt::Refused(status) => {
                return Err(format!(
                    "notify: {label}: {event} refused with {status}; not retried"
                ));
            }
            Attempt::Retry(why) => last = why,
        }
    }
    Err(format!(
        "notify: {label}: {event} not delivered after {} tries ({last})",
        BACKOFF.len() + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_config::notify::NotifyFormat;
    use nonstop_testkit::receiver::{Receiver, TestTls};
    use std::cell::RefCell;
    use tokio::time::Instant;

    fn delivery(url: &str, key: Option<&[u8]>) -> Delivery {
        Delivery {
            hook: Arc::new(Webhook {
                label: "webhook 1 of shop (url_file hook.url)".into(),
                url: http::Url::parse(url).unwrap(),
                tls: None,
                key: key.map(<[u8]>::to_vec),
                events: NotifyEvent::all(),
                format: NotifyFormat::Json,
            }),
            event: NotifyEvent::Succeeded,
            body: br#"{"event":"succeeded"}"#.to_vec(),
        }
    }

    /// Runs `deliver` with attempts answering `answers` in turn; when each attempt was made,
    /// from the start, and what `deliver` said.
    async fn schedule(answers: &[Attempt]) -> (Vec<Duration>, Result<(), String>) {
        let start = Instant::now();
        let calls = RefCell::new(Vec::new());
        let d = delivery("http://127.0.0.1:9/hooks/tok-secret", None);
        let result = deliver(&d, || {
            let mut calls = calls.borrow_mut();
            calls.push(start.elapsed());
            let answer = answers[calls.len() - 1].clone();
            async move { answer }
        })
        .await;
        (calls.into_inner(), result)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_after_1_2_and_4_seconds_then_gives_up_without_the_url() {
        let (at, result) = schedule(&vec![Attempt::Retry("answered 503".into()); 4]).await;
        let secs: Vec<u64> = at.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [0, 1, 3, 7]);
        let line = result.unwrap_err();
        assert_eq!(
            line,
            "notify: webhook 1 of shop (url_file hook.url): succeeded not delivered after 4 tries (answered 503)"
        );
        assert!(!line.contains("tok-secret"));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_first_success_and_never_retries_a_refusal() {
        let (at, result) =
            schedule(&[Attempt::Retry("unreachable".into()), Attempt::Delivered]).await;
        assert_eq!(at, [Duration::ZERO, Duration::from_secs(1)]);
        assert_eq!(result, Ok(()));
        let (at, result) = schedule(&[Attempt::Refused(404)]).await;
        assert_eq!(at, [Duration::ZERO]);
        assert!(
            result
                .unwrap_err()
                .ends_with("succeeded refused with 404; not retried")
        );
    }

    #[tokio::test]
    async fn a_delivery_is_signed_and_finish_returns_once_it_is_sent() {
        let receiver = Receiver::start(200, Duration::ZERO).await;
        let outbox = Outbox::start().unwrap();
        assert!(outbox.enqueue(delivery(&receiver.url("/hook"), Some(b"k3y"))));
        let started = std::time::Instant::now();
        let lines = tokio::task::spawn_blocking(move || outbox.finish(FINISH_BOUND))
            .await
            .unwrap();
        assert_eq!(lines, Vec::<String>::new());
        assert!(started.elapsed() < FINISH_BOUND, "{:?}", started.elapsed());
        let got = receiver.received();
        assert_eq!(got.len(), 1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = got[0].header(sign::HEADER).unwrap();
        assert_eq!(sign::verify(b"k3y", header, &got[0].body, now, 60), Ok(()));
        assert_eq!(got[0].header("x-nonstop-event"), Some("succeeded"));
    }

    #[tokio::test]
    async fn https_is_verified_against_the_webhooks_ca_file() {
        let tls = TestTls::new();
        let receiver = Receiver::start_tls(200, Duration::ZERO, &tls).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &tls.ca_pem).unwrap();
        let over = |extra: &str| {
            let text = format!("url = \"{}\"\n{extra}", receiver.url("/hook"));
            let config: nonstop_config::notify::NotifyConfig = toml::from_str(&text).unwrap();
            let (hook, _) = Webhook::load(&config, "webhook 1 of shop".into(), dir.path())
                .unwrap_or_else(|e| panic!("{e}"));
            Delivery {
                hook: Arc::new(hook),
                event: NotifyEvent::Started,
                body: b"{}".to_vec(),
            }
        };
        assert_eq!(
            attempt(&over("ca_file = \"ca.pem\"")).await,
            Attempt::Delivered
        );
        let got = receiver.received();
        assert_eq!((got.len(), got[0].path.as_str()), (1, "/hook"));
        // The system's roots alone do not know the test's CA.
        match attempt(&over("")).await {
            Attempt::Retry(why) => assert!(
                why.starts_with("TLS handshake failed: invalid peer certificate"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(receiver.received().len(), 1);
    }

    #[test]
    fn the_queue_is_bounded_and_finish_gives_up_at_its_bound() {
        // Accepts connections into its backlog but never answers: every attempt hangs.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", silent.local_addr().unwrap());
        let outbox = Outbox::start().unwrap();
        for _ in 0..QUEUE {
            assert!(outbox.enqueue(delivery(&url, None)));
        }
        assert!(!outbox.enqueue(delivery(&url, None)), "one more is dropped");
        let started = std::time::Instant::now();
        let lines = outbox.finish(Duration::from_millis(300));
        let waited = started.elapsed();
        println!("finish(300ms) with {QUEUE} hanging deliveries returned after {waited:?}");
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2));
        assert_eq!(
            lines,
            [
                format!(
                    "notify: webhook 1 of shop (url_file hook.url): succeeded not sent, {QUEUE} deliveries are already waiting or under way"
                ),
                format!(
                    "notify: gave up after 300ms on {QUEUE} webhook deliveries still under way (receiver down or slow)"
                ),
            ]
        );
    }
}
