//! An HTTP/1 message body read straight off its socket: a client's request body or a backend's
//! response body, by Content-Length, strict chunks or (responses) until close. When it ends
//! cleanly it hands back the bytes read past its end (a pipelined request).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

/// How much of a body one read takes at most.
const READ_CHUNK: usize = 16 * 1024;
/// Chunk extensions of one chunk, and all trailer lines, are bounded by these (bytes).
const MAX_CHUNK_EXTENSION: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// How a message body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// A response without a length: it ends when the backend closes the connection.
    UntilClose,
}

/// What the connection and its request's body share: the bytes left over once the body ended
/// cleanly, and whether the connection gave up on the body (its response is already sent).
#[derive(Default)]
pub struct BodyLink {
    leftover: Mutex<Option<BytesMut>>,
    abandoned: AtomicBool,
}

impl BodyLink {
    /// The bytes read past the body's end, if the body was read to its end.
    pub fn finished(&self) -> Option<BytesMut> {
        self.leftover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Whether the body has been read to its end.
    pub fn is_finished(&self) -> bool {
        self.leftover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The connection is done with this request: a body still being read fails from now on.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

/// Why a body did not arrive whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("bad chunk framing: {0}")]
    Chunk(&'static str),
    #[error("the connection closed before the body's end")]
    Eof,
    #[error("the response was sent before the body's end")]
    Abandoned,
    #[error("reading the body: {0}")]
    Io(#[from] io::Error),
}

/// A message body on its connection.
pub struct H1Body {
    stream: Arc<TcpStream>,
    buf: BytesMut,
    state: State,
    link: Arc<BodyLink>,
    /// `100 Continue` still to be written (bytes written so far), sent when the body is first asked for.
    expect_continue: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Hex digits of a chunk size so far.
    Size {
        value: u64,
        digits: u8,
    },
    /// Blanks after the size, before `;`.
    SizeBlank {
        value: u64,
    },
    Extension {
        value: u64,
        len: usize,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    /// Everything up to the connection's end.
    Rest,
    DataCr,
    DataLf,
    /// Trailer section: `at_line_start` and the bytes of trailers so far.
    Trailer {
        at_line_start: bool,
        len: usize,
    },
    TrailerLf {
        len: usize,
    },
    FinalLf,
    Done,
}

/// A Content-Length value: digits only, as RFC 9110 §8.6 has it (no sign, no blanks, no list).
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// What a Connection field's value says: (`close`, `keep-alive`).
pub fn connection_options(value: &[u8]) -> (bool, bool) {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).fold(
        (false, false),
        |(close, keep), token| {
            (
                close || token.eq_ignore_ascii_case(b"close"),
                keep || token.eq_ignore_ascii_case(b"keep-alive"),
            )
        },
    )
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl H1Body {
    pub fn new(
        stream: Arc<TcpStream>,
        buf: BytesMut,
        framing: Framing,
        expect_continue: bool,
        link: Arc<BodyLink>,
    ) -> H1Body {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size {
                value: 0,
                digits: 0,
            },
            Framing::UntilClose => State::Rest,
        };
        let mut body = H1Body {
            stream,
            buf,
            state,
            link,
            expect_continue: expect_continue.then_some(0),
        };
        if body.state == State::Done {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.expect_continue = None;
        let leftover = std::mem::take(&mut self.buf);
        *self.link.leftover.lock().unwrap_or_else(|e| e.into_inner()) = Some(leftover);
    }

    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(written) = self.expect_continue {
            if written == CONTINUE.len() {
                self.expect_continue = None;
                break;
            }
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(&CONTINUE[written..]) {
                Ok(n) => self.expect_continue = Some(written + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more from the socket into `buf`, at most `limit` bytes.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<(), BodyError>> {
        self.buf.reserve(limit.min(READ_CHUNK));
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            let mut room = (&mut self.buf).limit(limit);
            let room_len = room.remaining_mut();
            match self.stream.try_read_buf(&mut room) {
                Ok(0) => return Poll::Ready(Err(BodyError::Eof)),
                Ok(n) => {
                    if n < room_len {
                        crate::server::drained(&self.stream);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Runs the chunked framing over the buffered bytes: a data piece, `None` when more input is
    /// needed (or the body ended), or a framing error.
    fn decode_chunked(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            if let State::Data(remaining) = self.state {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = (remaining.min(self.buf.len() as u64)) as usize;
                let left = remaining - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            if self.state == State::Done || self.buf.is_empty() {
                return Ok(None);
            }
            let byte = self.buf[0];
            self.buf.advance(1);
            self.state = step(self.state, byte)?;
            if self.state == State::Done {
                self.finish();
                return Ok(None);
            }
        }
    }
}

/// One byte of chunked framing outside chunk data (RFC 9112 §7.1), strictly: CRLF only, no
/// blanks before the size, at most 16 hex digits, bounded extensions and trailers.
fn step(state: State, byte: u8) -> Result<State, BodyError> {
    let bad = |what| Err(BodyError::Chunk(what));
    Ok(match state {
        State::Size { value, digits } => match (byte as char).to_digit(16) {
            Some(d) if digits < 16 => State::Size {
                value: value << 4 | d as u64,
                digits: digits + 1,
            },
            Some(_) => return bad("chunk size too long"),
            None if digits == 0 => return bad("chunk size is not hex"),
            None => match byte {
                b'\r' => State::SizeLf { value },
                b';' => State::Extension { value, len: 0 },
                b' ' | b'\t' => State::SizeBlank { value },
                b'\n' => return bad("bare LF after the chunk size"),
                _ => return bad("chunk size is not hex"),
            },
        },
        State::SizeBlank { value } => match byte {
            b' ' | b'\t' => State::SizeBlank { value },
            b';' => State::Extension { value, len: 0 },
            _ => return bad("junk after the chunk size"),
        },
        State::Extension { value, len } => match byte {
            b'\r' => State::SizeLf { value },
            b'\n' => return bad("bare LF in a chunk extension"),
            _ if len >= MAX_CHUNK_EXTENSION => return bad("chunk extension too long"),
            b'\t' | b' '..=b'~' | 0x80..=0xff => State::Extension {
                value,
                len: len + 1,
            },
            _ => return bad("control character in a chunk extension"),
        },
        State::SizeLf { value } => match byte {
            b'\n' if value == 0 => State::Trailer {
                at_line_start: true,
                len: 0,
            },
            b'\n' => State::Data(value),
            _ => return bad("CR without LF after the chunk size"),
        },
        State::DataCr => match byte {
            b'\r' => State::DataLf,
            _ => return bad("chunk data longer than its size, or no CRLF after it"),
        },
        State::DataLf => match byte {
            b'\n' => State::Size {
                value: 0,
                digits: 0,
            },
            _ => return bad("CR without LF after chunk data"),
        },
        State::Trailer { at_line_start, len } => match byte {
            b'\r' if at_line_start => State::FinalLf,
            b'\r' => State::TrailerLf { len },
            b'\n' => return bad("bare LF in the trailer section"),
            _ if len >= MAX_TRAILERS => return bad("trailer section too long"),
            _ => State::Trailer {
                at_line_start: false,
                len: len + 1,
            },
        },
        State::TrailerLf { len } => match byte {
            b'\n' => State::Trailer {
                at_line_start: true,
                len,
            },
            _ => return bad("CR without LF in the trailer section"),
        },
        State::FinalLf => match byte {
            b'\n' => State::Done,
            _ => return bad("CR without LF at the body's end"),
        },
        State::Length(_) | State::Data(_) | State::Rest | State::Done => {
            unreachable!("not framing bytes")
        }
    })
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.state == State::Done {
                return Poll::Ready(None);
            }
            if this.link.abandoned.load(Ordering::Relaxed) {
                return Poll::Ready(Some(Err(BodyError::Abandoned)));
            }
            if let Err(e) = ready!(this.poll_continue(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            let need = match this.state {
                State::Length(remaining) => {
                    if !this.buf.is_empty() {
                        let n = remaining.min(this.buf.len() as u64) as usize;
                        let data = this.buf.split_to(n).freeze();
                        if remaining == n as u64 {
                            this.finish();
                        } else {
                            this.state = State::Length(remaining - n as u64);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // Never read past the body: what follows belongs to the next request.
                    remaining.min(READ_CHUNK as u64) as usize
                }
                State::Rest => {
                    if !this.buf.is_empty() {
                        let data = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(this.poll_fill(cx, READ_CHUNK)) {
                        Ok(()) => continue,
                        Err(BodyError::Eof) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                _ => match this.decode_chunked() {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if this.state == State::Done => return Poll::Ready(None),
                    Ok(None) => READ_CHUNK,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            };
            if let Err(e) = ready!(this.poll_fill(cx, need)) {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the chunked framing over `input` in one piece: the data, or the first error.
    fn decode(input: &[u8]) -> Result<(Vec<u8>, bool), &'static str> {
        let mut state = State::Size {
            value: 0,
            digits: 0,
        };
        let mut data = Vec::new();
        let mut i = 0;
        while i < input.len() && state != State::Done {
            if let State::Data(remaining) = state {
                let n = (remaining as usize).min(input.len() - i);
                data.extend_from_slice(&input[i..i + n]);
                i += n;
                let left = remaining - n as u64;
                state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                continue;
            }
            state = match step(state, input[i]) {
                Ok(next) => next,
                Err(BodyError::Chunk(what)) => return Err(what),
                Err(_) => unreachable!(),
            };
            i += 1;
        }
        Ok((data, state == State::Done))
    }

    #[test]
    fn well_formed_chunks_with_extensions_and_trailers() {
        assert_eq!(
            decode(b"4\r\nWiki\r\n5;name=v\r\npedia\r\nD \t;x\r\n in\r\n\r\nchunks\r\n0\r\nX-T: 1\r\n\r\n"),
            Ok((b"Wikipedia in\r\n\r\nchunks".to_vec(), true))
        );
        assert_eq!(decode(b"0\r\n\r\n"), Ok((vec![], true)));
        assert_eq!(decode(b"a\r\n0123"), Ok((b"0123".to_vec(), false)));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for (input, why) in [
            (&b"zz\r\n"[..], "chunk size is not hex"),
            (b"\r\n", "chunk size is not hex"),
            (b" 4\r\n", "chunk size is not hex"),
            (b"4\nWiki\r\n", "bare LF after the chunk size"),
            (
                b"4\r\nWiki\n0\r\n\r\n",
                "chunk data longer than its size, or no CRLF after it",
            ),
            (
                b"4\r\nWikipedia\r\n",
                "chunk data longer than its size, or no CRLF after it",
            ),
            (b"4\r\nWiki\r\r", "CR without LF after chunk data"),
            (b"4 x\r\n", "junk after the chunk size"),
            (b"11111111111111111\r\n", "chunk size too long"),
            (b"0\r\n\n", "bare LF in the trailer section"),
            (b"0\r\nX: 1\n\r\n", "bare LF in the trailer section"),
            (b"1;\x01\r\n", "control character in a chunk extension"),
        ] {
            assert_eq!(
                decode(input),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let long_extension = format!("1;{}\r\n", "a".repeat(MAX_CHUNK_EXTENSION + 1));
        assert_eq!(
            decode(long_extension.as_bytes()),
            Err("chunk extension too long")
        );
        let long_trailer = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
        assert_eq!(
            decode(long_trailer.as_bytes()),
            Err("trailer section too long")
        );
    }
}
