//! `nonstop agent join`: enrols this host with a console using a one-time token. The key never
//! leaves the host (only a CSR does) and the console is trusted only if it shows the pinned CA.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nonstop_pki::{AgentRequest, Identity};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use crate::identity::Credentials;

/// The console's enrolment endpoint, relative to its base URL.
pub const JOIN_PATH: &str = "/api/agents/join";

#[derive(Serialize)]
struct JoinRequest<'a> {
    name: &'a str,
    token: &'a str,
    csr_pem: &'a str,
}

#[derive(Deserialize)]
struct JoinAnswer {
    cert_pem: String,
    ca_pem: String,
}

/// Enrols as `name` with the console at `url` (`https://HOST:PORT`) and saves the credentials.
pub async fn join(
    url: &str,
    token: &str,
    ca_sha256: &str,
    name: &str,
    state: &Path,
) -> Result<(), String> {
    let authority = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("`{url}` is not an https:// URL"))?
        .trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("`{url}` has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{url}` has a bad port"))?;
    let request = AgentRequest::new(name).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&JoinRequest {
        name,
        token,
        csr_pem: &request.csr_pem,
    })
    .expect("plain data");
    let tls = nonstop_pki::pinned_client_config(ca_sha256).map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("`{host}` is not a usable server name: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let http_request = hyper::Request::post(JOIN_PATH)
        .header("host", authority)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| format!("{url}{JOIN_PATH}: {e}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "the console refused the join ({status}): {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    let answer: JoinAnswer =
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable join answer: {e}"))?;
    let pinned = nonstop_pki::ca_fingerprint(&answer.ca_pem).map_err(|e| e.to_string())?;
    if !pinned.eq_ignore_ascii_case(ca_sha256) {
        return Err("the console answered with a CA other than the pinned one".into());
    }
    Credentials {
        name: name.to_string(),
        identity: Identity {
            cert_pem: answer.cert_pem,
            key_pem: request.key_pem,
        },
        ca_pem: answer.ca_pem,
    }
    .save(state)
    .map_err(|e| format!("cannot save credentials under {}: {e}", state.display()))
}
