//! Per-request rules of a pool besides balancing: a targeted preview (a tester's header or
//! cookie picks the new release at any weight) and maintenance mode (503 for all but a few).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use nonstop_ports::{Maintenance, Preview};
use serde::{Deserialize, Serialize};

use crate::balance;
use crate::forward::ProxyBody;
use crate::state::{Backend, Members};
use nonstop_config::Balance;

/// What a pool holds besides its members; kept in the state file, so it survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

/// Which release a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Any,
    /// `always`: the preview members first, whatever their state or weight.
    New,
    /// `never`: anything but the preview members while one serves.
    Stable,
}

/// The header wins over the cookie; anything but `always`/`never` is no wish at all.
pub fn want(preview: &Preview, headers: &HeaderMap) -> Want {
    let word = headers
        .get(preview.header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| balance::cookie_value(headers, &preview.cookie));
    match word {
        Some(w) if w.eq_ignore_ascii_case("always") => Want::New,
        Some(w) if w.eq_ignore_ascii_case("never") => Want::Stable,
        _ => Want::Any,
    }
}

/// Picks a backend honouring the request's wish; a wish nobody can serve falls back to the
/// pool's usual choice, so a preview of a dead or unregistered member is never refused.
pub fn pick(
    members: &Members,
    balance: Balance,
    route: Option<&str>,
    skip: &[usize],
    preview: Option<&Preview>,
    want: Want,
) -> Option<Arc<Backend>> {
    let listed = |b: &Backend| preview.is_some_and(|p| p.nodes.iter().any(|n| n.0 == b.name));
    let tried = |b: &Arc<Backend>| skip.contains(&(Arc::as_ptr(b) as usize));
    match want {
        Want::New => balance::smooth_weighted(members, |b| {
            listed(b) && b.healthy() && !b.ejected() && !tried(b)
        })
        .or_else(|| balance::pick(members, balance, route, skip)),
        Want::Stable => balance::pick_where(members, balance, route, skip, |b| !listed(b))
            .or_else(|| balance::pick(members, balance, route, skip)),
        Want::Any => balance::pick(members, balance, route, skip),
    }
}

/// Whether maintenance mode turns this client away.
pub fn turned_away(maintenance: &Maintenance, peer: IpAddr) -> bool {
    !maintenance.allows(peer)
}

