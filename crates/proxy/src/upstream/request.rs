//! A request on its way to a backend: the head (with a buffered body) in one buffer, written at
//! once; a streamed body after it, by its length or in chunks, as the backend's socket takes it.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use http::request::Parts;
use http_body::Body;

use super::UpstreamError;
use crate::client_body::ClientBody;
use crate::forward::UpstreamBody;

/// A streamed request body still to be written.
pub struct Sending {
    body: ClientBody,
    chunked: bool,
    /// Framed bytes not yet written.
    pending: VecDeque<Bytes>,
    ended: bool,
}

/// The request's head, and a buffered body after it, as bytes for the wire; a streamed body is
/// returned to be sent after them. The framing is the proxy's own: the client's Content-Length is
/// replaced by the body's real length, chunked when it is not known.
pub fn encode(parts: &Parts, body: UpstreamBody) -> (Bytes, Option<Sending>) {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match body {
        UpstreamBody::Buffered(data) => {
            if !data.is_empty() || had_length {
                length(&mut out, data.len() as u64);
            }
            out.put_slice(b"\r\n");
            out.put_slice(&data);
            (out.freeze(), None)
        }
        UpstreamBody::Streamed(streamed) => {
            let chunked = match streamed.size_hint().exact() {
                Some(n) => {
                    length(&mut out, n);
                    false
                }
                None => {
                    out.put_slice(b"transfer-encoding: chunked\r\n");
                    true
                }
            };
            out.put_slice(b"\r\n");
            let sending = Sending {
                body: streamed,
                chunked,
                pending: VecDeque::new(),
                ended: false,
            };
            (out.freeze(), Some(sending))
        }
    }
}

impl Sending {
    /// Writes the body as far as the socket takes it; ready once all of it is written.
    pub fn poll_send(
        &mut self,
        stream: &tokio::net::TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            while let Some(front) = self.pending.front_mut() {
                ready!(stream.poll_write_ready(cx)).map_err(UpstreamError::Lost)?;
                match stream.try_write(front) {
                    Ok(n) if n == front.len() => {
                        self.pending.pop_front();
                    }
                    Ok(n) => {
                        let _ = front.split_to(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(UpstreamError::Lost(e))),
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        let size = format!("{:x}\r\n", data.len());
                        self.pending.push_back(Bytes::from(size));
                        self.pending.push_back(data);
                        self.pending.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        self.pending.push_back(data);
                    }
                }
                Some(Err(err)) => {
                    return Poll::Ready(Err(UpstreamError::RequestBody(err.to_string())));
                }
            }
        }
    }
}

fn length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head_of(request: Request<UpstreamBody>) -> String {
        let (parts, body) = request.into_parts();
        let (head, sending) = encode(&parts, body);
        assert!(sending.is_none());
        String::from_utf8(head.to_vec()).unwrap()
    }

    #[test]
    fn a_buffered_body_follows_its_head_with_its_real_length() {
        let request = Request::post("/a?b")
            .header("host", "x")
            .header("content-length", "99")
            .body(UpstreamBody::Buffered(Bytes::from_static(b"hello")))
            .unwrap();
        assert_eq!(
            head_of(request),
            "POST /a?b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
        );
    }

    #[test]
    fn no_length_without_a_body_unless_the_client_gave_one() {
        let get = Request::get("/")
            .body(UpstreamBody::Buffered(Bytes::new()))
            .unwrap();
        assert_eq!(head_of(get), "GET / HTTP/1.1\r\n\r\n");
        let empty_post = Request::post("/")
            .header("content-length", "0")
            .body(UpstreamBody::Buffered(Bytes::new()))
            .unwrap();
        assert_eq!(
            head_of(empty_post),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
