//! The request path: route by Host and path, pick a backend, relay, retry refused connections.
//! Also the proxy's own answers (400/404/408/413/502/503/504), each saying what went wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use nonstop_config::Sticky;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;
use crate::attempt::Attempt;
use crate::balance;
use crate::client_body::{BodyWatch, ClientBody, ClientFault, RequestBody};
use crate::edge::{self, Want};
use crate::headers::{X_REQUEST_ID, is_upgrade, prepare_request_headers, strip_hop_by_hop};
use crate::host::{RequestHost, request_host};
use crate::metrics::ErrorKind;
use crate::response_body::Tracked;
use crate::state::{Backend, InFlight, Pool};
use crate::upstream::{BackendBody, Upstream, is_idempotent};

/// A request body as it goes to a backend.
pub enum UpstreamBody {
    /// Read whole before the request went out: it can be sent again to another backend.
    Buffered(Bytes),
    Streamed(ClientBody),
}

pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// Backends one request may be tried on (refused connects, connections lost before an answer).
const MAX_ATTEMPTS: usize = 8;

/// Bodies up to this size are buffered so that a refused connection can be retried elsewhere.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Serves one client request. Never fails: every problem becomes an explanatory response.
pub async fn handle(
    shared: &Shared,
    upstream: &Arc<Upstream>,
    req: Request<RequestBody>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let request_id = shared.request_ids.take(req.headers());
    let mut response = match relay(shared, upstream, req, peer, &request_id).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    response
}

/// An answer the proxy gives itself.
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let reason = self.status.canonical_reason().unwrap_or("");
        let body = format!("{} {reason}: {}\n", self.status.as_u16(), self.message);
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

