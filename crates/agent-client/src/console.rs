//! A client of the console's HTTPS API for the command line (`agent join`, `deploy --console`):
//! it trusts the console only if its chain holds the CA whose SHA-256 the operator was given.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::Body;

/// `https://HOST:PORT` of a console, with the CA fingerprint it must show.
pub struct ConsoleClient {
    host: String,
    port: u16,
    authority: String,
    tls: tokio_rustls::TlsConnector,
    bearer: Option<String>,
}

impl ConsoleClient {
    pub fn new(url: &str, ca_sha256: &str) -> Result<ConsoleClient, String> {
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("`{url}` is not an https:// URL"))?
            .trim_end_matches('/')
            .to_string();
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("`{url}` has no port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("`{url}` has a bad port"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = nonstop_pki::pinned_client_config(ca_sha256).map_err(|e| e.to_string())?;
        Ok(ConsoleClient {
            host,
            port,
            authority,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            bearer: None,
        })
    }

    /// Sends `Authorization: Bearer TOKEN` (a CI token) with every request.
    pub fn with_token(mut self, token: &str) -> ConsoleClient {
        self.bearer = Some(token.to_string());
        self
    }

    /// One request on a fresh connection; returns the status and the whole answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<(StatusCode, Bytes), String> {
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("`{}` is not a usable server name: {e}", self.host))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("{}: no connection within 10s", self.authority))?
        .map_err(|e| format!("cannot reach {}: {e}", self.authority))?;
        let stream = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority.as_str());
        if let Some(token) = &self.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request.body(body).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{}{path}: {e}", self.authority))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{}{path}: answer cut short: {e}", self.authority))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// A `multipart/form-data` body of text `fields` and the file at `path` as `file_field`, streamed
/// from disk; returns its content type and length with it.
pub async fn multipart_with_file(
    fields: &[(&str, &str)],
    file_field: &str,
    path: &std::path::Path,
) -> Result<(String, u64, Body), String> {
    use futures_util::StreamExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} is not a file", path.display()))?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("artifact {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| format!("artifact {}: {e}", path.display()))?
        .len();
    let boundary = format!("nonstop-{:016x}", rand_u64());
    let mut head = String::new();
    for (field, value) in fields {
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n"
        ));
    }
    let quoted = name.replace(['"', '\r', '\n'], "_");
    head.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{quoted}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ));
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + size + tail.len() as u64;
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(tokio_util::io::ReaderStream::new(file))
        .chain(futures_util::stream::once(
            async move { Ok(Bytes::from(tail)) },
        ))
        .map(|chunk: std::io::Result<Bytes>| chunk.map(hyper::body::Frame::data));
    Ok((
        format!("multipart/form-data; boundary={boundary}"),
        length,
        BodyExt::boxed(http_body_util::StreamBody::new(stream)),
    ))
}

/// A boundary need not be secret, only absent from the data: time and pid are enough.
fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}
