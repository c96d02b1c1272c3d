//! The fleet's trust: the console's certificate authority, one-time join tokens that let an agent
//! get a client certificate, and rustls configs that accept only peers holding one.

mod authority;
mod names;
mod tls;
mod tokens;

pub use authority::{AgentRequest, Authority, Identity};
pub use names::check_agent_name;
pub use tls::{ca_fingerprint, client_config, peer_name, pinned_client_config, server_config};
pub use tokens::{JoinTokens, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("`{0}` is not a valid agent name (letters, digits, `-`, `.`; at most 63)")]
    BadName(String),
    #[error(
        "`{0}` is reserved (the console's own name, localhost, or an address); choose a host name for the agent"
    )]
    Reserved(String),
}

/// The name in the console's client certificate: the only peer an agent takes orders from.
pub const CONSOLE_NAME: &str = "nonstop-console";

/// Names agents and the console go by: DNS-label-like, so they fit a certificate's SAN.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}
