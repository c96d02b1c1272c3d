//! A sticky load client: virtual users, each with its own cookie jar (the session cookie), sending
//! GETs in a loop through the balancer until stopped or bounded by count and time. Every request
//! is recorded: ok (2xx) or failed (connection error, timeout or non-2xx), and the version, route,
//! session and count the test app answered.
//!
//! By default each request goes on a new connection (nonstop-http-client), so every request is a
//! fresh pick of an Apache child: a user's stickiness comes from its cookie alone. With
//! [`LoadOptions::keep_alive`] each user keeps one connection ([`crate::keepalive`]) and never
//! resends: what a failed request on it costs is what a user would see.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nonstop_http_client as http;
/// The URL type [`request_once`] takes.
pub use nonstop_http_client::Url;

mod sessions;
pub use sessions::{Reset, SessionMove};

/// One request of one user.
#[derive(Debug, Clone)]
pub struct Sample {
    pub user: usize,
    /// The user's request number, from 0.
    pub seq: u64,
    /// When it was sent, since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// 2xx.
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The session id the answer belongs to: a new `Set-Cookie`, else the cookie that was sent.
    pub session: Option<String>,
    /// Whether the answer set a new session cookie.
    pub new_session: bool,
    pub version: Option<String>,
    pub route: Option<String>,
    /// The node that answered: the sample app's `x-node` header or its body's `node=`.
    pub node: Option<String>,
    pub count: Option<u64>,
    /// Sent a second time because the server had closed the kept connection under it.
    pub resent: bool,
}

impl Sample {
    /// When the answer came, since the load started (what `wait_progress` counts by).
    pub fn answered_at(&self) -> Duration {
        self.at + self.latency
    }

