//! https for webhooks: rustls (ring) trusting the system's roots plus a webhook's own
//! `ca_file`; the server's name is checked against the URL's host, as any https client does.

use std::sync::{Arc, OnceLock};

use nonstop_http_client::{self as http, Request, Response, Url};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The system's roots (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), read once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// How one https webhook connects.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// A client for `host` trusting the system's roots and the certificates in `extra_pem`.
    pub(crate) fn new(host: &str, extra_pem: Option<&[u8]>) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        if let Some(pem) = extra_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("certificate refused: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("it holds no PEM certificate".into());
            }
        }
        if roots.is_empty() {
            return Err(
                "no trusted roots: install ca-certificates or give the webhook a ca_file".into(),
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a host name or address"))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// Sends `request` to `url` over TLS; the reason in words that never hold the URL's path.
    pub(crate) async fn send(&self, url: &Url, request: &Request<'_>) -> Result<Response, String> {
        let tcp = TcpStream::connect(url.authority())
            .await
            .map_err(|_| "unreachable".to_string())?;
        let stream = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        http::send_on(stream, url, request)
            .await
            .map_err(|_| "unreachable".to_string())
    }
}
