//! A backend's answer: its head parsed with httparse (interim 1xx answers skipped), its body read
//! straight off the connection, which goes back to the idle list once the body is whole.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::request::Sending;
use super::{Conn, Upstream};
use crate::h1_body::{BodyError, BodyLink, Framing, H1Body, connection_options, parse_length};

/// Headers one answer may carry.
const MAX_HEADERS: usize = 128;
/// An answer's head larger than this is refused (nginx's own default is 4–8 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// The first read of an answer takes up to this much: a small answer's head and body at once.
const FIRST_READ: usize = 8 * 1024;

/// An answer's head, as parsed.
pub struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// The backend keeps the connection open after this answer.
    keep_alive: bool,
}

pub enum HeadError {
    /// The backend closed the connection (what it sent so far is in the buffer).
    Closed,
    Io(io::Error),
    Malformed(&'static str),
}

/// Reads until `buf` holds a final answer's head (1xx interim answers other than 101 are dropped).
/// `expects_body`: false for an answer to HEAD, which has no body whatever its headers say.
pub fn poll_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    expects_body: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, HeadError>> {
    loop {
        if !buf.is_empty() {
            match parse(buf, expects_body)? {
                Some(head)
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue;
                }
                Some(head) => return Poll::Ready(Ok(head)),
                None if buf.len() >= MAX_HEAD => {
                    return Poll::Ready(Err(HeadError::Malformed(
                        "the answer's head is larger than 64 KiB",
                    )));
                }
                None => {}
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(FIRST_READ.min(MAX_HEAD - buf.len()).max(1024));
        }
        ready!(stream.poll_read_ready(cx)).map_err(HeadError::Io)?;
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(0) => return Poll::Ready(Err(HeadError::Closed)),
            Ok(n) => {
                if n < room {
                    crate::server::drained(stream);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(HeadError::Io(e))),
        }
    }
}

/// Parses the head at the start of `buf` and takes its bytes out; header values point into them.
fn parse(buf: &mut BytesMut, expects_body: bool) -> Result<Option<Head>, HeadError> {
    let bad = HeadError::Malformed;
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(bad("more than 128 header fields")),
        Err(_) => return Err(bad("the status line or a header is malformed")),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))
        .map_err(|_| bad("the status code is out of range"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let count = response.headers.len();
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        *span = (
            (h.name.as_ptr() as usize - base) as u32,
            h.name.len() as u32,
            (h.value.as_ptr() as usize - base) as u32,
            h.value.len() as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut seen = Seen::default();
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name_at as usize..(name_at + name_len) as usize])
            .map_err(|_| bad("a header name is not a token"))?;
        let value = head.slice(value_at as usize..(value_at + value_len) as usize);
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| bad("a header value has a control character"))?;
        seen.note(&name, value.as_bytes())?;
        headers.append(name, value);
    }
    let bodiless = !expects_body
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // RFC 9112 §6.3: chunked as the last coding wins over a length (and then the connection is
    // not trusted again); another coding, or no length at all, runs until the backend closes.
    let framing = if bodiless {
        Framing::Length(0)
    } else if seen.codings > 0 {
        if seen.chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        seen.length.map_or(Framing::UntilClose, Framing::Length)
    };
    let keep_alive = !seen.close
        && (version == Version::HTTP_11 || seen.keep_alive)
        && framing != Framing::UntilClose
        && !(seen.codings > 0 && seen.length.is_some());
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// What the headers that frame an answer said, noted as the header map is built.
#[derive(Default)]
struct Seen {
    codings: u32,
    chunked_last: bool,
    length: Option<u64>,
    close: bool,
    keep_alive: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, bytes: &[u8]) -> Result<(), HeadError> {
        if name == header::CONTENT_LENGTH {
            let parsed = parse_length(bytes)
                .ok_or(HeadError::Malformed("Content-Length is not a number"))?;
            if self.length.is_some_and(|l| l != parsed) {
                return Err(HeadError::Malformed(
                    "Content-Length given twice with different values",
                ));
            }
            self.length = Some(parsed);
        } else if name == header::TRANSFER_ENCODING {
            self.codings += 1;
            let last = bytes.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            let (close, keep_alive) = connection_options(bytes);
            self.close |= close;
            self.keep_alive |= keep_alive;
        }
        Ok(())
    }
}