    /// The route after the `.` of the session id (what mod_jk routes on).
    pub fn cookie_route(&self) -> Option<&str> {
        self.session
            .as_deref()
            .and_then(|s| s.rsplit_once('.'))
            .map(|(_, r)| r)
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Pause between a user's requests (pacing, not a wait for a condition).
    pub pause: Duration,
    /// Per-request timeout; exceeding it is a failure.
    pub timeout: Duration,
    /// Requests per user at most.
    pub max_requests_per_user: u64,
    /// Each user stops after this long.
    pub max_duration: Duration,
    pub session_cookie: String,
    /// Each user keeps one HTTP/1.1 connection open between requests; no request is resent.
    pub keep_alive: bool,
    /// With `keep_alive`: a GET that failed because the server closed the kept connection as it
    /// went out is sent once more on a new one, as browsers do, and marked [`Sample::resent`].
    pub resend_closed_idle: bool,
    /// The local address the users connect from (with `keep_alive`).
    pub local: Option<std::net::IpAddr>,
    /// Each user sends its session cookie (default). Off, no request carries one: the balancer
    /// picks a member for every request by its weights (a canary's share), as for new visitors.
    pub sticky: bool,
}

impl LoadOptions {
    /// `users` keep-alive users with no pause: the non-resending client of the nginx tests.
    pub fn keep_alive() -> LoadOptions {
        LoadOptions {
            pause: Duration::ZERO,
            keep_alive: true,
            ..LoadOptions::default()
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            pause: Duration::from_millis(25),
            timeout: Duration::from_secs(10),
            max_requests_per_user: 100_000,
            max_duration: Duration::from_secs(300),
            session_cookie: "JSESSIONID".into(),
            keep_alive: false,
            resend_closed_idle: false,
            local: None,
            sticky: true,
        }
    }
}

/// Parses `version=V route=R count=N` (any order, extra fields ignored).
pub fn parse_body(body: &str) -> BTreeMap<&str, &str> {
    body.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// One GET with an optional session cookie; the returned sample has `user`/`seq`/`at` zeroed.
pub async fn request_once(
    url: &http::Url,
    cookie_name: &str,
    session: Option<&str>,
    timeout: Duration,
) -> Sample {
    let mut headers = Vec::new();
    if let Some(id) = session {
        headers.push(("Cookie", format!("{cookie_name}={id}")));
    }
    let started = Instant::now();
    let result = http::get(url, headers, timeout)
        .await
        .map_err(|e| e.to_string());
    sample_of(result, started.elapsed(), cookie_name, session)
}

/// The sample of one answer (or error) to a GET that carried `session`.
fn sample_of(
    result: Result<http::Response, String>,
    latency: Duration,
    cookie_name: &str,
    session: Option<&str>,
) -> Sample {
    let mut sample = Sample {
        user: 0,
        seq: 0,
        at: Duration::ZERO,
        latency,
        ok: false,
        status: None,
        error: None,
        session: session.map(String::from),
        new_session: false,
        version: None,
        route: None,
        node: None,
        count: None,
        resent: false,
    };
    match result {
        Err(e) => sample.error = Some(e),
        Ok(response) => {
            sample.status = Some(response.status);
            sample.ok = (200..300).contains(&response.status);
            let prefix = format!("{cookie_name}=");
            if let Some(id) = response
                .header_values("Set-Cookie")
                .filter_map(|c| c.strip_prefix(&prefix))
                .filter_map(|c| c.split(';').next())
                .next()
            {
                sample.new_session = session != Some(id);
                sample.session = Some(id.to_string());
            }
            let fields = parse_body(&response.body);
            let header = |name| response.header_values(name).next().map(str::to_string);
            sample.version = fields
                .get("version")
                .map(|v| v.to_string())
                .or_else(|| header("x-version"));
            sample.route = fields.get("route").map(|v| v.to_string());
            sample.node = header("x-node").or_else(|| fields.get("node").map(|v| v.to_string()));
            sample.count = fields.get("count").and_then(|v| v.parse().ok());
            if !sample.ok {
                sample.error = Some(format!(
                    "HTTP {}: {}",
                    response.status,
                    response.body.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    sample
}

/// One `GET /` on a fresh connection from the local address `local` to `127.0.0.1:port`, with
/// extra header lines (`"accept: application/json\r\n"`), as raw HTTP/1.1: the whole answer,
/// status line and headers included (what an allow-list or a maintenance page is judged on).
pub async fn raw_get(local: &str, port: u16, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(format!("{local}:0").parse().expect("a local IPv4 address"))
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    let request = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("127.0.0.1:{port} did not answer within 20 s"))
        .unwrap();
    answer
}

struct Shared {
    url: http::Url,
    options: LoadOptions,
    stop: AtomicBool,
    /// Users told to stop on their own (see [`StickyLoad::log_out`]).
    finished: Mutex<std::collections::BTreeSet<usize>>,
    started: Instant,
    sent: AtomicU64,
    /// Per user, every sample so far.
    users: Mutex<Vec<Vec<Sample>>>,
}

/// A running sticky load.
pub struct StickyLoad {
    shared: Arc<Shared>,
    /// By user id; `None` once the user was logged out.
    tasks: Vec<Option<tokio::task::JoinHandle<()>>>,
}

impl StickyLoad {
    /// Starts `users` virtual users on `url` (e.g. `http://127.0.0.1:P/app/count`).
    pub fn start(url: &str, users: usize, options: LoadOptions) -> StickyLoad {
        let shared = Arc::new(Shared {
            url: http::Url::parse(url).expect("an http:// URL"),
            options,
            stop: AtomicBool::new(false),
            finished: Mutex::new(Default::default()),
            started: Instant::now(),
            sent: AtomicU64::new(0),
            users: Mutex::new(Vec::new()),
        });
        let mut load = StickyLoad {
            shared,
            tasks: Vec::new(),
        };
        load.add_users(users);
        load
    }

    /// Starts `users` users on `url`, then adds two at a time (at most `rounds` times) until at
    /// least `per_route` of them started their session on each of `routes` (a balancer may send
    /// every new session to one member for a while, as mod_jk does to a member that just came
    /// back). Returns the load and every user's id.
    pub async fn spread_over(
        url: &str,
        users: usize,
        options: LoadOptions,
        routes: &[&str],
        per_route: usize,
        rounds: usize,
    ) -> (StickyLoad, Vec<usize>) {
        let mut load = StickyLoad::start(url, users, options);
        let mut all: Vec<usize> = (0..users).collect();
        load.wait_progress(&all, 3, Duration::from_secs(30)).await;
        for _ in 0..rounds {
            let now = load.snapshot();
            if routes
                .iter()
                .all(|route| now.users_started_on(route).len() >= per_route)
            {
                break;
            }
            let added = load.add_users(2);
            load.wait_progress(&added, 3, Duration::from_secs(30)).await;
            all.extend(added);
        }
        (load, all)
    }

    /// Adds `n` users; returns their ids.
    pub fn add_users(&mut self, n: usize) -> Vec<usize> {
        let first = {
            let mut users = self.shared.users.lock().unwrap();
            let first = users.len();
            users.extend((0..n).map(|_| Vec::new()));
            first
        };
        for user in first..first + n {
            let shared = self.shared.clone();
            self.tasks.push(Some(tokio::spawn(run_user(shared, user))));
        }
        (first..first + n).collect()
    }

    /// Time since the load started (the clock of [`Sample::at`]).
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Requests sent so far, by all users.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> LoadReport {
        LoadReport {
            users: self.shared.users.lock().unwrap().clone(),
        }
    }

    /// Ok samples of `user` so far.
    pub fn ok_count(&self, user: usize) -> usize {
        self.shared.users.lock().unwrap()[user]
            .iter()
            .filter(|s| s.ok)
            .count()
    }

    /// Waits until each of `users` has at least `n` more ok answers than now; returns the time.
    pub async fn wait_progress(&self, users: &[usize], n: usize, timeout: Duration) -> Duration {
        let target: Vec<(usize, usize)> =
            users.iter().map(|&u| (u, self.ok_count(u) + n)).collect();
        crate::wait_until(
            &format!("{n} more ok answers for users {users:?}"),
            timeout,
            || {
                let done = target.iter().all(|&(u, t)| self.ok_count(u) >= t);
                async move { done }
            },
        )
        .await
    }

    /// Stops `users` (each finishes its current request), then ends each one's session with a
    /// GET of `logout_url` carrying its cookie; returns those answers (not part of the record,
    /// whose counts they would break). The others go on.
    pub async fn log_out(&mut self, users: &[usize], logout_url: &str) -> Vec<Sample> {
        let url = http::Url::parse(logout_url).expect("an http:// URL");
        self.shared
            .finished
            .lock()
            .unwrap()
            .extend(users.iter().copied());
        let mut answers = Vec::new();
        for &user in users {
            if let Some(task) = self.tasks[user].take() {
                task.await.expect("a load user panicked");
            }
            let session = self.shared.users.lock().unwrap()[user]
                .iter()
                .rev()
                .find(|s| s.ok)
                .and_then(|s| s.session.clone());
            let mut answer = request_once(
                &url,
                &self.shared.options.session_cookie,
                session.as_deref(),
                self.shared.options.timeout,
            )
            .await;
            answer.user = user;
            answer.at = self.shared.started.elapsed();
            answers.push(answer);
        }
        answers
    }

    /// Stops all users (each finishes its current request) and returns the record.
    pub async fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks).into_iter().flatten() {
            task.await.expect("a load user panicked");
        }
        LoadReport {
            users: std::mem::take(&mut *self.shared.users.lock().unwrap()),
        }
    }
}

impl Drop for StickyLoad {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

async fn run_user(shared: Arc<Shared>, user: usize) {
    let options = &shared.options;
    let mut session: Option<String> = None;
    let mut kept = options
        .keep_alive
        .then(|| crate::keepalive::KeptConnection::from(options.local));
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed)
        && !shared.finished.lock().unwrap().contains(&user)
        && seq < options.max_requests_per_user
        && shared.started.elapsed() < options.max_duration
    {
        let at = shared.started.elapsed();
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let mut sample = match kept.as_mut() {
            Some(conn) => {
                let started = Instant::now();
                let headers = match &session {
                    Some(id) => vec![("Cookie", format!("{}={id}", options.session_cookie))],
                    None => Vec::new(),
                };
                let reused = conn.is_open();
                let mut result = conn
                    .get(&shared.url, headers.clone(), options.timeout)
                    .await;
                let resend = options.resend_closed_idle
                    && reused
                    && matches!(&result, Err(e) if closed_idle_connection(e));
                if resend {
                    result = conn.get(&shared.url, headers, options.timeout).await;
                }
                let mut sample = sample_of(
                    result,
                    started.elapsed(),
                    &options.session_cookie,
                    session.as_deref(),
                );
                sample.resent = resend;
                sample
            }
            None => {
                request_once(
                    &shared.url,
                    &options.session_cookie,
                    session.as_deref(),
                    options.timeout,
                )
                .await
            }
        };
        sample.user = user;
        sample.seq = seq;
        sample.at = at;
        if sample.ok && options.sticky {
            session.clone_from(&sample.session);
        }
        shared.users.lock().unwrap()[user].push(sample);
        seq += 1;
        if !options.pause.is_zero() {
            tokio::time::sleep(options.pause).await;
        }
    }
}

/// A kept connection the server closed as the request went out (or before it was written:
/// hyper's `Canceled`): no answer started, so an idempotent request may be resent (RFC 9112
/// §9.3.1). nginx's old workers close their idle connections at every reload.
fn closed_idle_connection(error: &str) -> bool {
    error.contains("IncompleteMessage")
        || error.contains("Canceled")
        || error.contains("ConnectionReset")
        || error.contains("connection closed before message completed")
}

/// Everything a load recorded.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub users: Vec<Vec<Sample>>,
}

impl LoadReport {
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.users.iter().flatten()
    }

    pub fn sent(&self) -> usize {
        self.samples().count()
    }

    pub fn ok(&self) -> usize {
        self.samples().filter(|s| s.ok).count()
    }

    pub fn failures(&self) -> Vec<&Sample> {
        self.samples().filter(|s| !s.ok).collect()
    }

    /// Ok answers per route.
    pub fn by_route(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.samples().filter(|s| s.ok) {
            *out.entry(s.route.clone().unwrap_or_default()).or_default() += 1;
        }
        out
    }

    /// Ok answers per version.
    pub fn by_version(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.samples().filter(|s| s.ok) {
            *out.entry(s.version.clone().unwrap_or_default())
                .or_default() += 1;
        }
        out
    }

    /// The route of `user`'s first / last ok answer.
    pub fn first_route(&self, user: usize) -> Option<&str> {
        self.users[user]
            .iter()
            .find(|s| s.ok)
            .and_then(|s| s.route.as_deref())
    }

    pub fn last_route(&self, user: usize) -> Option<&str> {
        self.users[user]
            .iter()
            .rev()
            .find(|s| s.ok)
            .and_then(|s| s.route.as_deref())
    }

    /// Users whose last ok answer came from `route`.
    pub fn users_on(&self, route: &str) -> Vec<usize> {
        (0..self.users.len())
            .filter(|&u| self.last_route(u) == Some(route))
            .collect()
    }

    /// Users whose first ok answer came from `route`.
    pub fn users_started_on(&self, route: &str) -> Vec<usize> {
        (0..self.users.len())
            .filter(|&u| self.first_route(u) == Some(route))
            .collect()
    }

    /// The count `user` last saw.
    pub fn last_count(&self, user: usize) -> Option<u64> {
        self.users[user]
            .iter()
            .rev()
            .find(|s| s.ok)
            .and_then(|s| s.count)
    }

    /// Panics with the first few failed samples of `what` unless every request succeeded.
    pub fn assert_none_failed(&self, what: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{what}: {} of {} failed, first: {:?}",
            failures.len(),
            self.sent(),
            failures
                .iter()
                .take(5)
                .map(|s| format!(
                    "user {} at {:?}: {:?} {:?}",
                    s.user, s.at, s.status, s.error
                ))
                .collect::<Vec<_>>()
        );
    }

    /// The `p`-th percentile (0..=100) of the ok answers' latency; zero with none.
    pub fn latency_percentile(&self, p: f64) -> Duration {
        let mut all: Vec<Duration> = self.samples().filter(|s| s.ok).map(|s| s.latency).collect();
        all.sort();
        match all.len() {
            0 => Duration::ZERO,
            n => all[((n - 1) as f64 * p / 100.0).round() as usize],
        }
    }

    /// The mean latency of the ok answers; zero with none.
    pub fn mean_latency(&self) -> Duration {
        let ok: Vec<Duration> = self.samples().filter(|s| s.ok).map(|s| s.latency).collect();
        match ok.len() {
            0 => Duration::ZERO,
            n => ok.iter().sum::<Duration>() / n as u32,
        }
    }

    /// One line: sent, ok, failed, by route, by version.
    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} failed {} by route {:?} by version {:?}",
            self.sent(),
            self.ok(),
            self.sent() - self.ok(),
            self.by_route(),
            self.by_version()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(user: usize, seq: u64, session: &str, route: &str, count: u64) -> Sample {
        Sample {
            user,
            seq,
            at: Duration::ZERO,
            latency: Duration::ZERO,
            ok: true,
            status: Some(200),
            error: None,
            session: Some(session.into()),
            new_session: false,
            version: Some("v1".into()),
            route: Some(route.into()),
            node: None,
            count: Some(count),
            resent: false,
        }
    }

