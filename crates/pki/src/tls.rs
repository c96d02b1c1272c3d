//! rustls configs for mutual TLS: both sides present a certificate of the console's CA and
//! accept only such a peer; the peer's name is read from the verified certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{Identity, PkiError};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Tls(format!("CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| PkiError::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn chain(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| PkiError::Tls(format!("private key: {e}")))?;
    Ok((certs, key))
}

/// A server that refuses every client without a certificate signed by `ca_pem`.
pub fn server_config(identity: &Identity, ca_pem: &str) -> Result<ServerConfig, PkiError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
    let (certs, key) = chain(identity)?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| PkiError::Tls(e.to_string()))
}

/// A client that trusts only servers of `ca_pem` and presents `identity`.
pub fn client_config(identity: &Identity, ca_pem: &str) -> Result<ClientConfig, PkiError> {
    let (certs, key) = chain(identity)?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs, key)
        .map_err(|e| PkiError::Tls(e.to_string()))
}

/// The DNS name in a verified peer certificate (the agent's name), if any.
pub fn peer_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    })
}