/// The answer for the request path: its head, and a body that reads the rest off `conn` (and
/// writes what is left of a streamed request body meanwhile).
pub fn into_response(
    head: Head,
    rest: BytesMut,
    conn: Conn,
    sending: Option<Sending>,
    upstream: Arc<Upstream>,
) -> Response<BackendBody> {
    let link = Arc::new(BodyLink::default());
    let body = H1Body::new(conn.stream.clone(), rest, head.framing, false, link.clone());
    let reusable = head.keep_alive && head.status != StatusCode::SWITCHING_PROTOCOLS;
    let mut response = Response::new(BackendBody {
        body,
        sending,
        checkin: Checkin {
            conn: Some(conn),
            upstream,
            link,
            reusable,
        },
    });
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    response
}

/// A backend's response body, read off its connection.
pub struct BackendBody {
    body: H1Body,
    sending: Option<Sending>,
    checkin: Checkin,
}

/// Gives the connection back to the idle list when the body is dropped, if it was read to its
/// end, nothing followed it, and the request went out whole.
struct Checkin {
    conn: Option<Conn>,
    upstream: Arc<Upstream>,
    link: Arc<BodyLink>,
    reusable: bool,
}

impl Drop for Checkin {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && self.link.finished().is_some_and(|rest| rest.is_empty())
        {
            self.upstream.release(conn);
        }
    }
}

impl BackendBody {
    /// A 101 answer's connection, now the upgraded protocol's, with what the backend sent past
    /// the head.
    pub fn into_upgraded(self) -> Option<(TcpStream, BytesMut)> {
        let BackendBody {
            body, mut checkin, ..
        } = self;
        drop(body);
        let early = checkin.link.finished()?;
        let conn = checkin.conn.take()?;
        let stream = Arc::try_unwrap(conn.stream).ok()?;
        Some((stream, early))
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        // A backend may answer while it still reads the request (a stream it echoes).
        if let (Some(sending), Some(conn)) = (&mut this.sending, &this.checkin.conn)
            && let Poll::Ready(sent) = sending.poll_send(&conn.stream, cx)
        {
            this.sending = None;
            if sent.is_err() {
                this.checkin.reusable = false;
            }
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) && this.sending.is_some() {
            // The answer is whole but the backend did not take all of the request.
            this.checkin.reusable = false;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, expects_body: bool) -> Head {
        let mut buf = BytesMut::from(text);
        match parse(&mut buf, expects_body) {
            Ok(Some(head)) => head,
            _ => panic!("not a head: {text:?}"),
        }
    }

    fn refused(text: &str) -> &'static str {
        match parse(&mut BytesMut::from(text), true) {
            Err(HeadError::Malformed(what)) => what,
            _ => panic!("taken: {text:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |t: &str| head(t, true).framing;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"),
            Framing::Length(7)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Framing::Length(0)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", false).framing,
            Framing::Length(0)
        );
    }

    #[test]
    fn only_a_self_delimited_answer_keeps_the_connection() {
        let keep = |t: &str| head(t, true).keep_alive;
        assert!(keep("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(keep(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn a_head_in_pieces_and_what_follows_it() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-le");
        assert!(matches!(parse(&mut buf, true), Ok(None)));
        buf.extend_from_slice(b"ngth: 2\r\nx-a: 1\r\n\r\nhi");
        let head = parse(&mut buf, true).ok().flatten().unwrap();
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(&buf[..], b"hi");
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            refused("SSH-2.0-OpenSSH\r\n\r\n"),
            "the status line or a header is malformed"
        );
        assert_eq!(
            refused("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            "Content-Length given twice with different values"
        );
        assert_eq!(
            refused("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
            "Content-Length is not a number"
        );
    }
}