    #[test]
    fn counts_are_checked_per_session() {
        let good = LoadReport {
            users: vec![vec![
                ok(0, 0, "A.t1", "t1", 1),
                ok(0, 1, "A.t1", "t1", 2),
                ok(0, 2, "B.t2", "t2", 1),
                ok(0, 3, "B.t2", "t2", 2),
            ]],
        };
        let resets = good.check_counts().unwrap();
        assert_eq!(resets.len(), 1);
        assert_eq!(resets[0].from_route.as_deref(), Some("t1"));
        assert_eq!(resets[0].from_count, Some(2));
        assert_eq!(good.users_on("t2"), [0]);
        assert_eq!(good.users_started_on("t1"), [0]);
        let skipped = LoadReport {
            users: vec![vec![ok(0, 0, "A.t1", "t1", 1), ok(0, 1, "A.t1", "t1", 3)]],
        };
        assert_eq!(skipped.check_counts().unwrap_err().len(), 1);
        let wrong_route = LoadReport {
            users: vec![vec![ok(0, 0, "A.t1", "t2", 1)]],
        };
        assert!(wrong_route.check_counts().is_err());
        let moved = LoadReport {
            users: vec![vec![
                ok(0, 0, "A.t1", "t1", 1),
                ok(0, 1, "A.t2", "t2", 2),
                ok(0, 2, "C.t1", "t1", 1),
            ]],
        };
        // The rebound session A is one session; C is a new one.
        let resets = moved.check_counts().unwrap();
        assert_eq!(resets.len(), 1);
        assert_eq!(resets[0].from_count, Some(2));
        let moves = moved.session_moves();
        assert_eq!(moves.len(), 2);
        assert!(moves[0].kept && !moves[1].kept, "{moves:?}");
        assert_eq!(moves[0].to_route.as_deref(), Some("t2"));
        // Same id before the route, but counting again from 1: a reset, not a replica.
        let restarted = LoadReport {
            users: vec![vec![ok(0, 0, "A.t1", "t1", 1), ok(0, 1, "A.t2", "t2", 1)]],
        };
        assert_eq!(restarted.check_counts().unwrap().len(), 1);
        assert!(!restarted.session_moves()[0].kept);
        assert_eq!(
            parse_body("version=v1 route=t1 count=3").get("count"),
            Some(&"3")
        );
    }
}
