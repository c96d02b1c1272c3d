//! A service's `preview = { header = …, cookie = … }`: which request header or cookie set to
//! `always` reaches the new release before any customer does (`never` keeps a user on stable).

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{ConfigError, Source};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewConfig {
    #[serde(default = "default_header")]
    pub header: Spanned<String>,
    #[serde(default = "default_cookie")]
    pub cookie: Spanned<String>,
}

fn default_header() -> Spanned<String> {
    Spanned::new(0..0, nonstop_ports::Preview::DEFAULT_HEADER.into())
}

fn default_cookie() -> Spanned<String> {
    Spanned::new(0..0, nonstop_ports::Preview::DEFAULT_COOKIE.into())
}

/// RFC 9110 `token` characters: what a header or cookie name may hold.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

impl PreviewConfig {
    /// Names must be header/cookie tokens; only the strategies with idle slots have a new
    /// release to preview before it takes traffic.
    pub fn check(
        &self,
        service: &str,
        strategy: &Spanned<crate::service::Strategy>,
        source: &Source,
    ) -> Result<(), ConfigError> {
        for (what, name) in [("header", &self.header), ("cookie", &self.cookie)] {
            if !is_token(name.get_ref()) {
                return Err(source.error_at(
                    name.span(),
                    format!(
                        "service `{service}`: preview {what} `{}` is not a valid {what} name",
                        name.get_ref()
                    ),
                    Some("use letters, digits and `-`, e.g. X-Nonstop-Canary".into()),
                ));
            }
        }
        if !strategy.get_ref().uses_slots() {
            return Err(source.error_at(
                strategy.span(),
                format!(
                    "service `{service}`: `preview` needs the new release on idle slots before it takes traffic, which strategy = \"{}\" does not have",
                    strategy.get_ref().as_str()
                ),
                Some("use strategy = \"blue-green\" or \"canary\", or remove `preview`".into()),
            ));
        }
        Ok(())
    }
}
