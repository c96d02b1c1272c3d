//! `nonstop agent join`: enrols this host with a console using a one-time token. The key never
//! leaves the host (only a CSR does) and the console is trusted only if it shows the pinned CA.

use std::path::Path;

use hyper::Method;
use nonstop_agent_client::ConsoleClient;
use nonstop_pki::{AgentRequest, Identity};
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
    let request = AgentRequest::new(name).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&JoinRequest {
        name,
        token,
        csr_pem: &request.csr_pem,
    })
    .expect("plain data");
    let console = ConsoleClient::new(url, ca_sha256)?;
    let (status, bytes) = console
        .request(
            Method::POST,
            JOIN_PATH,
            &[("content-type", "application/json".into())],
            nonstop_agent_client::full(body),
        )
        .await?;
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
