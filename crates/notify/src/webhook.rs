//! One configured webhook, loaded: its URL and key read from their files, ready to send.
//! Its `label` is the only way it is ever named in output: the URL itself may hold a token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nonstop_config::notify::{NotifyConfig, NotifyEvent, NotifyFormat};
use nonstop_http_client::Url;

/// A webhook that cannot be used, named by its label and file, never by its URL.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{label}: cannot read {path}: {message}")]
    File {
        label: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "{label}: the URL in {path} is not http://HOST[:PORT]/PATH (https is not supported yet)"
    )]
    BadUrl { label: String, path: String },
}

/// A webhook ready to send to.
#[derive(Clone)]
pub struct Webhook {
    /// How output names it: `webhook 1 of shop (url_file /etc/nonstop/shop-hook.url)`.
    pub label: String,
    pub(crate) url: Url,
    pub(crate) key: Option<Vec<u8>>,
    pub events: Vec<NotifyEvent>,
    pub format: NotifyFormat,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("label", &self.label)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Reads `config`'s files (relative ones from `dir`); the warnings say what to fix but
    /// need not stop a deploy (a key file others can read).
    pub fn load(
        config: &NotifyConfig,
        label: String,
        dir: &Path,
    ) -> Result<(Webhook, Vec<String>), WebhookError> {
        let mut warnings = Vec::new();
        let read = |path: &Path| {
            let path = dir.join(path);
            std::fs::read(&path)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|e| WebhookError::File {
                    label: label.clone(),
                    path,
                    message: e.to_string(),
                })
        };
        let (url, shown) = match (&config.url, &config.url_file) {
            (Some(url), _) => (url.get_ref().clone(), "url".to_string()),
            (None, Some(file)) => {
                let (path, bytes) = read(file.get_ref().as_path())?;
                let text = String::from_utf8_lossy(&bytes);
                let first = text.lines().next().unwrap_or_default().trim().to_string();
                (first, path.display().to_string())
            }
            // The config check refuses an entry with neither.
            (None, None) => (String::new(), "url".to_string()),
        };
        let url = Url::parse(&url).map_err(|_| WebhookError::BadUrl {
            label: label.clone(),
            path: shown,
        })?;
        let key = match &config.secret_file {
            Some(file) => {
                let (path, bytes) = read(file.get_ref().as_path())?;
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    warnings.push(format!(
                        "{label}: {} can be read by others (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        meta.permissions().mode() & 0o777,
                        path.display()
                    ));
                }
                let key = String::from_utf8_lossy(&bytes)
                    .trim_end()
                    .as_bytes()
                    .to_vec();
                if key.is_empty() {
                    return Err(WebhookError::File {
                        label,
                        path,
                        message: "the file is empty; put the HMAC key in it".into(),
                    });
                }
                Some(key)
            }
            None => None,
        };
        Ok((
            Webhook {
                label,
                url,
                key,
                events: config.events.clone(),
                format: config.format,
            },
            warnings,
        ))
    }

    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.contains(&event)
    }
}
