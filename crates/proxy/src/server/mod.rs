//! The client side of the data plane: HTTP/1.1 connections served by our own loop (no buffer held
//! while a connection is idle), HTTP/2 with prior knowledge handed to hyper.

mod h2;
mod head;
mod write;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::{Request, StatusCode};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use h2::Http2;

use crate::Shared;
use crate::client_body::RequestBody;
use crate::forward::{self, Tunnel};
use crate::h1_body::{BodyLink, H1Body};
use crate::upstream::Upstream;
use write::{Asked, Written};

/// A request head is read in pieces of this size, up to `limits.max_header_size`.
const HEAD_CHUNK: usize = 4 * 1024;
/// What HTTP/2 with prior knowledge starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every client connection of one worker shares.
pub struct Context {
    pub shared: Arc<Shared>,
    pub upstream: Arc<Upstream>,
    /// `timeouts.idle`: the wait for a request, the time to send its head, a write that stalls.
    pub idle: Duration,
    pub max_header_size: usize,
    pub http2: Http2,
    /// Cancelled when the worker shuts down: idle connections close, busy ones after their answer.
    pub stop: CancellationToken,
}

/// How one request on a connection ended.
enum Next {
    /// Ready for another request; what was read past this one.
    KeepAlive(BytesMut),
    Close,
    /// The client speaks HTTP/2; what it sent so far.
    Http2(BytesMut),
    /// A 101 answer went out: the connection now carries the upgraded protocol.
    Tunnel(Tunnel, BytesMut),
}

/// Serves one client connection until it closes, times out or the worker stops.
pub async fn serve(stream: TcpStream, peer: SocketAddr, context: Arc<Context>) {
    let stream = Arc::new(stream);
    let mut pending: Option<BytesMut> = None;
    let mut first = true;
    loop {
        let buf = match pending.take().filter(|rest| !rest.is_empty()) {
            Some(rest) => rest,
            None => match first_bytes(&stream, &context).await {
                Some(read) => read,
                None => return,
            },
        };
        // Boxed, as the HTTP/2 and upgraded paths below are: a connection task keeps room for
        // its largest state for its whole life, and an idle one needs only the socket.
        let next = Box::pin(exchange(&stream, buf, peer, &context, first)).await;
        first = false;
        match next {
            Next::KeepAlive(rest) if !context.stop.is_cancelled() => pending = Some(rest),
            Next::KeepAlive(_) | Next::Close => return,
            Next::Http2(read) => {
                if let Ok(stream) = Arc::try_unwrap(stream) {
                    Box::pin(context.http2.serve(stream, read.freeze(), peer, &context)).await;
                }
                return;
            }
            Next::Tunnel(tunnel, early) => {
                if let Ok(stream) = Arc::try_unwrap(stream) {
                    Box::pin(forward::tunnel(stream, early, tunnel)).await;
                }
                return;
            }
        }
    }
}

/// Reads one request, has the request path answer it, and writes the answer.
async fn exchange(
    stream: &Arc<TcpStream>,
    mut buf: BytesMut,
    peer: SocketAddr,
    context: &Context,
    first: bool,
) -> Next {
    let deadline = Instant::now() + context.idle;
    let mut scanned = 0;
    let head = loop {
        if first && is_preface_start(&buf) {
            if buf.len() >= PREFACE.len() {
                return Next::Http2(buf);
            }
        } else if scanned == 0 || has_blank_line(&buf, scanned) {
            // Parsed at once the first time (a head usually comes whole); after that only when
            // the new bytes hold an empty line, so a head sent in pieces is not parsed each time.
            match head::parse(&mut buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(rejected) => {
                    tracing::debug!(%peer, status = rejected.status.as_u16(), "request refused: {}", rejected.reason);
                    write::write_rejection(stream, rejected.status, rejected.reason, context.idle)
                        .await;
                    return Next::Close;
                }
            }
        }
        scanned = buf.len();
        if buf.len() >= context.max_header_size {
            let reason = "the request head is larger than limits.max_header_size";
            tracing::debug!(%peer, "request refused: {reason}");
            write::write_rejection(
                stream,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason,
                context.idle,
            )
            .await;
            return Next::Close;
        }
        match tokio::time::timeout_at(
            deadline,
            read_some(stream, &mut buf, context.max_header_size),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed, or too slow to send its head (slowloris): no answer, as nginx does.
            _ => return Next::Close,
        }
    };

    let link = head.framing.map(|_| Arc::new(BodyLink::default()));
    let body = match (head.framing, &link) {
        (Some(framing), Some(link)) => {
            let rest = std::mem::take(&mut buf);
            RequestBody::H1(H1Body::new(
                stream.clone(),
                rest,
                framing,
                head.expect_continue,
                link.clone(),
            ))
        }
        _ => RequestBody::Empty,
    };
    let asked = Asked {
        method: head.method.clone(),
        version: head.version,
        keep_alive: head.keep_alive,
    };
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;

    let answer = forward::handle(&context.shared, &context.upstream, request, peer);
    let mut response = if link.is_none() {
        // A client that leaves while the backend works is not waited for (passive health still
        // judges the backend: see `Attempt`).
        tokio::select! {
            response = answer => response,
            _ = client_gone(stream) => return Next::Close,
        }
    } else {
        answer.await
    };

    let tunnel = response.extensions_mut().remove::<Tunnel>();
    let status = response.status();
    // A body still unread when the answer starts is not read on: the connection closes after.
    let body_read = link.as_ref().is_none_or(|link| link.is_finished());
    let asked = Asked {
        keep_alive: asked.keep_alive && body_read && !context.stop.is_cancelled(),
        ..asked
    };
    let written = write::write_response(stream, response, &asked, context.idle).await;
    if let (Some(tunnel), Ok(_), StatusCode::SWITCHING_PROTOCOLS) = (tunnel, &written, status) {
        let early = link.as_ref().map_or(Some(buf), |link| link.finished());
        return match early {
            Some(early) => Next::Tunnel(tunnel, early),
            None => Next::Close,
        };
    }
    let rest = match &link {
        None => Some(buf),
        Some(link) => link.finished(),
    };
    match (written, rest) {
        (Ok(Written::Reusable), Some(rest)) => Next::KeepAlive(rest),
        (Ok(_), None) => {
            // Answered before its body was read: stop the body, then close without resetting the
            // answer away (the kernel resets a socket closed with unread data).
            if let Some(link) = &link {
                link.abandon();
            }
            // Boxed: its drain buffer would otherwise sit in every request's state.
            Box::pin(linger(stream)).await;
            Next::Close
        }
        _ => Next::Close,
    }
}

