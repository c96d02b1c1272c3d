//! Backend connections of one worker thread: HTTP/1.1 spoken by the proxy's own client inside
//! the request's task (no connection task, no channel), idle connections kept per backend.

mod request;
mod response;

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{Method, Request, Response};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::forward::UpstreamBody;
use request::Sending;
pub use response::BackendBody;

/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE_PER_BACKEND: usize = 128;

/// Why a request did not get response headers from its backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("no connection within the connect timeout ({0:?})")]
    ConnectTimeout(Duration),
    #[error("the backend closed a new connection before taking the request")]
    ClosedAtOnce,
    #[error("the connection was lost before the answer: {0}")]
    Lost(#[source] io::Error),
    #[error("the answer is not HTTP/1.x: {0}")]
    Malformed(&'static str),
    #[error("the request body broke off: {0}")]
    RequestBody(String),
}

impl UpstreamError {
    /// Nothing reached the backend: safe to send the request elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_)
                | UpstreamError::ConnectTimeout(_)
                | UpstreamError::ClosedAtOnce
        )
    }

    /// The backend answered something that is not HTTP.
    pub fn is_parse(&self) -> bool {
        matches!(self, UpstreamError::Malformed(_))
    }
}

/// One backend connection.
pub struct Conn {
    stream: Arc<TcpStream>,
    backend: Authority,
}

struct Idle {
    stream: Arc<TcpStream>,
    since: Instant,
}

/// The backend connections of one worker thread. The mutex is never contended: one thread uses it.
pub struct Upstream {
    /// Per backend address; a list, since a worker talks to few backends and hashing an
    /// `Authority` costs more than comparing a handful.
    idle: Mutex<Vec<(Authority, Vec<Idle>)>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// How one try on one connection ended without an answer.
enum Failed {
    /// The connection turned out dead before the backend could have acted on the request: it may
    /// go out again on a new connection, unchanged.
    Stale(Option<Sending>),
    Error(UpstreamError),
}

impl Upstream {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Upstream> {
        Arc::new(Upstream {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            idle_timeout,
        })
    }

    /// Sends `request` to `backend` on an idle connection or a new one, and reads the answer's
    /// head. A reused connection found closed before the backend could act on the request is
    /// replaced by a new one, transparently.
    pub async fn send(
        self: Arc<Self>,
        backend: Authority,
        request: Request<UpstreamBody>,
    ) -> Result<Response<BackendBody>, UpstreamError> {
        let (parts, body) = request.into_parts();
        let (head, mut sending) = request::encode(&parts, body);
        // A request a backend may see twice: no side effects, and all of it in `head`.
        let replayable = sending.is_none() && is_idempotent(&parts.method);
        let expects_body = parts.method != Method::HEAD;
        loop {
            let (conn, reused) = match self.checkout(&backend) {
                Some(stream) => (
                    Conn {
                        stream,
                        backend: backend.clone(),
                    },
                    true,
                ),
                None => (self.connect(&backend).await?, false),
            };
            match self.exchange(conn, &head, sending, expects_body).await {
                Ok(response) => return Ok(response),
                Err(Failed::Stale(unsent)) if reused => sending = unsent,
                Err(Failed::Stale(_)) => return Err(UpstreamError::ClosedAtOnce),
                Err(Failed::Error(UpstreamError::Lost(_))) if reused && replayable => {
                    sending = None;
                }
                Err(Failed::Error(err)) => return Err(err),
            }
        }
    }

    /// Writes the request on `conn` and reads the answer's head, sending a streamed body
    /// meanwhile; what is left of that body goes on with the answer's body.
    async fn exchange(
        self: &Arc<Self>,
        conn: Conn,
        head: &Bytes,
        mut sending: Option<Sending>,
        expects_body: bool,
    ) -> Result<Response<BackendBody>, Failed> {
        let stream = &conn.stream;
        let mut written = 0;
        let mut buf = BytesMut::new();
        let answer = poll_fn(|cx| {
            while written < head.len() {
                if let Err(err) = std::task::ready!(stream.poll_write_ready(cx)) {
                    return Poll::Ready(Err(stale_or_lost(written, &mut sending, err)));
                }
                match stream.try_write(&head[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Poll::Ready(Err(stale_or_lost(written, &mut sending, err))),
                }
            }
            if let Some(body) = &mut sending
                && let Poll::Ready(done) = body.poll_send(stream, cx)
            {
                match done {
                    Ok(()) => sending = None,
                    Err(err) => return Poll::Ready(Err(Failed::Error(err))),
                }
            }
            response::poll_head(stream, &mut buf, expects_body, cx).map_err(|err| match err {
                response::HeadError::Closed if buf.is_empty() && written == head.len() => {
                    Failed::Error(UpstreamError::Lost(io::ErrorKind::UnexpectedEof.into()))
                }
                response::HeadError::Closed => {
                    Failed::Error(UpstreamError::Malformed("the answer's head was cut short"))
                }
                response::HeadError::Io(err) => Failed::Error(UpstreamError::Lost(err)),
                response::HeadError::Malformed(what) => {
                    Failed::Error(UpstreamError::Malformed(what))
                }
            })
        })
        .await?;
        Ok(response::into_response(
            answer,
            buf,
            conn,
            sending,
            self.clone(),
        ))
    }

    /// Takes an idle connection to `backend` that is still open and not past the idle timeout.
    fn checkout(&self, backend: &Authority) -> Option<Arc<TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let (_, list) = idle.iter_mut().find(|(key, _)| key == backend)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.idle_timeout && looks_open(&entry.stream) {
                return Some(entry.stream);
            }
        }
        None
    }

    async fn connect(&self, backend: &Authority) -> Result<Conn, UpstreamError> {
        let connecting = TcpStream::connect(backend.as_str());
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.connect_timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream: Arc::new(stream),
            backend: backend.clone(),
        })
    }

    /// Puts a connection whose answer was read to its end back in the idle list.
    fn release(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = match idle.iter().position(|(key, _)| *key == conn.backend) {
            Some(at) => at,
            None => {
                idle.push((conn.backend.clone(), Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[at].1;
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                stream: conn.stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout or closed by their backend; run
    /// periodically by the worker.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|(_, list)| {
            list.retain(|entry| {
                entry.since.elapsed() < self.idle_timeout && looks_open(&entry.stream)
            });
            !list.is_empty()
        });
    }

    /// How often [`Upstream::sweep`] should run.
    pub fn sweep_every(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_secs(1))
    }
}

/// Whether an idle connection can carry a request: the backend has neither closed it nor sent
/// anything unasked. Costs no system call unless the socket became readable since its last use.
fn looks_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// A write that failed: before any byte went out, the request can go on another connection.
fn stale_or_lost(written: usize, sending: &mut Option<Sending>, err: io::Error) -> Failed {
    if written == 0 {
        Failed::Stale(sending.take())
    } else {
        Failed::Error(UpstreamError::Lost(err))
    }
}

pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}
