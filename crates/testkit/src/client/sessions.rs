//! What a load's answers say about sessions: every count checked per session, the sessions that
//! ended (resets) and the route changes a user saw, kept (replicated) or reset.

use super::{LoadReport, Sample};

/// A session change seen by one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub user: usize,
    pub seq: u64,
    pub from_route: Option<String>,
    pub to_route: Option<String>,
    /// The count the old session had reached.
    pub from_count: Option<u64>,
}

/// A user's answers moving from one route to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMove {
    pub user: usize,
    /// The first request answered on the new route.
    pub seq: u64,
    pub from_route: Option<String>,
    pub to_route: Option<String>,
    /// The count on the old route.
    pub from_count: Option<u64>,
    /// The session went on counting on the new route (replicated to it), rather than starting
    /// again at 1.
    pub kept: bool,
}

/// The session id without its `.route` suffix: Tomcat's JvmRouteBinderValve gives a session that
/// failed over the new member's route and keeps this part.
fn session_base(s: &Sample) -> Option<&str> {
    let id = s.session.as_deref()?;
    Some(id.rsplit_once('.').map_or(id, |(base, _)| base))
}

/// `s` goes on `p`'s session on another route: same id before the route, count one up.
fn rebound(p: &Sample, s: &Sample) -> bool {
    p.session != s.session
        && p.route != s.route
        && session_base(p).is_some()
        && session_base(p) == session_base(s)
        && s.count.is_some()
        && s.count == p.count.map(|c| c + 1)
}

impl LoadReport {
    /// Checks every user's ok answers: within one session the count goes up by exactly 1 and
    /// the route stays the session id's route; a new session starts at 1. A session that moved
    /// to another route under the same id (a replicated session rebound to the new route) is the
    /// same session. Returns the session changes, or every violation.
    pub fn check_counts(&self) -> Result<Vec<Reset>, Vec<String>> {
        let mut resets = Vec::new();
        let mut bad = Vec::new();
        for (user, samples) in self.users.iter().enumerate() {
            let mut prev: Option<&Sample> = None;
            for s in samples.iter().filter(|s| s.ok) {
                let here = format!("user {user} request {}", s.seq);
                if s.count.is_none() || s.route.is_none() || s.session.is_none() {
                    bad.push(format!(
                        "{here}: no count/route/session in the answer: {s:?}"
                    ));
                    continue;
                }
                if s.cookie_route() != s.route.as_deref() {
                    bad.push(format!(
                        "{here}: session {:?} does not carry the route {:?} that answered",
                        s.session, s.route
                    ));
                }
                match prev {
                    Some(p) if p.session == s.session => {
                        if s.count != p.count.map(|c| c + 1) {
                            bad.push(format!(
                                "{here}: count {:?} after {:?} in the same session on {:?}",
                                s.count, p.count, s.route
                            ));
                        }
                    }
                    Some(p) if rebound(p, s) => {}
                    _ => {
                        if s.count != Some(1) {
                            bad.push(format!(
                                "{here}: a new session {:?} on {:?} starts at count {:?}",
                                s.session, s.route, s.count
                            ));
                        }
                        if let Some(p) = prev {
                            resets.push(Reset {
                                user,
                                seq: s.seq,
                                from_route: p.route.clone(),
                                to_route: s.route.clone(),
                                from_count: p.count,
                            });
                        }
                    }
                }
                prev = Some(s);
            }
        }
        if bad.is_empty() { Ok(resets) } else { Err(bad) }
    }

    /// Every change of route between a user's consecutive ok answers, and whether the session
    /// went on counting there.
    pub fn session_moves(&self) -> Vec<SessionMove> {
        let mut moves = Vec::new();
        for (user, samples) in self.users.iter().enumerate() {
            let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
            for pair in ok.windows(2) {
                let (p, s) = (pair[0], pair[1]);
                if p.route != s.route {
                    moves.push(SessionMove {
                        user,
                        seq: s.seq,
                        from_route: p.route.clone(),
                        to_route: s.route.clone(),
                        from_count: p.count,
                        kept: p.session == s.session || rebound(p, s),
                    });
                }
            }
        }
        moves
    }
}
