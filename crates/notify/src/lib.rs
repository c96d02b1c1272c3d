//! Deploy webhooks: a `Notifier` watches the engine's events and queues the deploy's summary when
//! it starts, pauses or ends; the outbox's own thread signs, sends and retries, never the engine.

mod outbox;
pub mod sign;
mod summary;
mod tls;
mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nonstop_config::ServiceConfig;
use nonstop_config::notify::NotifyEvent;
use nonstop_engine::{Event, EventKind};
use nonstop_store::{Outcome, Store};

pub use outbox::{ATTEMPT_TIMEOUT, BACKOFF, FINISH_BOUND, QUEUE, finish};
pub use summary::Summary;
pub use webhook::{Webhook, WebhookError};

/// A service's webhooks, fed from its engine's events.
pub struct Notifier {
    service: String,
    hooks: Vec<Arc<Webhook>>,
    store: PathBuf,
    warnings: Vec<String>,
}

/// An engine event that a webhook may be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    Start,
    Pause,
    End,
}

impl Moment {
    fn of(kind: EventKind) -> Option<Moment> {
        match kind {
            EventKind::Begin => Some(Moment::Start),
            EventKind::Done => Some(Moment::End),
            EventKind::Paused => Some(Moment::Pause),
            _ => None,
        }
    }
}

impl Notifier {
    /// The notifier of `service`, or `None` when it has no webhooks. Its files are read now
    /// (relative ones from `config_dir`); one that cannot be read skips its webhook with a
    /// warning at the deploy's first event: a webhook never refuses a deploy (or `status`).
    pub fn for_service(
        service: &str,
        config: &ServiceConfig,
        config_dir: &Path,
        store: PathBuf,
    ) -> Option<Notifier> {
        if config.notify.is_empty() {
            return None;
        }
        let mut hooks = Vec::new();
        let mut warnings = Vec::new();
        for (i, entry) in config.notify.iter().enumerate() {
            let entry = entry.get_ref();
            let source = match (&entry.url_file, &entry.url) {
                (Some(file), _) => format!("url_file {}", file.get_ref().display()),
                // An inline URL holds no secret by the config's own rule, but its path is
                // still left out: only where it goes.
                (None, Some(url)) => match webhook::parse(url.get_ref()) {
                    Some((url, https)) => format!(
                        "url {}://{}",
                        if https { "https" } else { "http" },
                        url.authority()
                    ),
                    None => "url".into(),
                },
                (None, None) => "url".into(),
            };
            let label = format!("webhook {} of {service} ({source})", i + 1);
            match Webhook::load(entry, label, config_dir) {
                Ok((hook, more)) => {
                    hooks.push(Arc::new(hook));
                    warnings.extend(more);
                }
                Err(e) => warnings.push(format!("{e}; this webhook is not sent")),
            }
        }
        Some(Notifier {
            service: service.to_string(),
            hooks,
            store,
            warnings,
        })
    }

    /// `inner` with this notifier listening: every event still reaches `inner` first.
    pub fn wrap(self, inner: Box<dyn Fn(&Event)>) -> Box<dyn Fn(&Event)> {
        let warned = std::cell::Cell::new(false);
        Box::new(move |event: &Event| {
            inner(event);
            if !warned.replace(true) {
                for warning in &self.warnings {
                    inner(&Event {
                        at_ms: event.at_ms,
                        deploy: event.deploy,
                        kind: EventKind::Warn,
                        node: None,
                        message: warning.clone(),
                    });
                }
            }
            self.observe(event);
        })
    }

    /// Queues what `event` means for the webhooks, if anything.
    fn observe(&self, event: &Event) {
        let Some(id) = event.deploy else { return };
        let Some(moment) = Moment::of(event.kind) else {
            return;
        };
        if self.hooks.is_empty() {
            return;
        }
        let record = Store::open(&self.store, &self.service)
            .ok()
            .and_then(|store| store.deployment(id).ok().flatten());
        let Some(record) = record else {
            tracing::warn!(
                "notify: deploy #{id} of {} is not in the store; no webhook sent",
                self.service
            );
            return;
        };
        let what = match (moment, record.outcome) {
            (Moment::Start, _) => NotifyEvent::Started,
            (Moment::Pause, _) => NotifyEvent::Paused,
            (Moment::End, Outcome::Succeeded) => NotifyEvent::Succeeded,
            (Moment::End, Outcome::RolledBack) => NotifyEvent::RolledBack,
            // `Running` at the end: the deploy stopped before it could record how (journal).
            (Moment::End, Outcome::Failed | Outcome::Running) => NotifyEvent::Failed,
        };
        let mut summary = Summary::of(what, &record);
        if what == NotifyEvent::Failed {
            summary.outcome = NotifyEvent::Failed.as_str().into();
        }
        // A pause says why it waits (and how to go on); a failure that could not be
        // recorded says it only in its event.
        if what == NotifyEvent::Paused || (what == NotifyEvent::Failed && summary.reason.is_none())
        {
            summary.reason = Some(event.message.clone());
        }
        self.send(&summary);
    }

