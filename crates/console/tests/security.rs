//! The console's security properties, route by route from the one route table: no credentials,
//! bad credentials, a viewer on state-changing routes, missing CSRF; plus lockout, upload limits,
//! path traversal, malformed JSON and agent enrolment.

mod support;

use std::collections::BTreeSet;

use nonstop_console::{Access, Kind, Method, Route, routes};
use serde_json::json;
use support::{Login, PASSWORD, Setup, TestConsole, bearer, totp_code};

/// The only routes that take no credentials; adding one means adding it here, on purpose.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/login"),
    ("GET", "/setup"),
    ("GET", "/assets/app.js"),
    ("GET", "/assets/canary.js"),
    ("GET", "/assets/app.css"),
    ("POST", "/api/login"),
    ("POST", "/api/setup"),
    ("POST", "/api/agents/join"),
];

/// The route's path with its parameters filled in.
fn concrete(route: &Route) -> String {
    route
        .path
        .replace("{service}", "shop")
        .replace("{node}", "blue")
        .replace("{deploy}", "1")
        .replace("{job}", "1")
        .replace("{user}", "vera")
        .replace("{token}", "ci")
}

async fn call(console: &TestConsole, route: &Route, headers: &[(&str, String)]) -> support::Resp {
    let body = if route.method.changes_state() {
        b"{}".to_vec()
    } else {
        Vec::new()
    };
    console
        .client
        .request(
            route.method.as_str(),
            &concrete(route),
            headers,
            Some("application/json"),
            body,
        )
        .await
}

fn is_login_redirect(r: &support::Resp) -> bool {
    r.status == 303 && r.header("location").as_deref() == Some("/login")
}

#[tokio::test]
async fn public_routes_are_exactly_the_known_ones() {
    let public: BTreeSet<(String, String)> = routes()
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    let expected: BTreeSet<(String, String)> = PUBLIC
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(public, expected);
    let all = routes();
    let unique: BTreeSet<_> = all.iter().map(|r| (r.method.as_str(), r.path)).collect();
    assert_eq!(unique.len(), all.len(), "a route is listed twice");
}