/// The 503 page: JSON for clients that ask for it, HTML otherwise.
pub fn maintenance_page(maintenance: &Maintenance, headers: &HeaderMap) -> Response<ProxyBody> {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json") || accept.contains("+json"));
    let (kind, body) = if json {
        let body = serde_json::json!({
            "error": "maintenance",
            "message": maintenance.message,
            "retry_after_s": maintenance.retry_after_s,
        });
        ("application/json", format!("{body}\n"))
    } else {
        let text = html_escape(&maintenance.message);
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Maintenance</title></head>\n\
                 <body><h1>Down for maintenance</h1><p>{text}</p></body></html>\n"
            ),
        )
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(
        header::RETRY_AFTER,
        HeaderValue::from(maintenance.retry_after_s),
    );
    response
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::state::BackendSpec;
    use nonstop_config::AdminState;
    use nonstop_ports::NodeName;

    fn members() -> Members {
        let metrics = Metrics::new();
        let backend = |name: &str, port: u16, state| {
            let spec = BackendSpec {
                name: name.into(),
                addr: format!("127.0.0.1:{port}"),
                weight: None,
                route: None,
                state: Some(state),
            };
            Backend::new(&spec, metrics.backend("p", name)).unwrap()
        };
        Members::new(vec![
            backend("blue", 9001, AdminState::Active),
            backend("green", 9002, AdminState::Disabled),
        ])
    }

    fn preview() -> Preview {
        Preview {
            nodes: vec![NodeName::from("green")],
            header: "X-Nonstop-Canary".into(),
            cookie: "nonstop-canary".into(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn header_then_cookie_decide_the_wish() {
        let p = preview();
        assert_eq!(
            want(&p, &headers(&[("x-nonstop-canary", "always")])),
            Want::New
        );
        assert_eq!(
            want(&p, &headers(&[("cookie", "a=1; nonstop-canary=never")])),
            Want::Stable
        );
        assert_eq!(
            want(
                &p,
                &headers(&[
                    ("x-nonstop-canary", "never"),
                    ("cookie", "nonstop-canary=always")
                ])
            ),
            Want::Stable
        );
        assert_eq!(
            want(&p, &headers(&[("x-nonstop-canary", "maybe")])),
            Want::Any
        );
        assert_eq!(want(&p, &HeaderMap::new()), Want::Any);
    }

    #[test]
    fn preview_reaches_a_disabled_member_and_falls_back_when_it_is_down() {
        let m = members();
        let p = preview();
        let pick_name = |want| {
            pick(&m, Balance::RoundRobin, None, &[], Some(&p), want)
                .unwrap()
                .name
                .clone()
        };
        for _ in 0..4 {
            assert_eq!(pick_name(Want::New), "green");
            assert_eq!(pick_name(Want::Any), "blue");
            assert_eq!(pick_name(Want::Stable), "blue");
        }
        m.backends[1].set_healthy(false);
        assert_eq!(
            pick_name(Want::New),
            "blue",
            "a down preview member falls back"
        );
        m.backends[1].set_healthy(true);
        let green_failed = [Arc::as_ptr(&m.backends[1]) as usize];
        let retried = pick(
            &m,
            Balance::RoundRobin,
            None,
            &green_failed,
            Some(&p),
            Want::New,
        );
        assert_eq!(
            retried.unwrap().name,
            "blue",
            "a refused preview retries on stable"
        );
    }

    #[test]
    fn never_stays_off_an_active_preview_member_while_stable_serves() {
        let m = members();
        m.backends[1].set_state(AdminState::Active);
        let p = preview();
        for _ in 0..6 {
            let b = pick(&m, Balance::RoundRobin, None, &[], Some(&p), Want::Stable).unwrap();
            assert_eq!(b.name, "blue");
        }
        m.backends[0].set_state(AdminState::Disabled);
        let b = pick(&m, Balance::RoundRobin, None, &[], Some(&p), Want::Stable).unwrap();
        assert_eq!(
            b.name, "green",
            "with no stable member left, never is served anyway"
        );
    }

    #[test]
    fn maintenance_page_follows_accept_and_escapes() {
        let m = Maintenance {
            message: "back at <5pm> & \"soon\"".into(),
            allow: vec![nonstop_ports::edge::parse_allow("127.0.0.2").unwrap()],
            retry_after_s: 90,
        };
        assert!(turned_away(&m, "127.0.0.1".parse().unwrap()));
        assert!(!turned_away(&m, "127.0.0.2".parse().unwrap()));
        let html = maintenance_page(&m, &HeaderMap::new());
        assert_eq!(html.status(), 503);
        assert_eq!(html.headers()["retry-after"], "90");
        assert!(
            html.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let json = maintenance_page(&m, &headers(&[("accept", "application/json")]));
        assert_eq!(json.headers()["content-type"], "application/json");
        let body = |r: Response<ProxyBody>| match r.into_body() {
            Either::Right(full) => {
                let mut full = full;
                use http_body::Body;
                let frame = std::pin::Pin::new(&mut full)
                    .poll_frame(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                match frame {
                    std::task::Poll::Ready(Some(Ok(f))) => {
                        String::from_utf8(f.into_data().unwrap().to_vec()).unwrap()
                    }
                    _ => String::new(),
                }
            }
            Either::Left(_) => String::new(),
        };
        assert!(body(html).contains("back at &lt;5pm&gt; &amp; &quot;soon&quot;"));
        let json: serde_json::Value = serde_json::from_str(&body(json)).unwrap();
        assert_eq!(json["message"], "back at <5pm> & \"soon\"");
        assert_eq!(json["retry_after_s"], 90);
    }
}
