//! A backend's response body on its way to the client: it drives the backend connection, keeps the
//! in-flight count until sent, counts a body cut short as a backend failure, then pools the connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use nonstop_config::EjectConfig;

use crate::state::InFlight;
use crate::upstream::{Pooled, Upstream};

/// A backend's response body that keeps the backend's in-flight count until it has been sent.
pub struct Tracked {
    inner: Incoming,
    in_flight: InFlight,
    eject: EjectConfig,
    /// The connection the body arrives on; it goes back to the idle list once the body is whole.
    conn: Option<(Pooled, Arc<Upstream>)>,
}

impl Tracked {
    pub fn new(
        inner: Incoming,
        in_flight: InFlight,
        eject: EjectConfig,
        pooled: Pooled,
        upstream: Arc<Upstream>,
    ) -> Tracked {
        Tracked {
            inner,
            in_flight,
            eject,
            conn: Some((pooled, upstream)),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Only a connection whose response was read to the end can carry another request; one
        // dropped half-way (the client left) is closed.
        if let Some((pooled, upstream)) = self.conn.take()
            && self.inner.is_end_stream()
        {
            upstream.release(pooled);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some((pooled, _)) = &mut self.conn {
            pooled.drive(cx);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(err))) = &polled {
            self.conn = None;
            // Shorter than its Content-Length, bad chunking, or a reset: the backend's doing.
            let backend = self.in_flight.backend();
            backend.record_failure(&self.eject, false);
            tracing::warn!(backend = %backend.name, addr = %backend.addr, error = %err, "response body cut short");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
