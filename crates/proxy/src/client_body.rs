//! The client's request body on its way to a backend. A malformed or cut-off body, a pause longer
//! than `timeouts.request_body`, or more than `max_body` is the client's fault, noted in a watch.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::h1_body::H1Body;

/// Why a request body did not arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Bad chunk framing, a body shorter than its Content-Length, or the client went away.
    Malformed,
    /// No data for longer than `timeouts.request_body`.
    Slow,
    /// More than `max_body`.
    TooLarge,
}

impl ClientFault {
    fn code(self) -> u8 {
        match self {
            ClientFault::Malformed => 1,
            ClientFault::Slow => 2,
            ClientFault::TooLarge => 3,
        }
    }
}

/// Shared between the body (which the backend connection polls) and the request path.
pub struct BodyWatch {
    fault: AtomicU8,
    sent: AtomicBool,
    /// Milliseconds since `epoch` of the last piece handed on (or of the end).
    progress_ms: AtomicU64,
    /// The body is waiting for the client, not for the backend to take more.
    waiting_on_client: AtomicBool,
    epoch: Instant,
}

impl BodyWatch {
    fn new() -> Arc<BodyWatch> {
        Arc::new(BodyWatch {
            fault: AtomicU8::new(0),
            sent: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Relaxed) {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::Slow),
            3 => Some(ClientFault::TooLarge),
            _ => None,
        }
    }

    fn set_fault(&self, fault: ClientFault) {
        let _ = self
            .fault
            .compare_exchange(0, fault.code(), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn progressed(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    fn last_progress(&self) -> Instant {
        self.epoch + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed))
    }

    /// Resolves when the backend has had `limit` to answer: `limit` after the whole body was
    /// handed on, or after the backend stopped taking more of it. Time spent waiting for a slow
    /// client does not count; that is [`ClientBody`]'s own timeout.
    pub async fn response_deadline(&self, limit: Duration) {
        loop {
            let since = self.last_progress();
            tokio::time::sleep_until(since + limit).await;
            let moved = self.last_progress() != since;
            if !moved && !self.waiting_on_client.load(Ordering::Relaxed) {
                return;
            }
            if !moved {
                // Waiting on the client: look again once its own timeout could have fired.
                tokio::time::sleep(Duration::from_millis(limit.as_millis().min(1000) as u64)).await;
            }
        }
    }

    pub fn sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A client's request body as the server read it: off an HTTP/1 connection, or an HTTP/2 stream.
pub enum RequestBody {
    Empty,
    H1(H1Body),
    H2(Incoming),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H1(body) => body.is_end_stream(),
            RequestBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::H1(body) => body.size_hint(),
            RequestBody::H2(body) => body.size_hint(),
        }
    }
}

/// A request body with a pause timeout, a size limit and a [`BodyWatch`].
pub struct ClientBody {
    inner: RequestBody,
    limit: u64,
    read: u64,
    pause: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    watch: Arc<BodyWatch>,
}

/// The error a [`ClientBody`] ends with; the watch says which fault it was.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body {0}")]
pub struct ClientBodyError(&'static str);

impl ClientBody {
    pub fn new(inner: RequestBody, limit: u64, pause: Duration) -> (ClientBody, Arc<BodyWatch>) {
        let watch = BodyWatch::new();
        let body = ClientBody {
            inner,
            limit,
            read: 0,
            pause,
            timer: Box::pin(tokio::time::sleep(pause)),
            waiting: false,
            watch: watch.clone(),
        };
        (body, watch)
    }

    fn fail(&self, fault: ClientFault) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.watch.set_fault(fault);
        Poll::Ready(Some(Err(ClientBodyError(match fault {
            ClientFault::Malformed => "was malformed or cut off",
            ClientFault::Slow => "paused longer than timeouts.request_body",
            ClientFault::TooLarge => "is larger than max_body",
        }))))
    }

    fn finished(&self) {
        self.watch.progressed();
        self.watch.sent.store(true, Ordering::Relaxed);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.watch.fault().is_some() {
            return Poll::Ready(None);
        }
        if !self.waiting {
            // The pause is measured from when the backend side asks for more, not from the last
            // piece: a backend that reads slowly is not the client's fault.
            self.waiting = true;
            let deadline = Instant::now() + self.pause;
            self.timer.as_mut().reset(deadline);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.waiting = false;
                self.watch.waiting_on_client.store(false, Ordering::Relaxed);
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                    if self.read > self.limit {
                        return self.fail(ClientFault::TooLarge);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finished();
                } else {
                    self.watch.progressed();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => self.fail(ClientFault::Malformed),
            Poll::Ready(None) => {
                self.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                self.watch.waiting_on_client.store(true, Ordering::Relaxed);
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => self.fail(ClientFault::Slow),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.finished();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
