//! Login lockout as an attacker meets it: per address (and address + user) with back-off, never
//! locking the real user out from a clean address; the setup route gone after setup; password
//! changes through the same lockout with TOTP; and failing logins not slowing anyone else.
//! Several client addresses are played through a trusted proxy (`X-Forwarded-For`).

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Login, PASSWORD, Setup, TestConsole, enrol_totp, from_ip, totp_code};

fn behind_proxy() -> Setup {
    Setup {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..Setup::default()
    }
}

async fn login(
    console: &TestConsole,
    ip: &str,
    user: &str,
    password: &str,
    totp: &str,
) -> support::Resp {
    console
        .client
        .post_json(
            "/api/login",
            &json!({"user": user, "password": password, "totp": totp}),
            &from_ip(ip, vec![]),
        )
        .await
}

#[tokio::test]
async fn an_attacker_is_slowed_and_the_real_user_gets_in_from_a_clean_address() {
    let console = TestConsole::start(behind_proxy()).await;
    let admin = console.admin().await;
    let attacker = "203.0.113.7";
    for attempt in 0..5 {
        let r = login(
            &console,
            attacker,
            "admin",
            &format!("guess number {attempt}"),
            "000000",
        )
        .await;
        let expected = if attempt < 4 { 401 } else { 429 };
        assert_eq!(r.status, expected, "attempt {attempt}: {}", r.text());
    }
    // The attacker waits a minute at least, then twice as long, and so on.
    let r = login(&console, attacker, "admin", "one more guess", "000000").await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 30 && retry <= 60, "{retry}");
    // The real admin, from their own address, with password and code: in.
    let r = login(
        &console,
        "198.51.100.1",
        "admin",
        PASSWORD,
        &totp_code(&admin.totp, 1),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "the real user is not locked out: {}",
        r.text()
    );
    // From the attacker's address even the right credentials are not checked.
    let r = login(
        &console,
        attacker,
        "admin",
        PASSWORD,
        &totp_code(&admin.totp, 1),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    // Another name from the attacker's address is its own counter (the address as a whole
    // locks only after 20 failures).
    let r = login(
        &console,
        attacker,
        "someone",
        "a guess for someone",
        "000000",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn setup_is_gone_after_setup_and_counts_nothing() {
    let console = TestConsole::start(behind_proxy()).await;
    let admin = console.admin().await;
    let from = "203.0.113.8";
    for _ in 0..8 {
        let r = console
            .client
            .post_json(
                "/api/setup",
                &json!({"secret": "0123456789abcdef0123456789abcdef"}),
                &from_ip(from, vec![]),
            )
            .await;
        assert_eq!(r.status, 410, "{}", r.text());
        assert!(r.text().contains("already set up"), "{}", r.text());
    }
    // Nothing was counted against admin or that address.
    let r = login(
        &console,
        from,
        "admin",
        PASSWORD,
        &totp_code(&admin.totp, 1),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn password_change_goes_through_the_lockout_asks_for_totp_and_ends_other_sessions() {
    let console = TestConsole::start(behind_proxy()).await;
    let admin = console.admin().await;
    let r = console
        .client
        .post_json(
            "/api/users",
            &json!({"name": "vera", "password": PASSWORD, "role": "viewer"}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Two sessions; the first finishes the setup (and is rotated), the second stays as it is.
    let first = login(&console, "198.51.100.2", "vera", PASSWORD, "").await;
    let other = Login::from_response(&login(&console, "198.51.100.3", "vera", PASSWORD, "").await);
    let vera = enrol_totp(&console.client, &Login::from_response(&first)).await;
    assert_eq!(
        console
            .client
            .get("/api/me", &other.cookie_only())
            .await
            .status,
        200
    );

    let change = |ip: &'static str, current: String, totp: Option<String>| {
        let (client, headers) = (console.client.clone(), from_ip(ip, vera.headers()));
        async move {
            let mut body = json!({"current": current, "password": "a brand new passphrase"});
            if let Some(code) = totp {
                body["totp"] = json!(code);
            }
            client
                .post_json("/api/account/password", &body, &headers)
                .await
        }
    };
    // Guessing the current password is a login failure like any other: the fifth locks.
    let guesser = "203.0.113.9";
    for attempt in 0..5 {
        let r = change(
            guesser,
            format!("guess {attempt} for vera"),
            Some("000000".into()),
        )
        .await;
        let expected = if attempt < 4 { 403 } else { 429 };
        assert_eq!(r.status, expected, "attempt {attempt}: {}", r.text());
    }
    let right = totp_code(&vera.totp, 1);
    let r = change(guesser, PASSWORD.into(), Some(right.clone())).await;
    assert_eq!(r.status, 429, "{}", r.text());
    // The right password alone is not enough: the TOTP code is asked for.
    let clean = "198.51.100.4";
    let r = change(clean, PASSWORD.into(), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("code"), "{}", r.text());
    let r = change(clean, PASSWORD.into(), Some(right)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sessions_ended"], 1);
    // The other session is over; the one that changed the password goes on.
    assert_eq!(
        console
            .client
            .get("/api/me", &other.cookie_only())
            .await
            .status,
        401
    );
    assert_eq!(
        console
            .client
            .get("/api/me", &vera.cookie_only())
            .await
            .status,
        200
    );
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

async fn me_once(console: &TestConsole, admin: &Login) -> Duration {
    let started = Instant::now();
    let r = console.client.get("/api/me", &admin.cookie_only()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    started.elapsed()
}

/// Argon2 runs outside the account store's lock: while four clients keep failing logins, a
/// signed-in request does not wait for their password checks. Judged against the time of one
/// failing login on this machine, not a fixed number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_logins_do_not_slow_other_requests() {
    let console = TestConsole::start(behind_proxy()).await;
    let admin = console.admin().await;
    let mut alone = Vec::new();
    for i in 0..3 {
        let started = Instant::now();
        let r = login(
            &console,
            &format!("192.0.2.{i}"),
            "admin",
            "not the password",
            "000000",
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.text());
        alone.push(started.elapsed());
    }
    let one_login = median(alone);
    let quiet = median(me_times(&console, &admin, 5).await);

    let done = std::sync::Arc::new(AtomicU32::new(0));
    let mut flood = Vec::new();
    for worker in 0..4u32 {
        let (client, done) = (console.client.clone(), done.clone());
        flood.push(tokio::spawn(async move {
            for n in 0..FLOOD_PER_WORKER {
                // A fresh address each time, so no lock stops the flood.
                let ip = format!("10.{worker}.{}.{}", n / 250, n % 250 + 1);
                let r = client
                    .post_json(
                        "/api/login",
                        &json!({"user": "admin", "password": "wrong wrong wrong", "totp": "000000"}),
                        &from_ip(&ip, vec![]),
                    )
                    .await;
                assert_eq!(r.status, 401, "{}", r.text());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Signed-in requests for as long as the flood runs (past its start and before its end).
    let mut loaded = Vec::new();
    while done.load(Ordering::Relaxed) < 4 * FLOOD_PER_WORKER - 4 {
        let sample = me_once(&console, &admin).await;
        if done.load(Ordering::Relaxed) >= 4 {
            loaded.push(sample);
        }
    }
    for task in flood {
        task.await.unwrap();
    }
    let samples = loaded.len();
    let loaded = median(loaded);
    eprintln!(
        "one failing login {one_login:?}; /api/me median {quiet:?} quiet, {loaded:?} during {} failing logins ({samples} samples)",
        4 * FLOOD_PER_WORKER
    );
    assert!(samples >= 5, "too few samples during the flood: {samples}");
    assert!(
        loaded < one_login / 3,
        "/api/me waited for password checks: median {loaded:?} vs one login {one_login:?}"
    );
}

/// Failing logins each of the four flooding clients sends.
const FLOOD_PER_WORKER: u32 = 15;

async fn me_times(console: &TestConsole, admin: &Login, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(me_once(console, admin).await);
    }
    out
}
