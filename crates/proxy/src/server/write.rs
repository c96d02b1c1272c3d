//! A response written to the client's socket: the head in one buffer, the body as it comes,
//! delimited by its length, by chunks, or (HTTP/1.0 without a length) by closing.

use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header;
use http::{Method, Response, StatusCode, Version};
use http_body::Body;
use tokio::net::TcpStream;

use crate::forward::ProxyBody;

/// Body pieces up to this size are copied next to the head or chunk size, so one write sends both.
const COALESCE: usize = 16 * 1024;

/// How the client's request asked for its answer.
pub struct Asked {
    pub method: Method,
    pub version: Version,
    /// The connection stays open after this response (the client wants it and nothing prevents it).
    pub keep_alive: bool,
}

/// How a response ended on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Whole and self-delimited: the connection can carry another request.
    Reusable,
    /// Whole, but delimited by closing, or the client asked to close.
    Close,
}

/// Writes `bytes` whole, waiting at most `stall` each time the socket has no room.
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8], stall: Duration) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(stall, stream.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "the client reads nothing")
                    })??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An answer the connection gives itself before any request reached the proxy's request path.
pub async fn write_rejection(
    stream: &TcpStream,
    status: StatusCode,
    reason: &str,
    stall: Duration,
) {
    let text = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut out = Vec::with_capacity(160 + text.len());
    status_line(&mut out, status);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n");
    date(&mut out);
    length(&mut out, text.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    let _ = write_all(stream, &out, stall).await;
}

/// Writes a response: its head, then its body delimited as the request and the response allow.
/// An error means the connection must close (the client went away, or the body broke off).
pub async fn write_response(
    stream: &TcpStream,
    response: Response<ProxyBody>,
    asked: &Asked,
    stall: Duration,
) -> io::Result<Written> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = asked.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(512);
    status_line(&mut out, status);
    // The framing is the proxy's to decide, not the backend's: its Content-Length is noted (a
    // HEAD or 304 answer keeps it), its Transfer-Encoding dropped.
    let mut declared = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            declared = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        date(&mut out);
    }
    enum Delimit {
        Length(u64),
        Chunked,
        Close,
    }
    let delimit = match (declared, body.size_hint().exact()) {
        (_, Some(n)) if !bodiless => Delimit::Length(n),
        (Some(n), _) => Delimit::Length(n),
        (None, _) if asked.version == Version::HTTP_11 => Delimit::Chunked,
        (None, _) => Delimit::Close,
    };
    let keep_alive = asked.keep_alive && (bodiless || !matches!(delimit, Delimit::Close));
    if bodiless {
        // A HEAD or 304 answer may say how long the body would be; 1xx and 204 never do.
        if let Some(n) = declared
            && status != StatusCode::NO_CONTENT
            && !status.is_informational()
        {
            length(&mut out, n);
        }
    } else {
        match delimit {
            Delimit::Length(n) => length(&mut out, n),
            Delimit::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Delimit::Close => {}
        }
    }
    // A 101 carries the backend's own `connection: upgrade`.
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if asked.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");

    let mut body = pin!(body);
    if bodiless {
        write_all(stream, &out, stall).await?;
        return Ok(if keep_alive {
            Written::Reusable
        } else {
            Written::Close
        });
    }
    let chunked = matches!(delimit, Delimit::Chunked);
    let mut left = match delimit {
        Delimit::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // Take what the body has ready without waiting; flush before waiting for more.
        let polled = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                write_all(stream, &out, stall).await?;
                out.clear();
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data: Bytes = match frame {
            None => break,
            Some(Err(_)) => return Err(io::Error::other("the response body broke off")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        let data = match &mut left {
            Some(left) => {
                // Never more than the length the head declared.
                let n = (data.len() as u64).min(*left) as usize;
                *left -= n as u64;
                data.slice(..n)
            }
            None => data,
        };
        if chunked {
            chunk_size(&mut out, data.len());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            write_all(stream, &out, stall).await?;
            out.clear();
            write_all(stream, &data, stall).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if left == Some(0) {
            break;
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_all(stream, &out, stall).await?;
    if left.is_some_and(|left| left > 0) {
        return Err(io::Error::other(
            "the response body ended before its length",
        ));
    }
    Ok(if keep_alive {
        Written::Reusable
    } else {
        Written::Close
    })
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn chunk_size(out: &mut Vec<u8>, n: usize) {
    use std::io::Write;
    let _ = write!(out, "{n:x}\r\n");
}

thread_local! {
    /// `date: …\r\n` for the current second, rendered once a second per thread.
    static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            cached.0 = second;
            cached.1.clear();
            cached.1.extend_from_slice(b"date: ");
            cached
                .1
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            cached.1.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&cached.1);
    });
}
