//! The host a request names (Host, or `:authority` in HTTP/2), checked without allocating.
//! One Host header only (RFC 9112 §3.2): two are refused, since a backend might read the other.

use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Version};

use crate::forward::Refusal;

/// The host a request was sent to, as the client wrote it (Host, or `:authority` in HTTP/2).
pub struct RequestHost {
    pub value: HeaderValue,
    host_len: usize,
}

impl RequestHost {
    /// The host without its port.
    pub fn host(&self) -> &str {
        &self.value.to_str().unwrap_or("")[..self.host_len]
    }
}

pub fn request_host<B>(req: &Request<B>) -> Result<Option<RequestHost>, Refusal> {
    let bad = || {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "the Host header is not a valid host[:port]",
        )
    };
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the request has more than one Host header (RFC 9112 §3.2)",
        ));
    }
    let value = match first {
        Some(value) => value.clone(),
        None if req.version() == Version::HTTP_2 => match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?,
            None => return Ok(None),
        },
        None if req.version() == Version::HTTP_11 => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "an HTTP/1.1 request needs a Host header",
            ));
        }
        None => return Ok(None),
    };
    let host_len = value.to_str().ok().and_then(host_length).ok_or_else(bad)?;
    Ok(Some(RequestHost { value, host_len }))
}

/// Checks `host[:port]` (RFC 9110 §7.2) without allocating; returns the length of the host part.
fn host_length(authority: &str) -> Option<usize> {
    if authority.is_empty() || authority.len() > 255 {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let inside = &authority[1..end - 1];
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let rest = &authority[end..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(rest.strip_prefix(':')?)
        };
        (&authority[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (host_ok && port_ok).then_some(host.len())
}

#[cfg(test)]
mod tests {
    use super::host_length;

    #[test]
    fn host_headers_are_checked_without_allocating() {
        assert_eq!(host_length("shop.example.com"), Some(16));
        assert_eq!(host_length("shop.example.com:8080"), Some(16));
        assert_eq!(host_length("[::1]:8080"), Some(5));
        assert_eq!(host_length("[::1]"), Some(5));
        for bad in [
            "",
            "bad host",
            "a:b",
            "a:",
            "a/b",
            "[::1",
            "[zz]:1",
            "a:123456",
            "\u{e9}.com",
        ] {
            assert_eq!(host_length(bad), None, "{bad:?}");
        }
    }
}
