//! `nonstop agent`: one per host. It runs the host-local steps of a remote deploy (receive a
//! release, start, stop, status, logs, the node's lifecycle hooks, the balancer on this host) for
//! the console only.
//!
//! Every connection is mutual TLS against the console's CA, and only the peer named
//! [`nonstop_pki::CONSOLE_NAME`] may call; another agent's certificate gets 403 for everything.

mod hooks;
mod host;
mod identity;
mod join;
mod logs;
mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use nonstop_config::Config;

pub use identity::Credentials;
pub use join::{JOIN_PATH, join};

/// Default largest artifact an agent accepts: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT: u64 = 1 << 30;

pub struct AgentOptions {
    pub config: PathBuf,
    pub state: PathBuf,
    /// Default: the `agent` address of this host in the config.
    pub listen: Option<SocketAddr>,
    pub max_artifact: u64,
}

/// A bound, ready agent; `serve` runs it until the process ends.
pub struct Agent {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    pub name: String,
    pub addr: SocketAddr,
}

impl Agent {
    pub async fn bind(options: &AgentOptions) -> Result<Agent, String> {
        let credentials = Credentials::load(&options.state)?;
        identity::private_dir(&options.state)
            .map_err(|e| format!("state directory {}: {e}", options.state.display()))?;
        let (config, source) = Config::load(&options.config).map_err(|e| e.to_string())?;
        let host = host::Host::load(&credentials.name, &config, &source, &options.state)?;
        let listen = match options.listen {
            Some(addr) => addr,
            None => config.hosts[&credentials.name].agent_addr(),
        };
        let tls = nonstop_pki::server_config(&credentials.identity, &credentials.ca_pem)
            .map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        for (name, svc) in &host.services {
            if let Ok(records) = svc.store.lock().await.instances() {
                for r in records {
                    tracing::info!(service = %name, node = %r.instance.node, version = %r.instance.version, pid = r.instance.pid, "known instance");
                }
            }
        }
        let state = Arc::new(routes::AgentState {
            host,
            max_artifact: options.max_artifact,
        });
        Ok(Agent {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            router: routes::router(state),
            name: credentials.name,
            addr,
        })
    }

    pub async fn serve(self) {
        loop {
            let Ok((tcp, peer)) = self.listener.accept().await else {
                continue;
            };
            let acceptor = self.acceptor.clone();
            let router = self.router.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::warn!(%peer, "refused a connection: {e}");
                        return;
                    }
                };
                let caller = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(nonstop_pki::peer_name);
                let router = if caller.as_deref() == Some(nonstop_pki::CONSOLE_NAME) {
                    router
                } else {
                    tracing::warn!(%peer, caller = ?caller, "refused: not the console");
                    forbidden()
                };
                let service = TowerToHyperService::new(router);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

/// What a peer with a valid certificate that is not the console's gets.
fn forbidden() -> axum::Router {
    axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FORBIDDEN,
            axum::Json(nonstop_agent_client::protocol::ErrorBody {
                error: "only the console may call an agent".into(),
            }),
        )
    })
}

/// Where an agent keeps its state by default.
pub fn default_state() -> &'static Path {
    Path::new("/var/lib/nonstop-agent")
}
