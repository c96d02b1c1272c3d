//! Deploy webhooks: a `Notifier` watches the engine's events and, when a deploy starts, ends or
//! pauses, queues the deploy's summary for each of the service's `[[services.NAME.notify]]`.
//!
//! The engine is never slowed by a receiver: the notifier only reads the finished record from
//! the store and queues; the process's outbox thread sends, signs and retries (see `outbox`).

mod outbox;
pub mod sign;
mod summary;
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

impl Notifier {
    /// The notifier of `service`, or `None` when it has no webhooks; its files are read now
    /// (relative ones from `config_dir`), so a missing one refuses the deploy before it starts.
    pub fn for_service(
        service: &str,
        config: &ServiceConfig,
        config_dir: &Path,
        store: PathBuf,
    ) -> Result<Option<Notifier>, WebhookError> {
        if config.notify.is_empty() {
            return Ok(None);
        }
        let mut hooks = Vec::new();
        let mut warnings = Vec::new();
        for (i, entry) in config.notify.iter().enumerate() {
            let entry = entry.get_ref();
            let source = match (&entry.url_file, &entry.url) {
                (Some(file), _) => format!("url_file {}", file.get_ref().display()),
                // An inline URL holds no secret by the config's own rule, but its path is
                // still left out: only where it goes.
                (None, Some(url)) => match nonstop_http_client::Url::parse(url.get_ref()) {
                    Ok(url) => format!("url http://{}", url.authority()),
                    Err(_) => "url".into(),
                },
                (None, None) => "url".into(),
            };
            let label = format!("webhook {} of {service} ({source})", i + 1);
            let (hook, more) = Webhook::load(entry, label, config_dir)?;
            hooks.push(Arc::new(hook));
            warnings.extend(more);
        }
        Ok(Some(Notifier {
            service: service.to_string(),
            hooks,
            store,
            warnings,
        }))
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
        let ending = match event.kind {
            EventKind::Begin => false,
            EventKind::Done => true,
            _ => return,
        };
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
        let what = match (ending, record.outcome) {
            (false, _) => NotifyEvent::Started,
            (true, Outcome::Succeeded) => NotifyEvent::Succeeded,
            (true, Outcome::RolledBack) => NotifyEvent::RolledBack,
            // `Running` at the end: the deploy stopped before it could record how (journal).
            (true, Outcome::Failed | Outcome::Running) => NotifyEvent::Failed,
        };
        let mut summary = Summary::of(what, &record);
        if ending && summary.reason.is_none() && what == NotifyEvent::Failed {
            summary.reason = Some(event.message.clone());
        }
        self.send(&summary);
    }

    /// Queues `summary` for every webhook that wants its event.
    pub fn send(&self, summary: &Summary) {
        for hook in self.hooks.iter().filter(|h| h.wants(summary.event)) {
            outbox::enqueue(outbox::Delivery {
                hook: hook.clone(),
                event: summary.event,
                body: summary.body(hook.format),
            });
        }
    }
}
