//! The `[services.*]` sections: what the deploy engine deploys, where, and how.
//! (Filled in by the deploy engine; the proxy only needs the sections to parse.)

use serde::Deserialize;

use crate::{Config, ConfigError, Source};

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceConfig {
    #[serde(flatten)]
    pub raw: toml::Table,
}

impl ServiceConfig {
    pub(crate) fn validate(
        &self,
        _name: &str,
        _config: &Config,
        _source: &Source,
    ) -> Result<(), ConfigError> {
        Ok(())
    }
}
