//! A backend's response body on its way to the client: it keeps the backend's in-flight count
//! until sent and counts a body cut short as a backend failure.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use nonstop_config::EjectConfig;

use crate::h1_body::BodyError;
use crate::state::InFlight;
use crate::upstream::BackendBody;

/// A backend's response body that keeps the backend's in-flight count until it has been sent.
pub struct Tracked {
    inner: BackendBody,
    in_flight: InFlight,
    eject: EjectConfig,
}

impl Tracked {
    pub fn new(inner: BackendBody, in_flight: InFlight, eject: EjectConfig) -> Tracked {
        Tracked {
            inner,
            in_flight,
            eject,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(err))) = &polled {
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
