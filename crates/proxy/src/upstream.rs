//! Backend connections of one worker thread: HTTP/1.1 through `hyper::client::conn::http1`, each
//! driven inside the request's own task (no connection task, no channel hop), idle ones kept per backend.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::forward::UpstreamBody;

/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE_PER_BACKEND: usize = 128;

/// The connection future with upgrade support (hyper's type for it cannot be named).
type Conn = dyn Future<Output = hyper::Result<()>> + Send;

/// Why a request did not get response headers from its backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no connection within the connect timeout ({0:?})")]
    ConnectTimeout(Duration),
    #[error("the backend closed a new connection at once")]
    ClosedAtOnce,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// Nothing reached the backend: safe to send the request elsewhere.
    pub fn is_connect(&self) -> bool {
        !matches!(self, UpstreamError::Http(_))
    }

    /// The backend answered something that is not HTTP.
    pub fn is_parse(&self) -> bool {
        matches!(self, UpstreamError::Http(e) if e.is_parse() || e.is_parse_status())
    }
}

/// One backend connection: the request half and the connection future that does the I/O.
pub struct Pooled {
    sender: http1::SendRequest<UpstreamBody>,
    /// `None` once the connection future finished (closed, failed or upgraded); dropping it
    /// then is what tells a waiting request that no answer will come.
    conn: Option<Pin<Box<Conn>>>,
    key: Authority,
}

impl Pooled {
    /// Does this connection's reading and writing; call it whenever the request's task is polled.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && let Poll::Ready(result) = conn.as_mut().poll(cx)
        {
            self.conn = None;
            if let Err(err) = result {
                tracing::debug!(backend = %self.key, error = %err, "backend connection ended");
            }
        }
    }

    fn done(&self) -> bool {
        self.conn.is_none()
    }

    /// The connection future, for a caller that hands the connection over (an upgrade).
    pub fn into_conn(self) -> Option<Pin<Box<Conn>>> {
        self.conn
    }
}

struct Idle {
    pooled: Pooled,
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

impl Upstream {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Upstream> {
        Arc::new(Upstream {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            idle_timeout,
        })
    }

    /// Sends `request` to `backend` on an idle connection or a new one. A reused connection that
    /// turns out closed before the request was written is replaced by a new one, transparently.
    pub async fn send(
        self: Arc<Self>,
        backend: Authority,
        mut request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Pooled), UpstreamError> {
        loop {
            let (mut pooled, reused) = match self.checkout(&backend) {
                Some(pooled) => (pooled, true),
                None => (self.connect(&backend).await?, false),
            };
            let ready = poll_fn(|cx| {
                pooled.drive(cx);
                if pooled.done() {
                    return Poll::Ready(None);
                }
                pooled.sender.poll_ready(cx).map(Some)
            })
            .await;
            match ready {
                Some(Ok(())) => {}
                // An idle connection the backend had closed: take another.
                _ if reused => continue,
                Some(Err(err)) => return Err(err.into()),
                None => return Err(UpstreamError::ClosedAtOnce),
            }
            let mut sent = std::pin::pin!(pooled.sender.try_send_request(request));
            // The request is already queued on the connection; driving it first writes the
            // request and, often in the same poll, reads the answer.
            let result = poll_fn(|cx| {
                pooled.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => return Ok((response, pooled)),
                Err(mut failed) => match failed.take_message() {
                    // Not written at all: the idle connection had been closed by the backend.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(failed.into_error().into()),
                },
            }
        }
    }

    /// Takes an idle connection to `backend` that is still open and not past the idle timeout.
    fn checkout(&self, backend: &Authority) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let (_, list) = idle.iter_mut().find(|(key, _)| key == backend)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.idle_timeout && !entry.pooled.sender.is_closed() {
                return Some(entry.pooled);
            }
        }
        None
    }

    async fn connect(&self, backend: &Authority) -> Result<Pooled, UpstreamError> {
        let connecting = TcpStream::connect(backend.as_str());
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.connect_timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Pooled {
            sender,
            conn: Some(Box::pin(conn.with_upgrades())),
            key: backend.clone(),
        })
    }

    /// Puts a connection whose response has been read to the end back in the idle list.
    pub fn release(&self, pooled: Pooled) {
        if pooled.done() || pooled.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = match idle.iter().position(|(key, _)| *key == pooled.key) {
            Some(at) => at,
            None => {
                idle.push((pooled.key.clone(), Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[at].1;
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                pooled,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout; run periodically by the worker.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|(_, list)| {
            list.retain(|entry| {
                entry.since.elapsed() < self.idle_timeout && !entry.pooled.sender.is_closed()
            });
            !list.is_empty()
        });
    }

    /// How often [`Upstream::sweep`] should run.
    pub fn sweep_every(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_secs(1))
    }
}
