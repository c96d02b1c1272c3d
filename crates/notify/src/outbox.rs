//! The process's one outbox: a bounded queue drained by its own thread, so a webhook never
//! blocks or fails a deploy; each delivery is retried with back-off, and `finish` bounds the wait.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nonstop_config::notify::NotifyEvent;
use nonstop_http_client::{self as http, HttpError};

use crate::sign;
use crate::webhook::Webhook;

/// Deliveries waiting to be sent; one more is dropped with a warning.
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

/// One body for one webhook.
pub struct Delivery {
    pub hook: Arc<Webhook>,
    pub event: NotifyEvent,
    pub body: Vec<u8>,
}

struct Outbox {
    queue: tokio::sync::mpsc::Sender<Delivery>,
    pending: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Pending {
    fn add(&self, n: isize) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_add_signed(n);
        self.changed.notify_all();
    }
}

static OUTBOX: OnceLock<Option<Outbox>> = OnceLock::new();

fn outbox() -> Option<&'static Outbox> {
    OUTBOX
        .get_or_init(|| {
            let (queue, mut incoming) = tokio::sync::mpsc::channel::<Delivery>(QUEUE);
            let pending = Arc::new(Pending::default());
            let done = pending.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            std::thread::Builder::new()
                .name("nonstop-notify".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(delivery) = incoming.recv().await {
                            let done = done.clone();
                            tokio::spawn(async move {
                                deliver(&delivery).await;
                                done.add(-1);
                            });
                        }
                    })
                })
                .ok()?;
            Some(Outbox { queue, pending })
        })
        .as_ref()
}

/// Queues `delivery` without waiting; `false` (and a warning) when the queue is full.
pub fn enqueue(delivery: Delivery) -> bool {
    let Some(outbox) = outbox() else {
        tracing::warn!("notify: no delivery thread could be started; webhook not sent");
        return false;
    };
    outbox.pending.add(1);
    let (label, event) = (delivery.hook.label.clone(), delivery.event);
    match outbox.queue.try_send(delivery) {
        Ok(()) => true,
        Err(_) => {
            outbox.pending.add(-1);
            tracing::warn!(
                "notify: {label}: {} not sent, {QUEUE} deliveries are already waiting",
                event.as_str()
            );
            false
        }
    }
}

/// Waits up to `bound` for every queued delivery to end (sent or given up); the one line to
/// print when some were still under way.
pub fn finish(bound: Duration) -> Option<String> {
    let outbox = OUTBOX.get()?.as_ref()?;
    let count = outbox
        .pending
        .count
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (count, _) = outbox
        .pending
        .changed
        .wait_timeout_while(count, bound, |n| *n > 0)
        .unwrap_or_else(|e| e.into_inner());
    (*count > 0).then(|| {
        format!(
            "notify: gave up after {}s on {} webhook deliveries still under way (receiver down or slow)",
            bound.as_secs(),
            *count
        )
    })
}

/// How an attempt went, in words that never hold the URL.
enum Attempt {
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
    match http::send(&hook.url, &request, ATTEMPT_TIMEOUT).await {
        Ok(answer) if (200..300).contains(&answer.status) => Attempt::Delivered,
        Ok(answer) if matches!(answer.status, 408 | 429) || answer.status >= 500 => {
            Attempt::Retry(format!("answered {}", answer.status))
        }
        Ok(answer) => Attempt::Refused(answer.status),
        Err(HttpError::Timeout { timeout, .. }) => {
            Attempt::Retry(format!("no answer within {}s", timeout.as_secs()))
        }
        Err(_) => Attempt::Retry("unreachable".into()),
    }
}

async fn deliver(delivery: &Delivery) {
    let (label, event) = (&delivery.hook.label, delivery.event.as_str());
    let mut last = String::new();
    for wait in std::iter::once(Duration::ZERO).chain(BACKOFF) {
        tokio::time::sleep(wait).await;
        match attempt(delivery).await {
            Attempt::Delivered => {
                tracing::debug!("notify: {label}: {event} delivered");
                return;
            }
            Attempt::Refused(status) => {
                tracing::warn!("notify: {label}: {event} refused with {status}; not retried");
                return;
            }
            Attempt::Retry(why) => last = why,
        }
    }
    tracing::warn!(
        "notify: {label}: {event} not delivered after {} tries ({last})",
        BACKOFF.len() + 1
    );
}