async fn relay(
    shared: &Shared,
    upstream: &Arc<Upstream>,
    req: Request<RequestBody>,
    peer: SocketAddr,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, Refusal> {
    let table = shared.table.load_full();
    let request_host = request_host(&req)?;
    let host = request_host.as_ref().map(RequestHost::host);
    let Some(pool) = table.route(host, req.uri().path()).cloned() else {
        shared.metrics.unrouted();
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no route for host `{}` and path `{}`",
                host.unwrap_or("-"),
                req.uri().path()
            ),
        ));
    };

    let edge = pool.edge.load_full();
    if let Some(maintenance) = &edge.maintenance
        && edge::turned_away(maintenance, peer.ip())
    {
        shared.metrics.error(&pool.name, ErrorKind::Maintenance);
        return Ok(edge::maintenance_page(maintenance, req.headers()));
    }
    let want = edge
        .preview
        .as_ref()
        .map_or(Want::Any, |p| edge::want(p, req.headers()));

    let max_body = table.settings.max_body;
    // The length the server already checked while framing the body (HTTP/1's head parser, or
    // hyper's HTTP/2), not a second parse of the header.
    let declared_length = req.body().size_hint().exact();
    if declared_length.is_some_and(|len| len > max_body) {
        shared.metrics.error(&pool.name, ErrorKind::BodyTooLarge);
        return Err(too_large(max_body));
    }

    // Upgrades are HTTP/1's; the server carries the connection over once the 101 is written.
    let upgrade = req.version() <= Version::HTTP_11 && is_upgrade(req.headers());
    let route = pool
        .sticky
        .as_ref()
        .and_then(|sticky| balance::session_route(sticky, req.headers(), req.uri().path()))
        .map(str::to_owned);

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    prepare_request_headers(
        &mut headers,
        upgrade,
        peer,
        request_host.as_ref().map(|h| &h.value),
        request_id,
    );
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let pause = table.settings.request_body_timeout;
    let mut watch: Option<Arc<BodyWatch>> = None;
    let mut body = Some(if body.is_end_stream() {
        UpstreamBody::Buffered(Bytes::new())
    } else {
        let (client_body, body_watch) = ClientBody::new(body, max_body, pause);
        if declared_length.is_some_and(|len| len <= RETRY_BUFFER_LIMIT) {
            match client_body.collect().await {
                Ok(collected) => UpstreamBody::Buffered(collected.to_bytes()),
                Err(_) => {
                    let fault = body_watch.fault().unwrap_or(ClientFault::Malformed);
                    return Err(client_fault(shared, &pool, fault, &table.settings, peer));
                }
            }
        } else {
            watch = Some(body_watch);
            UpstreamBody::Streamed(client_body)
        }
    });
    // The backends tried so far, on the stack: this runs for every request.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0;
    loop {
        // A fresh member set per attempt: a slow upload must not pick from before a switch.
        let members = pool.members.load_full();
        let picked = (attempts < MAX_ATTEMPTS)
            .then(|| {
                edge::pick(
                    &members,
                    pool.balance,
                    route.as_deref(),
                    &tried[..attempts],
                    edge.preview.as_ref(),
                    want,
                )
            })
            .flatten();
        let Some(backend) = picked else {
            return Err(no_backend(shared, &pool, &members.backends, attempts > 0));
        };
        tried[attempts] = Arc::as_ptr(&backend) as usize;
        attempts += 1;
        let in_flight = backend.begin();

        // A buffered body can be sent again; a streamed one is gone once handed to the client.
        let retry_body = match &body {
            Some(UpstreamBody::Buffered(bytes)) => Some(UpstreamBody::Buffered(bytes.clone())),
            _ => None,
        };
        let this_body = body.take().expect("a body is kept for every attempt");
        // Copy the headers only when another attempt could need them.
        let may_retry = retry_body.is_some() && attempts < members.backends.len().min(MAX_ATTEMPTS);
        let attempt_headers = if may_retry {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let request = build_request(&parts.method, &path, &backend, attempt_headers, this_body);

        let started = Instant::now();
        let limit = table.settings.response_header_timeout;
        let mut attempt = Attempt {
            request: Some(Box::pin(
                upstream.clone().send(backend.authority.clone(), request),
            )),
            in_flight: Some(in_flight),
            eject: pool.eject,
            watch: watch.clone(),
            deadline: tokio::time::Instant::now() + limit,
        };
        let deadline = async {
            match &watch {
                Some(watch) => watch.response_deadline(limit).await,
                None => tokio::time::sleep(limit).await,
            }
        };
        let outcome = tokio::select! {
            biased;
            result = attempt.request.as_mut().expect("set just above") => Ok(result),
            _ = deadline => Err(()),
            _ = backend.retired.cancelled() => {
                attempt.request = None;
                return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE,
                    format!("backend `{}` was removed from pool `{}` and its drain timeout ran out", backend.name, pool.name)));
            }
        };
        attempt.request = None;
        let in_flight = attempt.in_flight.take().expect("set just above");
        if let Ok(Err(_)) = &outcome
            && let Some(fault) = watch.as_ref().and_then(|w| w.fault())
        {
            // The client's body broke or stalled; the backend did nothing wrong.
            return Err(client_fault(shared, &pool, fault, &table.settings, peer));
        }
        match outcome {
            Ok(Ok(response)) => {
                backend.record_response(response.status(), started.elapsed(), &pool.eject);
                return Ok(finish_response(
                    response,
                    in_flight,
                    &pool,
                    route.as_deref(),
                    upgrade,
                ));
            }
            Ok(Err(err)) if err.is_connect() => {
                backend.record_failure(&pool.eject, true);
                tracing::warn!(pool = %pool.name, backend = %backend.name, addr = %backend.addr, error = %error_chain(&err), "connect failed");
                match retry_body {
                    Some(again) => {
                        shared.metrics.error(&pool.name, ErrorKind::Retry);
                        body = Some(again);
                    }
                    None => {
                        shared.metrics.error(&pool.name, ErrorKind::Connect);
                        return Err(Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "backend `{}` ({}) refused the connection",
                                backend.name, backend.addr
                            ),
                        ));
                    }
                }
            }
            Ok(Err(err)) => {
                backend.record_failure(&pool.eject, false);
                let garbage = err.is_parse();
                // A backend that died mid-request (reset, closed) may be retried when the method is
                // idempotent (RFC 9110 §9.2.2); an answer that is not HTTP is the backend's fault, not luck.
                if !garbage
                    && is_idempotent(&parts.method)
                    && let Some(again) = retry_body
                {
                    tracing::warn!(pool = %pool.name, backend = %backend.name, error = %error_chain(&err), "connection lost; retrying elsewhere");
                    shared.metrics.error(&pool.name, ErrorKind::Retry);
                    body = Some(again);
                    continue;
                }
                shared.metrics.error(&pool.name, ErrorKind::BadResponse);
                tracing::warn!(pool = %pool.name, backend = %backend.name, error = %error_chain(&err), "bad response");
                let what = if garbage {
                    "did not answer with valid HTTP"
                } else {
                    "lost the connection before answering"
                };
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "backend `{}` ({}) {what}: {}",
                        backend.name,
                        backend.addr,
                        error_chain(&err)
                    ),
                ));
            }
            Err(()) => {
                drop(in_flight);
                backend.record_failure(&pool.eject, false);
                shared.metrics.error(&pool.name, ErrorKind::Timeout);
                let after = if watch.as_ref().is_some_and(|w| !w.sent()) {
                    "of the request body it stopped reading"
                } else {
                    "after the request was sent"
                };
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend `{}` ({}) sent no response headers within {:?} {after}",
                        backend.name, backend.addr, limit
                    ),
                ));
            }
        }
    }
}