#[tokio::test]
async fn every_route_refuses_missing_and_wrong_credentials() {
    let console = TestConsole::start(Setup::default()).await;
    let garbage_cookie = vec![(
        "cookie",
        "__Host-nonstop-session=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
            .to_string(),
    )];
    let junk_cookie = vec![("cookie", "__Host-nonstop-session=../../etc".to_string())];
    let wrong_bearer =
        bearer("nst_0000000000000000000000000000000000000000000000000000000000000000");
    let not_bearer = vec![("authorization", "Basic YWRtaW46YWRtaW4=".to_string())];
    let mut checked = 0;
    for route in routes().iter().filter(|r| r.access != Access::Public) {
        for (what, headers) in [
            ("no credentials", vec![]),
            ("an unknown session", garbage_cookie.clone()),
            ("a junk cookie", junk_cookie.clone()),
            ("a wrong bearer token", wrong_bearer.clone()),
            ("a non-bearer Authorization", not_bearer.clone()),
        ] {
            let r = call(&console, route, &headers).await;
            let refused = match route.kind {
                Kind::Page => is_login_redirect(&r),
                Kind::Api => r.status == 401 && r.json()["error"].is_string(),
            };
            assert!(
                refused,
                "{} {} with {what}: {} {}",
                route.method.as_str(),
                route.path,
                r.status,
                r.text()
            );
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} routes checked");
}

#[tokio::test]
async fn viewers_and_missing_csrf_are_refused_on_every_state_changing_route() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let viewer = console.user(&admin, "vera", "viewer").await;
    let viewer_token = console.token(&admin, "vera", "ci").await;
    let changing: Vec<Route> = routes()
        .into_iter()
        .filter(|r| r.method.changes_state() && r.access != Access::Public)
        .collect();
    assert!(changing.len() > 10);
    for route in &changing {
        let name = format!("{} {}", route.method.as_str(), route.path);
        // A session without its CSRF token, and with a wrong one: refused before anything.
        for headers in [
            admin.cookie_only(),
            vec![
                ("cookie", admin.cookie.clone()),
                ("x-csrf-token", "0".repeat(64)),
            ],
        ] {
            let r = call(&console, route, &headers).await;
            assert_eq!(r.status, 403, "{name} without CSRF: {}", r.text());
            assert!(r.text().contains("CSRF"), "{name}: {}", r.text());
        }
        if route.access == Access::Session {
            continue; // one's own logout, password and TOTP
        }
        let r = call(&console, route, &viewer.headers()).await;
        assert_eq!(r.status, 403, "{name} as a viewer: {}", r.text());
        let r = call(&console, route, &bearer(&viewer_token)).await;
        assert_eq!(r.status, 403, "{name} with a viewer's token: {}", r.text());
    }
    // Nothing happened: no deploy, the users are as they were.
    let r = console
        .client
        .get("/api/services/shop/deploys", &admin.headers())
        .await;
    assert_eq!(r.json()["deployments"], json!([]));
    let r = console.client.get("/api/users", &admin.headers()).await;
    let users = r.json()["users"].as_array().unwrap().len();
    assert_eq!(users, 2);
    // The viewer can read, and the refusals are in the audit log.
    let r = console
        .client
        .get("/api/services/shop", &viewer.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["can"],
        json!({"deploy": false, "rollback": false, "drain": false})
    );
    let r = console
        .client
        .get("/api/audit?actor=vera", &admin.headers())
        .await;
    let records = r.json()["records"].as_array().unwrap().clone();
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "deploy" && r["outcome"] == "denied"),
        "{records:?}"
    );
    let r = console
        .client
        .get("/api/audit?actor=token:vera/ci", &admin.headers())
        .await;
    assert!(!r.json()["records"].as_array().unwrap().is_empty());
    // Tokens are never for admin routes, even an admin's.
    let admin_token = console.token(&admin, "admin", "ci").await;
    let r = console
        .client
        .get("/api/audit", &bearer(&admin_token))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = console
        .client
        .get("/api/services/shop", &bearer(&admin_token))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn brute_force_login_is_locked_out() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    // Four failures are answered as such; the fifth locks.
    for attempt in 0..5 {
        let r = console
            .client
            .post_json(
                "/api/login",
                &json!({"user": "admin", "password": format!("wrong password {attempt}"), "totp": "000000"}),
                &[],
            )
            .await;
        let expected = if attempt < 4 { 401 } else { 429 };
        assert_eq!(r.status, expected, "attempt {attempt}: {}", r.text());
    }
    // Now even the right password and code are not checked.
    let r = console
        .client
        .post_json(
            "/api/login",
            &json!({"user": "admin", "password": PASSWORD, "totp": totp_code(&admin.totp, 1)}),
            &[],
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 60, "{retry}");
    // Only that address and name are locked: another name from it is still checked
    // (lockout.rs plays several addresses).
    let r = console
        .client
        .post_json(
            "/api/login",
            &json!({"user": "someone", "password": PASSWORD}),
            &[],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = console
        .client
        .get("/api/audit?actor=admin", &admin.headers())
        .await;
    let failed = r.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "login" && r["outcome"] != "ok")
        .count();
    assert!(failed >= 6, "{}", r.text());
}

