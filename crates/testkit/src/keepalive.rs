//! One load user's kept-alive HTTP/1.1 connection, as Python `requests` or an API client holds
//! one: reused while the server keeps it open, reopened once it is seen closed, never resent.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use nonstop_http_client::{Response, Url};

/// A connection kept between requests; `None` until the first one or after a failure.
#[derive(Default)]
pub struct KeptConnection {
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// Connections opened so far (the first one included).
    pub opened: u64,
    /// The local address new connections are bound to (a second loopback address, say).
    pub local: Option<std::net::IpAddr>,
}

impl KeptConnection {
    /// A connection (opened at the first request) from `local`, if given.
    pub fn from(local: Option<std::net::IpAddr>) -> KeptConnection {
        KeptConnection {
            local,
            ..Default::default()
        }
    }

    /// Whether the next request goes out on a connection that served one already.
    pub fn is_open(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// `GET url` on the kept connection (a new one when it is closed already, as urllib3 checks
    /// before reuse). A request the server fails or drops is an error: the connection is dropped
    /// and the next request opens a new one; nothing is sent twice.
    pub async fn get(
        &mut self,
        url: &Url,
        headers: Vec<(&str, String)>,
        timeout: Duration,
    ) -> Result<Response, String> {
        match tokio::time::timeout(timeout, self.exchange(url, headers)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(format!(
                    "{} did not answer within {timeout:?}",
                    url.authority()
                ))
            }
        }
    }

    async fn exchange(
        &mut self,
        url: &Url,
        headers: Vec<(&str, String)>,
    ) -> Result<Response, String> {
        let addr = url.authority();
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = connect(&addr, self.local)
                .await
                .map_err(|e| format!("cannot reach {addr}: {e}"))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake with {addr}: {e}"))?;
            tokio::spawn(connection);
            self.sender = Some(sender);
            self.opened += 1;
        }
        let sender = self.sender.as_mut().expect("set above");
        let mut request = hyper::Request::get(&url.path).header(hyper::header::HOST, &addr);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}: {e:?}"))?;
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{addr}: reading the body: {e}"))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A TCP connection to `addr` (`host:port`), from `local` when given.
async fn connect(
    addr: &str,
    local: Option<std::net::IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(local) = local else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let remote = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("no address of {addr} matches {local}")))?;
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(remote).await
}
