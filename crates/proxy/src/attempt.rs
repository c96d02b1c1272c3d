//! One request to a backend, judged by passive health even when its client leaves first:
//! the wait goes on in the background until the response-header deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use std::future::Future;
use std::pin::Pin;

use http::Response;
use nonstop_config::EjectConfig;

use crate::client_body::BodyWatch;
use crate::state::InFlight;
use crate::upstream::{BackendBody, UpstreamError};

/// The wait for a backend's response headers.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<BackendBody>, UpstreamError>> + Send>>;

/// Background waits on backends whose client left first, at most this many at once.
const MAX_DETACHED: usize = 1024;
static DETACHED: AtomicUsize = AtomicUsize::new(0);

/// One request to a backend. If the client goes away before the answer, the wait goes on in the
/// background until the response-header deadline, so a backend that hangs is still counted as
/// failing in passive health, and one that answers is counted as answering.
pub struct Attempt {
    pub request: Option<ResponseFuture>,
    pub in_flight: Option<InFlight>,
    pub eject: EjectConfig,
    pub watch: Option<Arc<BodyWatch>>,
    pub deadline: tokio::time::Instant,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let (Some(request), Some(in_flight)) = (self.request.take(), self.in_flight.take()) else {
            return;
        };
        if DETACHED.fetch_add(1, Ordering::Relaxed) >= MAX_DETACHED {
            DETACHED.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let (eject, watch, deadline) = (self.eject, self.watch.take(), self.deadline);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            DETACHED.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        runtime.spawn(async move {
            let backend = in_flight.backend().clone();
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, request).await {
                Err(_) => {
                    backend.record_failure(&eject, false);
                    tracing::warn!(backend = %backend.name, addr = %backend.addr, "no response headers by the deadline (the client had already left)");
                }
                Ok(Ok(response)) => {
                    backend.record_response(response.status(), started.elapsed(), &eject)
                }
                Ok(Err(err)) => {
                    if watch.as_ref().and_then(|w| w.fault()).is_none() {
                        backend.record_failure(&eject, err.is_connect());
                    }
                }
            }
            drop(in_flight);
            DETACHED.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