#[tokio::test]
async fn login_needs_password_and_totp_and_logout_ends_the_session() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    // The bootstrap secret is spent, and the setup route gone.
    let r = console
        .client
        .post_json(
            "/api/setup",
            &json!({"secret": console.secret.clone().unwrap()}),
            &[],
        )
        .await;
    assert_eq!(r.status, 410, "{}", r.text());
    let r = console
        .client
        .post_json(
            "/api/login",
            &json!({"user": "admin", "password": PASSWORD}),
            &[],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["totp_required"], true);
    let r = console
        .client
        .post_json(
            "/api/login",
            &json!({"user": "admin", "password": PASSWORD, "totp": totp_code(&admin.totp, 1)}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap();
    for part in [
        "__Host-nonstop-session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let login = Login::from_response(&r);
    assert_eq!(
        console
            .client
            .get("/api/me", &login.cookie_only())
            .await
            .status,
        200
    );
    let r = console
        .client
        .post_json("/api/logout", &json!({}), &login.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        console
            .client
            .get("/api/me", &login.cookie_only())
            .await
            .status,
        401
    );
    // Pages send a stranger to the login; the HTML carries no inline script.
    let r = console.client.get("/", &[]).await;
    assert_eq!(r.status, 303);
    let r = console.client.get("/login", &[]).await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let console = TestConsole::start(Setup {
        upload_limit: 1024,
        ..Setup::default()
    })
    .await;
    let admin = console.admin().await;
    std::fs::write(console.drop_dir().join("app.jar"), b"fine").unwrap();
    std::fs::write(console.dir.path().join("secret.jar"), b"outside").unwrap();
    // Path traversal in an artifact name.
    for name in [
        "../secret.jar",
        "../../etc/passwd",
        "/etc/passwd",
        "sub/app.jar",
        "..",
    ] {
        let r = console
            .client
            .post_json(
                "/api/services/shop/deploy",
                &json!({"artifact": name, "version": "v1"}),
                &admin.headers(),
            )
            .await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(r.text().contains("not an artifact name"), "{}", r.text());
    }
    // The same in an upload's file name.
    let r = console
        .client
        .post_multipart(
            "/api/services/shop/deploy",
            "../evil.jar",
            b"x",
            &[],
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // An upload over the limit.
    let r = console
        .client
        .post_multipart(
            "/api/services/shop/deploy",
            "big.jar",
            &vec![b'x'; 4096],
            &[("version", "v9")],
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Malformed and mistyped JSON.
    let r = console
        .client
        .request(
            "POST",
            "/api/services/shop/deploy",
            &admin.headers(),
            Some("application/json"),
            b"{\"artifact\": ".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"),
        "{}",
        r.text()
    );
    let r = console
        .client
        .post_json("/api/users", &json!({"name": 5}), &admin.headers())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unexpected JSON"),
        "{}",
        r.text()
    );
    let r = console
        .client
        .post_json(
            "/api/services/shop/deploy",
            &json!({"artifact": "app.jar", "version": "v 1; rm -rf /"}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = console
        .client
        .post_json(
            "/api/services/shop/deploy",
            &json!({"artifact": "app.jar", "strategy": "yolo"}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing changed: no job, no deploy, no upload left behind.
    let r = console
        .client
        .get("/api/services/shop", &admin.headers())
        .await;
    assert_eq!(r.json()["recent"], json!([]), "{}", r.text());
    let r = console
        .client
        .get("/api/services/shop/deploys", &admin.headers())
        .await;
    assert_eq!(r.json()["deployments"], json!([]));
    let uploads = console.state.join("uploads");
    let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "uploads left in {}", uploads.display());
    assert!(
        !console
            .dir
            .path()
            .join("releases")
            .join("releases")
            .exists()
    );
}

#[tokio::test]
async fn agents_join_only_with_their_own_one_time_token() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let issue = |name: &'static str| {
        let (client, headers) = (console.client.clone(), admin.headers());
        async move {
            let r = client
                .post_json("/api/agents/tokens", &json!({"name": name}), &headers)
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let answer = r.json();
            assert!(answer["command"].as_str().unwrap().contains("--ca-sha256"));
            answer["token"].as_str().unwrap().to_string()
        }
    };
    let csr = nonstop_pki::AgentRequest::new("web1").unwrap().csr_pem;
    let join = |name: &str, token: &str| {
        let (client, body) = (
            console.client.clone(),
            json!({"name": name, "token": token, "csr_pem": csr}),
        );
        async move { client.post_json("/api/agents/join", &body, &[]).await }
    };
    assert_eq!(join("web1", "nsj_nope").await.status, 403);
    let token = issue("web2").await;
    let r = join("web1", &token).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("web2"), "{}", r.text());
    let token = issue("web1").await;
    let r = join("web1", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert!(
        answer["cert_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(
        answer["ca_pem"].as_str().unwrap(),
        std::fs::read_to_string(console.state.join("pki/ca.pem")).unwrap()
    );
    // Once only.
    assert_eq!(join("web1", &token).await.status, 403);
    let r = console.client.get("/api/agents", &admin.headers()).await;
    let events = r.json()["events"].as_array().unwrap().clone();
    assert!(
        events.iter().any(|e| e["action"] == "agent-join"
            && e["outcome"] == "ok"
            && e["actor"] == "agent:web1"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "agent-join" && e["outcome"] == "denied")
    );
}

#[test]
fn methods_that_change_state_are_the_non_get_ones() {
    assert!(!Method::Get.changes_state());
    assert!(Method::Post.changes_state() && Method::Delete.changes_state());
}