/// Waits for the client to send, holding no buffer (only the socket), then reads what it sent.
/// `None`: it closed, stayed silent for `timeouts.idle`, or the worker stops.
async fn first_bytes(stream: &TcpStream, context: &Context) -> Option<BytesMut> {
    let until = Instant::now() + context.idle;
    loop {
        tokio::select! {
            biased;
            _ = context.stop.cancelled() => return None,
            ready = tokio::time::timeout_at(until, stream.readable()) => {
                if !matches!(ready, Ok(Ok(()))) {
                    return None;
                }
            }
        }
        // A fresh socket reports readable before anything came (tokio's first readiness is a
        // guess): the buffer is kept only once bytes are in it.
        let mut read = BytesMut::with_capacity(HEAD_CHUNK);
        match stream.try_read_buf(&mut read) {
            Ok(0) => return None,
            Ok(n) => {
                if n < read.capacity() {
                    drained(stream);
                }
                return Some(read);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

/// Reads what the socket has, growing `buf` by at most [`HEAD_CHUNK`] and never past `cap`.
async fn read_some(stream: &TcpStream, buf: &mut BytesMut, cap: usize) -> io::Result<usize> {
    let room = cap.saturating_sub(buf.len()).min(HEAD_CHUNK);
    buf.reserve(room);
    loop {
        stream.readable().await?;
        let mut limited = (&mut *buf).limit(room);
        match stream.try_read_buf(&mut limited) {
            Ok(n) => {
                if n > 0 && n < room {
                    drained(stream);
                }
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// After a read that did not fill its room the socket is empty (epoll, as tokio's own `poll_read`
/// assumes): its readiness is dropped, so the next wait does not begin with a read that blocks.
/// Readiness from an event that came since is kept (tokio compares the event's tick).
pub(crate) fn drained(stream: &TcpStream) {
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// Whether `buf` holds an empty line (the end of a head), looking only at bytes from `from` on
/// (and the three before), so a head sent a byte at a time is scanned once, not parsed each time.
fn has_blank_line(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3)..];
    tail.iter().enumerate().any(|(i, &b)| {
        b == b'\n' && (tail.get(i + 1) == Some(&b'\n') || tail[i + 1..].starts_with(b"\r\n"))
    })
}

fn is_preface_start(buf: &[u8]) -> bool {
    !buf.is_empty() && PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())])
}

/// Resolves when the client closed its side (or the socket failed). Data from the client (a
/// pipelined request) is left for later, and this then waits forever.
async fn client_gone(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Stops sending, then reads and drops what the client still sends (at most 1 MiB or 1 s), so the
/// client gets the answer before the connection closes.
async fn linger(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < 1 << 20 {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_line_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(has_blank_line(head, 0));
        assert!(has_blank_line(head, head.len() - 1));
        assert!(!has_blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        assert!(has_blank_line(b"GET / HTTP/1.1\nHost: x\n\n", 20));
    }

    #[test]
    fn the_http2_preface_is_told_from_a_request() {
        assert!(is_preface_start(b"PRI * HT"));
        assert!(is_preface_start(PREFACE));
        assert!(!is_preface_start(b"POST / HTTP/1.1\r\n"));
        assert!(!is_preface_start(b""));
    }
}