/// The answer to a request whose body was the client's fault: logged and counted as a client
/// error, never against the backend (passive ejection, canary error rates).
fn client_fault(
    shared: &Shared,
    pool: &Pool,
    fault: ClientFault,
    settings: &crate::state::Settings,
    peer: SocketAddr,
) -> Refusal {
    let (kind, refusal) = match fault {
        ClientFault::TooLarge => (ErrorKind::BodyTooLarge, too_large(settings.max_body)),
        ClientFault::Malformed => (
            ErrorKind::ClientBody,
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "the request body is malformed or ended early (bad chunk framing, or shorter than its Content-Length)",
            ),
        ),
        ClientFault::Slow => (
            ErrorKind::ClientTimeout,
            Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body paused for longer than timeouts.request_body ({:?})",
                    settings.request_body_timeout
                ),
            ),
        ),
    };
    shared.metrics.error(&pool.name, kind);
    tracing::info!(pool = %pool.name, %peer, status = refusal.status.as_u16(), "client error: {}", refusal.message);
    refusal
}

fn too_large(max_body: u64) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the proxy's max_body of {max_body} bytes"),
    )
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn no_backend(
    shared: &Shared,
    pool: &Pool,
    backends: &[Arc<Backend>],
    after_retry: bool,
) -> Refusal {
    shared.metrics.error(&pool.name, ErrorKind::NoBackend);
    let mut summary = std::collections::BTreeMap::<&str, usize>::new();
    for backend in backends {
        let why = if backend.state() != nonstop_config::AdminState::Active {
            backend.state().as_str()
        } else if !backend.healthy() {
            "down"
        } else if backend.ejected() {
            "ejected"
        } else {
            "refusing connections"
        };
        *summary.entry(why).or_default() += 1;
    }
    let detail = if backends.is_empty() {
        "it has no backends".to_string()
    } else {
        summary
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let status = if after_retry {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Refusal::new(
        status,
        format!(
            "no backend of pool `{}` can take this request ({detail})",
            pool.name
        ),
    )
}

fn build_request(
    method: &Method,
    path: &PathAndQuery,
    backend: &Backend,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    // Origin form (`/path?query`): the connection already goes to the backend.
    *request.uri_mut() = Uri::from(path.clone());
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    if !request.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(backend.authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    request
}

fn finish_response(
    mut response: Response<BackendBody>,
    in_flight: InFlight,
    pool: &Pool,
    route: Option<&str>,
    client_upgrade: bool,
) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // The client's connection has its own protocol version; the backend's is not its business.
    *response.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(response.headers_mut(), switching);
    if let Some(Sticky::Cookie { name }) = &pool.sticky {
        let backend = in_flight.backend();
        if route != Some(backend.route.as_str()) {
            let cookie = format!("{name}={}; Path=/; HttpOnly; SameSite=Lax", backend.route);
            if let Ok(value) = HeaderValue::try_from(cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
    }
    let (parts, body) = response.into_parts();
    if switching && client_upgrade {
        let upgraded = body.into_upgraded();
        let mut response = Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
        if let Some((stream, early)) = upgraded {
            let tunnel = Upgraded {
                backend: stream,
                early,
                in_flight,
            };
            response
                .extensions_mut()
                .insert(Tunnel(Arc::new(std::sync::Mutex::new(Some(tunnel)))));
        }
        return response;
    }
    Response::from_parts(
        parts,
        Either::Left(Tracked::new(body, in_flight, pool.eject)),
    )
}

/// A backend connection that answered 101: it now carries the upgraded protocol.
struct Upgraded {
    backend: TcpStream,
    /// What the backend sent after its 101 head, already read.
    early: BytesMut,
    in_flight: InFlight,
}

/// A 101 answer's other half: the backend's upgraded connection, for the server to join to the
/// client's once the 101 is written. (Cloneable because response extensions must be.)
#[derive(Clone)]
pub struct Tunnel(Arc<std::sync::Mutex<Option<Upgraded>>>);

/// Carries an upgraded connection (WebSocket and the like) both ways until either side closes;
/// `early` is what the client sent after its request, already read.
pub async fn tunnel(mut client: TcpStream, early: BytesMut, tunnel: Tunnel) {
    let taken = tunnel.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(Upgraded {
        mut backend,
        early: from_backend,
        in_flight,
    }) = taken
    else {
        return;
    };
    if !early.is_empty() && backend.write_all(&early).await.is_err() {
        return;
    }
    if !from_backend.is_empty() && client.write_all(&from_backend).await.is_err() {
        return;
    }
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(backend = %in_flight.backend().name, error = %err, "upgraded connection ended");
    }
}
