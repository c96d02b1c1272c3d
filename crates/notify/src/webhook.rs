//! One configured webhook, loaded: its URL and key read from their files, ready to send.
//! Its `label` is the only way it is ever named in output: the URL itself may hold a token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nonstop_config::notify::{NotifyConfig, NotifyEvent, NotifyFormat};
use nonstop_http_client::Url;

use crate::tls::Tls;

/// A webhook that cannot be used, named by its label and file, never by its URL.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{label}: cannot read {path}: {message}")]
    File {
        label: String,
        path: PathBuf,
        message: String,
    },
    #[error("{label}: the URL in {path} is not http(s)://HOST[:PORT]/PATH")]
    BadUrl { label: String, path: String },
    #[error("{label}: https: {message}")]
    Tls { label: String, message: String },
}

/// A webhook ready to send to.
#[derive(Clone)]
pub struct Webhook {
    /// How output names it: `webhook 1 of shop (url_file /etc/nonstop/shop-hook.url)`.
    pub label: String,
    pub(crate) url: Url,
    /// Set for an `https://` URL.
    pub(crate) tls: Option<Tls>,
    pub(crate) key: Option<Vec<u8>>,
    pub events: Vec<NotifyEvent>,
    pub format: NotifyFormat,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("label", &self.label)
            .field("signed", &self.key.is_some())
            .field("https", &self.tls.is_some())
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
        let (url, https) = parse(&url).ok_or_else(|| WebhookError::BadUrl {
            label: label.clone(),
            path: shown,
        })?;
        let tls = match https {
            false => None,
            true => {
                let extra = match &config.ca_file {
                    Some(file) => Some(read(file.get_ref().as_path())?),
                    None => None,
                };
                let tls = Tls::new(&url.host, extra.as_ref().map(|(_, pem)| pem.as_slice()))
                    .map_err(|message| WebhookError::Tls {
                        label: label.clone(),
                        message: match &extra {
                            Some((path, _)) => format!("{}: {message}", path.display()),
                            None => message,
                        },
                    })?;
                Some(tls)
            }
        };
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
                tls,
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

/// `http://…` or `https://…` (port 443 unless given), and whether it is https.
pub(crate) fn parse(text: &str) -> Option<(Url, bool)> {
    let Some(rest) = text.strip_prefix("https://") else {
        return Url::parse(text).ok().map(|url| (url, false));
    };
    let mut url = Url::parse(&format!("http://{rest}")).ok()?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let explicit = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if !explicit {
        url.port = 443;
    }
    Some((url, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> NotifyConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn file(dir: &Path, name: &str, text: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_the_url_and_key_from_files_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        file(
            dir.path(),
            "hook.url",
            "http://127.0.0.1:9000/h/tok-1\n# note\n",
            0o600,
        );
        file(dir.path(), "hook.key", "s3cret\n", 0o644);
        let config = entry(
            "url_file = \"hook.url\"\nsecret_file = \"hook.key\"\nevents = [\"failed\"]\nformat = \"slack\"\n",
        );
        let (hook, warnings) =
            Webhook::load(&config, "webhook 1 of shop".into(), dir.path()).unwrap();
        assert_eq!(hook.url.path, "/h/tok-1");
        assert_eq!(hook.key.as_deref(), Some(&b"s3cret"[..]));
        assert!(hook.wants(NotifyEvent::Failed) && !hook.wants(NotifyEvent::Started));
        assert_eq!(hook.format, NotifyFormat::Slack);
        let key = dir.path().join("hook.key");
        assert_eq!(
            warnings,
            [format!(
                "webhook 1 of shop: {} can be read by others (mode 644); run `chmod 600 {}`",
                key.display(),
                key.display()
            )]
        );
        let shown = format!("{hook:?}");
        assert!(
            !shown.contains("tok-1") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_file_never_the_url() {
        let dir = tempfile::tempdir().unwrap();
        file(dir.path(), "bad.url", "ftp://hooks.example/tok-2\n", 0o600);
        file(
            dir.path(),
            "https.url",
            "https://hooks.example/tok-3\n",
            0o600,
        );
        file(dir.path(), "junk.pem", "not a certificate\n", 0o600);
        file(dir.path(), "empty.key", "\n", 0o600);
        let load = |text: &str| {
            Webhook::load(&entry(text), "webhook 1 of shop".into(), dir.path())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let bad = load("url_file = \"bad.url\"");
        assert!(bad.contains("bad.url") && !bad.contains("tok-2"), "{bad}");
        let missing = load("url_file = \"missing.url\"");
        assert!(
            missing.starts_with("webhook 1 of shop: cannot read "),
            "{missing}"
        );
        assert!(missing.contains("missing.url"), "{missing}");
        let empty = load("url = \"http://127.0.0.1:1/\"\nsecret_file = \"empty.key\"");
        assert!(empty.contains("the file is empty"), "{empty}");
        let junk = load("url_file = \"https.url\"\nca_file = \"junk.pem\"");
        assert!(
            junk.contains("junk.pem: it holds no PEM certificate") && !junk.contains("tok-3"),
            "{junk}"
        );
    }

    #[test]
    fn https_urls_default_to_port_443() {
        let (url, https) = parse("https://hooks.example/services/T0/B1?x=1").unwrap();
        assert!(https);
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("hooks.example", 443, "/services/T0/B1?x=1")
        );
        let (url, https) = parse("https://127.0.0.1:8443/h").unwrap();
        assert_eq!((https, url.port), (true, 8443));
        let (url, https) = parse("http://127.0.0.1/h").unwrap();
        assert_eq!((https, url.port), (false, 80));
        assert!(parse("ftp://x/").is_none());
    }
}
