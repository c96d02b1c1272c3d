//! Choosing a backend for a request: session stickiness first, then the pool's balancing method.
//! Smooth weighted round-robin follows nginx; least-connections weighs in-flight counts.

use std::sync::Arc;

use http::HeaderMap;
use nonstop_config::{AdminState, Balance, Sticky};

use crate::state::{Backend, Members};

/// The session route a request carries, if its pool is sticky.
pub fn session_route<'a>(
    sticky: &Sticky,
    headers: &'a HeaderMap,
    path: &'a str,
) -> Option<&'a str> {
    match sticky {
        Sticky::Jsessionid { cookie } => cookie_value(headers, cookie)
            .or_else(|| path_session_id(path))
            .and_then(|session| session.rsplit_once('.').map(|(_, route)| route))
            .filter(|route| !route.is_empty()),
        Sticky::Cookie { name } => cookie_value(headers, name).filter(|route| !route.is_empty()),
    }
}

pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// `/app/page;jsessionid=ABC.node1?x=1` → `ABC.node1`, as Tomcat writes URL-rewritten sessions.
fn path_session_id(path: &str) -> Option<&str> {
    let start = path.find(";jsessionid=")? + ";jsessionid=".len();
    let rest = &path[start..];
    let end = rest.find(['?', ';', '/', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Picks a backend for a request. `skip` lists backends already tried for this request.
pub fn pick(
    members: &Members,
    balance: Balance,
    route: Option<&str>,
    skip: &[usize],
) -> Option<Arc<Backend>> {
    pick_where(members, balance, route, skip, |_| true)
}

/// [`pick`] among the backends `allowed` accepts (a preview's `never` keeps off its members).
pub fn pick_where(
    members: &Members,
    balance: Balance,
    route: Option<&str>,
    skip: &[usize],
    allowed: impl Fn(&Backend) -> bool,
) -> Option<Arc<Backend>> {
    let tried = |b: &Arc<Backend>| skip.contains(&(Arc::as_ptr(b) as usize)) || !allowed(b);
    if let Some(route) = route
        && let Some(bound) = members
            .backends
            .iter()
            .find(|b| b.route == route && b.takes_sticky() && !tried(b))
    {
        return Some(bound.clone());
    }
    let eligible = |b: &Arc<Backend>| b.takes_new() && !tried(b);
    let chosen = match balance {
        Balance::RoundRobin => smooth_weighted(members, eligible),
        Balance::LeastConn => least_connections(members, eligible),
    };
    // Last resorts, in order, when no active backend can take the request: an active one set
    // aside by passive ejection only, then a draining one (say, the old slot of a blue-green
    // deploy whose new instance just died). Serving from them beats refusing the request.
    chosen
        .or_else(|| {
            smooth_weighted(members, |b| {
                b.state() == AdminState::Active && b.healthy() && !tried(b)
            })
        })
        .or_else(|| {
            smooth_weighted(members, |b| {
                b.state() == AdminState::Draining && b.healthy() && !b.ejected() && !tried(b)
            })
        })
}

pub(crate) fn smooth_weighted(
    members: &Members,
    eligible: impl Fn(&Arc<Backend>) -> bool,
) -> Option<Arc<Backend>> {
    let mut current = members.current.lock().unwrap_or_else(|e| e.into_inner());
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, backend) in members.backends.iter().enumerate() {
        if !eligible(backend) {
            continue;
        }
        let weight = backend.weight() as i64;
        current[i] += weight;
        total += weight;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    current[best] -= total;
    Some(members.backends[best].clone())
}

fn least_connections(
    members: &Members,
    eligible: impl Fn(&Arc<Backend>) -> bool,
) -> Option<Arc<Backend>> {
    // Compare in_flight/weight without division: a.in_flight * b.weight < b.in_flight * a.weight.
    let load = |b: &Arc<Backend>| (b.in_flight().max(0) as u128, b.weight() as u128);
    let mut best: Option<&Arc<Backend>> = None;
    let mut ties = 0u32;
    for backend in members.backends.iter().filter(|b| eligible(b)) {
        match best {
            None => best = Some(backend),
            Some(current) => {
                let (a_load, a_weight) = load(backend);
                let (b_load, b_weight) = load(current);
                let (lhs, rhs) = ((a_load + 1) * b_weight, (b_load + 1) * a_weight);
                if lhs < rhs {
                    best = Some(backend);
                    ties = 0;
                } else if lhs == rhs {
                    // Spread ties instead of always favouring the first backend.
                    ties += 1;
                    if fastrand_below(ties + 1) == 0 {
                        best = Some(backend);
                    }
                }
            }
        }
    }
    best.cloned()
}

/// A tiny per-thread xorshift: tie-breaking needs spread, not cryptographic randomness.
fn fastrand_below(n: u32) -> u32 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64));
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as u32
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::state::BackendSpec;

    fn members(specs: &[(&str, u32)]) -> Members {
        let metrics = Metrics::new();
        Members::new(
            specs
                .iter()
                .enumerate()
                .map(|(i, (name, weight))| {
                    let spec = BackendSpec {
                        name: name.to_string(),
                        addr: format!("127.0.0.1:{}", 9000 + i),
                        weight: Some(*weight),
                        route: None,
                        state: None,
                    };
                    Backend::new(&spec, metrics.backend("p", name)).unwrap()
                })
                .collect(),
        )
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_by_weight() {
        let m = members(&[("a", 5), ("b", 1), ("c", 1)]);
        let order: String = (0..7)
            .map(|_| {
                pick(&m, Balance::RoundRobin, None, &[])
                    .unwrap()
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(order, "aabacaa");
    }

    #[test]
    fn sticky_route_reaches_draining_but_not_disabled_backend() {
        let m = members(&[("a", 1), ("b", 1)]);
        m.backends[1].set_state(AdminState::Draining);
        for _ in 0..4 {
            assert_eq!(
                pick(&m, Balance::RoundRobin, Some("b"), &[]).unwrap().name,
                "b"
            );
            assert_eq!(pick(&m, Balance::RoundRobin, None, &[]).unwrap().name, "a");
        }
        m.backends[1].set_state(AdminState::Disabled);
        assert_eq!(
            pick(&m, Balance::RoundRobin, Some("b"), &[]).unwrap().name,
            "a"
        );
    }

    #[test]
    fn draining_backend_is_the_last_resort_when_no_active_one_is_left() {
        let m = members(&[("new", 1), ("old", 1)]);
        m.backends[1].set_state(AdminState::Draining);
        assert_eq!(
            pick(&m, Balance::RoundRobin, None, &[]).unwrap().name,
            "new"
        );
        let new_died = [Arc::as_ptr(&m.backends[0]) as usize];
        assert_eq!(
            pick(&m, Balance::RoundRobin, None, &new_died).unwrap().name,
            "old"
        );
        m.backends[0].set_healthy(false);
        assert_eq!(
            pick(&m, Balance::RoundRobin, None, &[]).unwrap().name,
            "old"
        );
        m.backends[1].set_state(AdminState::Disabled);
        assert!(
            pick(&m, Balance::RoundRobin, None, &[]).is_none(),
            "disabled never takes traffic"
        );
    }

    #[test]
    fn least_connections_prefers_idle_backend() {
        let m = members(&[("a", 1), ("b", 1)]);
        let _busy = m.backends[0].begin();
        for _ in 0..10 {
            assert_eq!(pick(&m, Balance::LeastConn, None, &[]).unwrap().name, "b");
        }
    }

    #[test]
    fn session_routes_come_from_cookie_or_path() {
        let sticky = Sticky::Jsessionid {
            cookie: "JSESSIONID".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            "a=1; JSESSIONID=ABC123.tomcat2; b=2".parse().unwrap(),
        );
        assert_eq!(session_route(&sticky, &headers, "/"), Some("tomcat2"));
        let empty = HeaderMap::new();
        assert_eq!(
            session_route(&sticky, &empty, "/app;jsessionid=XYZ.tomcat1?q=1"),
            Some("tomcat1")
        );
        assert_eq!(session_route(&sticky, &empty, "/app"), None);
        let mut no_route = HeaderMap::new();
        no_route.insert("cookie", "JSESSIONID=ABC123".parse().unwrap());
        assert_eq!(session_route(&sticky, &no_route, "/"), None);
    }
}
