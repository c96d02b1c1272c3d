//! A client's request head (request line and headers) parsed with httparse, strictly: one way to
//! delimit the body (RFC 9112 §6.3), or the request is refused before anything is forwarded.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::h1_body::{Framing, connection_options, parse_length};

/// Headers one request may carry; more is a 431, as a head over the size cap is.
pub const MAX_HEADERS: usize = 128;

/// A parsed request head.
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Option<Framing>,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// A head refused before anything is forwarded: its status and the reason written to the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status: StatusCode,
    pub reason: &'static str,
}

fn reject(status: StatusCode, reason: &'static str) -> Rejected {
    Rejected { status, reason }
}

/// Parses the head at the start of `buf`. `Ok(None)`: not complete yet. On success the head's
/// bytes are taken out of `buf`; header values and the target point into them, not copies.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, Rejected> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more header fields than the proxy takes",
            ));
        }
        Err(httparse::Error::Version) => {
            return Err(reject(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are spoken here (and HTTP/2 with prior knowledge)",
            ));
        }
        Err(_) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "the request line or a header is malformed",
            ));
        }
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| reject(StatusCode::BAD_REQUEST, "the method is not a token"))?;
    let version = if request.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let target = request.path.unwrap_or("").as_bytes();
    let target = (offset(target), target.len() as u32);
    let count = request.headers.len();
    // Where each name and value lies, so they can point into the head once it is frozen.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    for (span, h) in spans.iter_mut().zip(request.headers.iter()) {
        *span = (
            offset(h.name.as_bytes()),
            h.name.len() as u32,
            offset(h.value),
            h.value.len() as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(slice(&head, target.0, target.1))
        .map_err(|_| reject(StatusCode::BAD_REQUEST, "the request target is not a URI"))?;
    let mut headers = HeaderMap::with_capacity(count);
    let mut seen = Seen::default();
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name_at as usize..(name_at + name_len) as usize])
            .map_err(|_| reject(StatusCode::BAD_REQUEST, "a header name is not a token"))?;
        let value =
            HeaderValue::from_maybe_shared(slice(&head, value_at, value_len)).map_err(|_| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "a header value has a control character",
                )
            })?;
        seen.note(&name, &value)?;
        headers.append(name, value);
    }
    let framing = seen.framing(version)?;
    let keep_alive = !seen.close && (version == Version::HTTP_11 || seen.keep_alive);
    let expect_continue = version == Version::HTTP_11 && framing.is_some() && seen.expect_continue;
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// What the headers that frame a request said, noted as the header map is built (no lookups).
#[derive(Default)]
struct Seen {
    /// Transfer-Encoding fields, and whether the one field there was says `chunked` alone.
    codings: u32,
    chunked: bool,
    length: Option<u64>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), Rejected> {
        let bytes = value.as_bytes();
        if name == header::CONTENT_LENGTH {
            // Digits only (RFC 9110 §8.6); repeats must agree.
            let parsed = parse_length(bytes).ok_or(reject(
                StatusCode::BAD_REQUEST,
                "Content-Length is not a number",
            ))?;
            if self.length.is_some_and(|l| l != parsed) {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "Content-Length given twice with different values",
                ));
            }
            self.length = Some(parsed);
        } else if name == header::TRANSFER_ENCODING {
            self.codings += 1;
            self.chunked = bytes.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            let (close, keep_alive) = connection_options(bytes);
            self.close |= close;
            self.keep_alive |= keep_alive;
        } else if name == header::EXPECT {
            self.expect_continue = bytes.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    /// The body's framing: chunked alone, or one Content-Length, or none (RFC 9112 §6.3).
    fn framing(&self, version: Version) -> Result<Option<Framing>, Rejected> {
        if self.codings == 0 {
            return Ok(self.length.map(Framing::Length));
        }
        if version == Version::HTTP_10 {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if self.codings > 1 || !self.chunked {
            return Err(reject(
                StatusCode::NOT_IMPLEMENTED,
                "the only transfer coding taken is `chunked`, alone",
            ));
        }
        if self.length.is_some() {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "both Transfer-Encoding and Content-Length",
            ));
        }
        Ok(Some(Framing::Chunked))
    }
}

fn slice(head: &Bytes, at: u32, len: u32) -> Bytes {
    head.slice(at as usize..(at + len) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, Rejected> {
        parse(&mut BytesMut::from(text))
    }

    fn status(text: &str) -> StatusCode {
        match head(text) {
            Err(rejected) => rejected.status,
            Ok(_) => StatusCode::OK,
        }
    }

    #[test]
    fn a_plain_get_keeps_its_bytes_and_what_follows() {
        let mut buf =
            BytesMut::from("GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next");
        let head = parse(&mut buf).unwrap().unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/a?b=c");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, None);
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keep = |t: &str| head(t).unwrap().unwrap().keep_alive;
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"));
    }

    #[test]
    fn one_framing_or_none() {
        let framing = |t: &str| head(t).unwrap().unwrap().framing;
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"),
            Some(Framing::Length(12))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n"),
            Some(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Some(Framing::Chunked)
        );
        for smuggling in [
            "POST / HTTP/1.1\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 44\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: +4\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 4, 4\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding : chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nfoo: a\r\n b\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(status(smuggling), StatusCode::BAD_REQUEST, "{smuggling:?}");
        }
        for coding in ["chunked, identity", "xchunked", "gzip, chunked"] {
            let text = format!("POST / HTTP/1.1\r\ntransfer-encoding: {coding}\r\n\r\n");
            assert_eq!(status(&text), StatusCode::NOT_IMPLEMENTED, "{coding}");
        }
        let twice =
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(status(twice), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn expect_continue_only_with_a_body() {
        let expects = |t: &str| head(t).unwrap().unwrap().expect_continue;
        assert!(expects(
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\ncontent-length: 3\r\n\r\n"
        ));
        assert!(!expects("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
    }

    #[test]
    fn other_versions_and_too_many_headers() {
        assert_eq!(
            status("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
