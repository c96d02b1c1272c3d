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
}

impl KeptConnection {
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
            let stream = tokio::net::TcpStream::connect(&addr)
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
