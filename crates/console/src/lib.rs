//! The web console: one HTTPS process serving the UI and a JSON API over the deploy engine.
//! Accounts, roles and the audit log come from `nonstop-accounts`; TLS and agent enrolment from `nonstop-pki`.

mod account;
mod admin;
mod agents;
mod artifacts;
pub mod auth;
mod deploys;
mod drivers;
mod error;
mod logs;
mod maintenance;
mod pages;
mod pauses;
mod refusals;
pub mod routes;
mod server;
mod services;
mod state;
mod streams;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nonstop_accounts::Accounts;
use nonstop_pki::{Authority, JoinTokens};
use tokio::net::TcpListener;

pub use auth::{CSRF_HEADER, SESSION_COOKIE};
pub use routes::{Access, Kind, Method, Route, routes};
pub use server::{Limits, server_names};
pub use state::ConsoleOptions;

use crate::deploys::Jobs;
use crate::drivers::Drivers;
use crate::state::{App, Inner};

/// The name the console's CA goes by (shared with the fleet credentials in the same directory).
const CA_NAME: &str = "nonstop console";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("state directory: {0}")]
    State(String),
    #[error("accounts: {0}")]
    Accounts(#[from] nonstop_accounts::AccountsError),
    #[error("certificate authority: {0}")]
    Pki(#[from] nonstop_pki::PkiError),
    #[error("join tokens: {0}")]
    Tokens(#[from] nonstop_pki::TokenError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A console bound to its address, ready to serve.
pub struct Console {
    app: App,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    local_addr: SocketAddr,
    bootstrap: Option<nonstop_accounts::BootstrapSecret>,
    limits: Limits,
}

impl Console {
    /// Opens the state (accounts, CA, join tokens), makes the first-run admin if there are no
    /// users, issues the server certificate and binds the listener.
    pub async fn bind(options: ConsoleOptions) -> Result<Console, ConsoleError> {
        server::private_dir(&options.state)?;
        let accounts = Accounts::open(&options.state.join("accounts.db"))?;
        let bootstrap = accounts.bootstrap_admin()?;
        let pki = options.state.join("pki");
        let authority = Authority::open(&pki, CA_NAME)?;
        let join_tokens = JoinTokens::open(&pki.join("join-tokens.db"))?;
        // Uploads of a console that stopped mid-deploy are of no use to anyone.
        let _ = std::fs::remove_dir_all(deploys::uploads_dir(&options.state));
        let fleet = match nonstop_drivers::Fleet::open(&options.state) {
            Ok(fleet) => Some(fleet),
            Err(e) => {
                tracing::warn!("no fleet credentials, services on [hosts] cannot be driven: {e}");
                None
            }
        };
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ConsoleError::Listen {
                    addr: options.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ConsoleError::Listen {
                addr: options.listen,
                source,
            })?;
        let tls = server::tls_config(&authority, &server_names(local_addr))?;
        let app = App {
            inner: Arc::new(Inner {
                drivers: Drivers::new(options.config.clone(), fleet),
                options,
                accounts: Arc::new(Mutex::new(accounts)),
                authority,
                join_tokens: Mutex::new(join_tokens),
                jobs: Jobs::default(),
                changes: tokio::sync::watch::channel(0).0,
                refusals: Mutex::new(refusals::Refusals::default()),
            }),
        };
        Ok(Console {
            app,
            listener,
            tls: Arc::new(tls),
            local_addr,
            bootstrap,
            limits: Limits::default(),
        })
    }

    /// Replaces the connection limits (timeouts, connections per address).
    pub fn with_limits(mut self, limits: Limits) -> Console {
        self.limits = limits;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The first run's one-time secret, when there are no users yet: print it once.
    pub fn bootstrap_secret(&self) -> Option<&str> {
        self.bootstrap.as_ref().map(|b| b.secret())
    }

    /// The CA certificate (PEM) that signed the console's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.app.authority.cert_pem
    }

    /// The SHA-256 fingerprint of the CA, which `nonstop agent join` pins.
    pub fn ca_sha256(&self) -> String {
        nonstop_pki::ca_fingerprint(&self.app.authority.cert_pem).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.app.options.state.clone()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let accounts = self.app.accounts.clone();
        let pruner = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(600));
            loop {
                every.tick().await;
                let accounts = accounts.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(a) = accounts.lock() {
                        let _ = a.prune_expired(nonstop_accounts::now_ms());
                    }
                })
                .await;
            }
        });
        let router = routes::router(self.app.clone());
        let trusted = self.app.options.trusted_proxies.clone();
        server::serve(
            self.listener,
            self.tls,
            router,
            self.limits,
            trusted,
            shutdown,
        )
        .await;
        pruner.abort();
    }
}
