//! `[[services.NAME.notify]]`: webhooks told when a deploy starts, ends or pauses. The URL
//! (which may hold a token) and the signing key come from files, so they stay out of the config.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::{ConfigError, Source};

/// One webhook of a service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The URL in the clear, for one that holds no secret.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// A file holding the URL (its first line); relative paths are from the config's directory.
    #[serde(default)]
    pub url_file: Option<Spanned<PathBuf>>,
    /// A file holding the HMAC-SHA256 key; without one, deliveries are not signed.
    #[serde(default)]
    pub secret_file: Option<Spanned<PathBuf>>,
    /// PEM certificates trusted for an `https://` URL besides the system's roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Which events are sent (default: all of them).
    #[serde(default = "NotifyEvent::all")]
    pub events: Vec<NotifyEvent>,
    #[serde(default)]
    pub format: NotifyFormat,
}

/// What happened to a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyEvent {
    Started,
    Succeeded,
    RolledBack,
    Failed,
    /// A deploy waits for `promote` or `abort` (sent once the engine pauses).
    Paused,
}

impl NotifyEvent {
    pub fn all() -> Vec<NotifyEvent> {
        vec![
            NotifyEvent::Started,
            NotifyEvent::Succeeded,
            NotifyEvent::RolledBack,
            NotifyEvent::Failed,
            NotifyEvent::Paused,
        ]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::RolledBack => "rolled-back",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Paused => "paused",
        }
    }
}

/// The body's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyFormat {
    /// nonstop's own JSON summary (docs/lifecycle.md).
    #[default]
    Json,
    /// A Slack-compatible incoming webhook: `{"text": "…"}`.
    Slack,
}

impl NotifyConfig {
    /// Exactly one of `url` / `url_file`; an inline URL is `http://` or `https://`; some event
    /// is chosen.
    pub(crate) fn check(
        &self,
        service: &str,
        span: std::ops::Range<usize>,
        source: &Source,
    ) -> Result<(), ConfigError> {
        let at = |span, message: String, hint: &str| {
            Err(source.error_at(span, message, Some(hint.to_string())))
        };
        match (&self.url, &self.url_file) {
            (Some(_), Some(file)) => at(
                file.span(),
                format!("service `{service}`: a notify entry has both `url` and `url_file`"),
                "keep one: url_file for a URL that holds a token, url for one that does not",
            ),
            (None, None) => at(
                span,
                format!("service `{service}`: a notify entry has no `url` or `url_file`"),
                "add url_file = \"/etc/nonstop/hook.url\" (or url = \"http://…\")",
            ),
            (Some(url), None)
                if !(url.get_ref().starts_with("http://")
                    || url.get_ref().starts_with("https://")) =>
            {
                at(
                    url.span(),
                    format!(
                        "service `{service}`: notify url `{}` is not http:// or https://",
                        url.get_ref()
                    ),
                    "write the URL as https://HOST[:PORT]/PATH (or http:// for a receiver on a trusted network)",
                )
            }
            _ if self.events.is_empty() => at(
                span,
                format!("service `{service}`: a notify entry with `events = []` sends nothing"),
                "remove `events` for all of them, or list some: started, succeeded, rolled-back, failed, paused",
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn parse(entries: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[services.shop]\nbalancer = {{ kind = \"command\", enable = [\"x\"], drain = [\"x\"], disable = [\"x\"] }}\nruntime = {{ kind = \"process\", start = [\"app\"] }}\nreleases = {{ dir = \"/tmp/shop\" }}\n[[services.shop.nodes]]\nname = \"a\"\nport = 1\n[[services.shop.nodes]]\nname = \"b\"\nport = 2\n{entries}"
        );
        Config::parse(&Source {
            path: "nonstop.toml".into(),
            text,
        })
    }

    #[test]
    fn entries_are_checked_with_their_line() {
        let config = parse(
            "[[services.shop.notify]]\nurl = \"https://hooks.example/x\"\nformat = \"slack\"\n[[services.shop.notify]]\nurl_file = \"hook.url\"\nca_file = \"ca.pem\"\nevents = [\"failed\", \"paused\"]\n",
        )
        .unwrap();
        let notify = &config.services["shop"].notify;
        assert_eq!(notify[0].get_ref().events, NotifyEvent::all());
        assert_eq!(notify[0].get_ref().format, NotifyFormat::Slack);
        assert_eq!(
            notify[1].get_ref().events,
            [NotifyEvent::Failed, NotifyEvent::Paused]
        );
        let err = parse("[[services.shop.notify]]\nurl = \"ftp://hooks.example/x\"\n").unwrap_err();
        assert_eq!(err.line, 12, "{err}");
        assert!(err.message.contains("not http:// or https://"), "{err}");
        let err =
            parse("[[services.shop.notify]]\nurl = \"http://a/\"\nurl_file = \"b\"\n").unwrap_err();
        assert_eq!(err.line, 13, "{err}");
        let err = parse("[[services.shop.notify]]\nevents = [\"started\"]\n").unwrap_err();
        assert!(err.message.contains("no `url` or `url_file`"), "{err}");
        let err =
            parse("[[services.shop.notify]]\nurl = \"http://a/\"\nevents = []\n").unwrap_err();
        assert!(err.message.contains("sends nothing"), "{err}");
        let err = parse("[[services.shop.notify]]\nurl = \"http://a/\"\nevents = [\"deployed\"]\n")
            .unwrap_err();
        assert!(err.message.contains("deployed"), "{err}");
    }
}