    /// Queues `summary` for every webhook that wants its event.
    pub fn send(&self, summary: &Summary) {
        let Some(outbox) = outbox::global() else {
            tracing::warn!("notify: no delivery thread could be started; webhook not sent");
            return;
        };
        for hook in self.hooks.iter().filter(|h| h.wants(summary.event)) {
            outbox.enqueue(outbox::Delivery {
                hook: hook.clone(),
                event: summary.event,
                body: summary.body(hook.format),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_done_and_paused_are_the_moments_told() {
        assert_eq!(Moment::of(EventKind::Begin), Some(Moment::Start));
        assert_eq!(Moment::of(EventKind::Done), Some(Moment::End));
        for quiet in [
            EventKind::Step,
            EventKind::Progress,
            EventKind::Switched,
            EventKind::RollingBack,
            EventKind::Warn,
        ] {
            assert_eq!(Moment::of(quiet), None, "{quiet:?}");
        }
        assert_eq!(Moment::of(EventKind::Paused), Some(Moment::Pause));
    }

    fn event(kind: EventKind, deploy: i64, message: &str) -> Event {
        Event {
            at_ms: 0,
            deploy: Some(deploy),
            kind,
            node: None,
            message: message.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stores_record_becomes_the_event_and_each_webhook_gets_what_it_wants() {
        use nonstop_ports::Version;
        let receiver =
            nonstop_testkit::receiver::Receiver::start(200, std::time::Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("nonstop.db");
        let store = Store::open(&store_path, "shop").unwrap();
        let hook = |path: &str, events: Vec<NotifyEvent>| {
            let (url, _) = webhook::parse(&receiver.url(path)).unwrap();
            Arc::new(Webhook {
                label: format!("webhook {path}"),
                url,
                tls: None,
                key: None,
                events,
                format: nonstop_config::notify::NotifyFormat::Json,
            })
        };
        let notifier = Notifier {
            service: "shop".into(),
            hooks: vec![
                hook("/all", NotifyEvent::all()),
                hook("/failed", vec![NotifyEvent::Failed]),
            ],
            store: store_path.clone(),
            warnings: Vec::new(),
        };
        let holder = nonstop_store::Holder::current();
        let (v1, v2) = (Version("1".into()), Version("2".into()));
        let first = store
            .begin("deploy", &v1, None, "rolling", &holder, "{}")
            .unwrap();
        notifier.observe(&event(EventKind::Begin, first, "deploy #1"));
        notifier.observe(&event(EventKind::Step, first, "a step is not told"));
        store.finish(first, Outcome::Succeeded, None).unwrap();
        notifier.observe(&event(EventKind::Done, first, "shop now runs 1"));
        // Ended without a recorded outcome (an unwritable journal): failed, with the event's words.
        let second = store
            .begin("deploy", &v2, Some(&v1), "rolling", &holder, "{}")
            .unwrap();
        notifier.observe(&event(
            EventKind::Done,
            second,
            "deploy #2 of 2 stopped: journal: disk full",
        ));
        let lines = tokio::task::spawn_blocking(|| crate::finish(FINISH_BOUND))
            .await
            .unwrap();
        assert_eq!(lines, Vec::<String>::new());
        let got: Vec<(String, serde_json::Value)> = receiver
            .received()
            .into_iter()
            .map(|r| (r.path, serde_json::from_slice(&r.body).unwrap()))
            .collect();
        // Deliveries run side by side: in any order.
        let mut seen: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|(path, b)| {
                (
                    path.as_str(),
                    b["event"].as_str().unwrap(),
                    b["version"].as_str().unwrap(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("/all", "failed", "2"),
                ("/all", "started", "1"),
                ("/all", "succeeded", "1"),
                ("/failed", "failed", "2")
            ],
            "{got:#?}"
        );
        let failed = &got.iter().find(|(path, _)| path == "/failed").unwrap().1;
        assert_eq!(failed["outcome"], "failed");
        assert_eq!(
            failed["reason"],
            "deploy #2 of 2 stopped: journal: disk full"
        );
        assert_eq!(failed["from_version"], "1");
        let succeeded = &got
            .iter()
            .find(|(_, b)| b["event"] == "succeeded")
            .unwrap()
            .1;
        assert_eq!(succeeded["outcome"], "succeeded");
        assert!(succeeded["duration_ms"].is_u64(), "{got:#?}");
    }
}
