//! Request and response headers the proxy rewrites: hop-by-hop ones removed (RFC 9110 §7.6.1),
//! `X-Forwarded-*` and `X-Request-Id` added; written without the formatter, as this runs per request.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in Connection and the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass of cheap name comparisons first: most messages carry none of these, and each
    // `remove` hashes its name.
    let (mut connection, mut fixed) = (false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if is_fixed_hop_by_hop(name) {
            fixed = true;
        }
    }
    if connection {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    if fixed {
        for name in [
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
            &header::TE,
            &header::TRAILER,
            &header::TRANSFER_ENCODING,
            &header::PROXY_AUTHORIZATION,
        ] {
            headers.remove(name);
        }
        if !keep_upgrade {
            headers.remove(header::UPGRADE);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHORIZATION
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// `ip` as text in `buf`, without the formatting machinery for the common IPv4 case.
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + (octet / 10) % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            &buf[..len]
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{v6}");
            let len = cursor.position() as usize;
            &buf[..len]
        }
    }
}

pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    upgrade: bool,
    peer: SocketAddr,
    host: Option<&HeaderValue>,
    request_id: &HeaderValue,
) {
    strip_hop_by_hop(headers, upgrade);
    let mut buf = [0u8; 48];
    let client_ip = ip_text(peer.ip(), &mut buf);
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) => {
            let mut value = Vec::with_capacity(previous.len() + 2 + client_ip.len());
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(client_ip);
            HeaderValue::from_maybe_shared(Bytes::from(value))
        }
        None => HeaderValue::from_bytes(client_ip),
    };
    if let Ok(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(value) = host.cloned() {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, value.clone());
        }
        headers.insert(X_FORWARDED_HOST.clone(), value);
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_written_as_text() {
        let mut buf = [0u8; 48];
        for ip in ["127.0.0.1", "10.20.255.0", "0.0.0.9", "::1", "2001:db8::7"] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(parsed, &mut buf), ip.as_bytes());
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_others_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        let mut plain = HeaderMap::new();
        plain.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut plain, true);
        assert_eq!(plain.get(header::CONNECTION).unwrap(), "upgrade");
    }
}
