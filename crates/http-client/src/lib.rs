//! A one-shot HTTP/1.1 client for control endpoints (jkstatus, Tomcat's own port, probes through
//! a balancer): one connection per request so every probe is a fresh pick by the balancer.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::Request as HyperRequest;
use hyper_util::rt::TokioIo;
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
    #[error("bad request header {0}")]
    BadHeader(String),
    #[error("cannot reach {addr}: {message}")]
    Io { addr: String, message: String },
    #[error("cannot read {path}: {message}")]
    File { path: String, message: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
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

    /// `host:port`, with brackets around an IPv6 host.
    pub fn authority(&self) -> String {
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

/// A request: method, extra headers and an optional body.
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

/// Sends `request` on a new connection and reads the whole answer, all within `timeout`.
pub async fn send(
    url: &Url,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let body = Full::new(Bytes::copy_from_slice(request.body));
    within(
        url,
        timeout,
        exchange(url, request.method, &request.headers, body),
    )
    .await
}

/// Sends `request` on `io`, a connection already open to `url`'s host (a TLS stream, say), and
/// reads the whole answer; the caller bounds the time.
pub async fn send_on<IO>(io: IO, url: &Url, request: &Request<'_>) -> Result<Response, HttpError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let body = Full::new(Bytes::copy_from_slice(request.body));
    exchange_on(
        async { Ok(io) },
        url,
        request.method,
        &request.headers,
        body,
    )
    .await
}

/// Sends the file at `path` as the body of a `method` request (e.g. a WAR to Tomcat's manager
/// with `PUT`), streamed in 64 KiB chunks with its length as `Content-Length`; reads the whole
/// answer. The whole exchange, upload included, must fit in `timeout`.
pub async fn send_file(
    url: &Url,
    method: &str,
    headers: &[(&str, String)],
    path: &std::path::Path,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let file_error = |e: std::io::Error| HttpError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = tokio::fs::File::open(path).await.map_err(file_error)?;
    let length = file.metadata().await.map_err(file_error)?.len();
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 64 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(chunk))), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut headers = headers.to_vec();
    headers.push(("content-length", length.to_string()));
    within(
        url,
        timeout,
        exchange(url, method, &headers, StreamBody::new(chunks)),
    )
    .await
}

async fn within(
    url: &Url,
    timeout: Duration,
    exchange: impl std::future::Future<Output = Result<Response, HttpError>>,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout {
            addr: url.authority(),
            timeout,
        }),
    }
}

async fn exchange<B>(
    url: &Url,
    method: &str,
    headers: &[(&str, String)],
    body: B,
) -> Result<Response, HttpError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = url.authority();
    let connect = async {
        TcpStream::connect(&addr).await.map_err(|e| HttpError::Io {
            addr: addr.clone(),
            message: e.to_string(),
        })
    };
    exchange_on(connect, url, method, headers, body).await
}

/// Builds the request (refusing a bad header before any connection), then sends it on the
/// connection `connect` opens.
async fn exchange_on<IO, B>(
    connect: impl std::future::Future<Output = Result<IO, HttpError>>,
    url: &Url,
    method: &str,
    headers: &[(&str, String)],
    body: B,
) -> Result<Response, HttpError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = url.authority();
    let io = |e: &dyn std::fmt::Display| HttpError::Io {
        addr: addr.clone(),
        message: e.to_string(),
    };
    let mut builder = HyperRequest::builder()
        .method(method)
        .uri(&url.path)
        .header(hyper::header::HOST, &addr)
        .header(hyper::header::USER_AGENT, "nonstop");
    for (name, value) in headers {
        // hyper refuses line breaks too; checked here to say which header was wrong.
        if value.contains(['\r', '\n']) {
            return Err(HttpError::BadHeader(format!("{name} holds a line break")));
        }
        builder = builder.header(*name, value.as_str());
    }
    let hyper_request = builder
        .body(body)
        .map_err(|e| HttpError::BadHeader(e.to_string()))?;
    let stream = connect.await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io(&e))?;
    let driver = tokio::spawn(connection);
    let answer = sender.send_request(hyper_request).await.map_err(|e| io(&e));
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    };
    let status = answer.status().as_u16();
    let headers = answer
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| io(&e))?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The value of a Basic `Authorization` header.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
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
        assert!(Url::parse("http://h/a b").is_err());
    }

    #[test]
    fn basic_auth_is_rfc7617() {
        assert_eq!(
            basic_auth("nonstop", "s3cret"),
            "Basic bm9uc3RvcDpzM2NyZXQ="
        );
    }

    #[tokio::test]
    async fn reads_a_chunked_answer_with_repeated_headers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nset-cookie: c=d\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n")
                .await
                .unwrap();
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        let r = get(&url, vec![], Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header_values("Set-Cookie").collect::<Vec<_>>(),
            ["a=b", "c=d"]
        );
        assert_eq!(r.body, "body");
        let bad = get(&url, vec![("X", "a\r\nb".into())], Duration::from_secs(1)).await;
        assert!(matches!(bad, Err(HttpError::BadHeader(_))));
    }
}
