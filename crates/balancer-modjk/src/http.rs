//! A minimal HTTP/1.0 client for loopback control endpoints (jkstatus, probes through Apache):
//! one connection per request, close-delimited body, so no chunked decoding is needed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed `http://host:port/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "`{0}` is not an http:// URL with a host (https is not supported for loopback endpoints)"
    )]
    BadUrl(String),
    #[error("cannot reach {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} sent a malformed HTTP response")]
    Malformed { addr: String },
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::BadUrl(url.to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| bad())?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.contains(['\r', '\n', ' ']) {
            return Err(bad());
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// True when the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// Values of every header named `name` (case-insensitive).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request: method, extra header lines and an optional body.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: &'a [u8],
}

/// `GET url` with extra headers.
pub async fn get(
    url: &Url,
    headers: Vec<(&str, String)>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let request = Request {
        method: "GET",
        headers,
        body: &[],
    };
    send(url, &request, timeout).await
}

pub async fn send(
    url: &Url,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let addr = url.addr();
    match tokio::time::timeout(timeout, exchange(url, &addr, request)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout { addr, timeout }),
    }
}

async fn exchange(url: &Url, addr: &str, request: &Request<'_>) -> Result<Response, HttpError> {
    let io = |source| HttpError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: nonstop\r\n",
        request.method, url.path, addr
    );
    for (name, value) in &request.headers {
        // Header values come from config or cookies we were sent; refuse to forge extra lines.
        if value.contains(['\r', '\n']) {
            return Err(HttpError::BadUrl(format!(
                "header {name} holds a line break"
            )));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !request.body.is_empty() || request.method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(request.body).await.map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(io)?;
    parse_response(&raw).ok_or_else(|| HttpError::Malformed {
        addr: addr.to_string(),
    })
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    Some(Response {
        status,
        headers,
        body,
    })
}

/// RFC 4648 base64, for a Basic `Authorization` header.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_loopback() {
        let u = Url::parse("http://127.0.0.1:8080/jkstatus?cmd=list").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/jkstatus?cmd=list")
        );
        assert!(u.is_loopback());
        assert!(!Url::parse("http://10.0.0.1/jk").unwrap().is_loopback());
        assert!(Url::parse("http://[::1]:81/").unwrap().is_loopback());
        assert!(Url::parse("https://127.0.0.1/").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b"nonstop:s3cret"), "bm9uc3RvcDpzM2NyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn parses_a_response() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nset-cookie: c=d\r\n\r\nbody")
                .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header_values("Set-Cookie").collect::<Vec<_>>(),
            ["a=b", "c=d"]
        );
        assert_eq!(r.body, "body");
    }
}
