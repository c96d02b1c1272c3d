//! The smaller findings of the security probe, each as the probe saw it: refused credentials on
//! state changes audited (within a budget), the session id rotated at the end of setup, private
//! state files, escaped audit text, a minimum password strength, and artifacts listed only to
//! those who may deploy.

mod support;

use serde_json::{Value, json};
use support::{Login, PASSWORD, Setup, TestConsole, bearer, enrol_totp};

async fn audit(console: &TestConsole, admin: &Login, query: &str) -> Vec<Value> {
    let r = console
        .client
        .get(&format!("/api/audit?limit=1000{query}"), &admin.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["records"].as_array().unwrap().clone()
}

#[tokio::test]
async fn refused_credentials_on_state_changes_are_audited_within_a_budget() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let token = console.token(&admin, "admin", "ci").await;
    let r = console
        .client
        .request(
            "DELETE",
            "/api/users/admin/tokens/ci",
            &admin.headers(),
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let junk_cookie = vec![(
        "cookie",
        format!("__Host-nonstop-session={}", "ab".repeat(32)),
    )];
    for (what, headers) in [
        ("a revoked token", bearer(&token)),
        ("a junk token", bearer("nst_junk")),
        ("an unknown session", junk_cookie),
    ] {
        let r = console
            .client
            .post_json("/api/services/shop/rollback", &json!({}), &headers)
            .await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
    // Reads with a bad credential are not state changes: not recorded.
    let r = console
        .client
        .get("/api/services", &bearer("nst_junk"))
        .await;
    assert_eq!(r.status, 401);
    let refused: Vec<Value> = audit(&console, &admin, "&actor=anonymous")
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .collect();
    assert_eq!(refused.len(), 3, "{refused:#?}");
    for record in &refused {
        assert_eq!(record["action"], "rollback");
        assert_eq!(record["service"], "shop");
        assert!(
            record["detail"].as_str().unwrap().starts_with("401"),
            "{record}"
        );
    }
    // A flood is cut at the budget: ten a minute from one address.
    for _ in 0..40 {
        let r = console
            .client
            .post_json(
                "/api/services/shop/rollback",
                &json!({}),
                &bearer("nst_junk"),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let refused = audit(&console, &admin, "&actor=anonymous").await.len();
    assert_eq!(refused, 10, "recorded within the budget");
}

#[tokio::test]
async fn the_session_id_changes_when_setup_ends() {
    let console = TestConsole::start(Setup::default()).await;
    let r = console
        .client
        .post_json(
            "/api/setup",
            &json!({"secret": console.secret.clone().unwrap()}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let setup = Login::from_response(&r);
    // The first run's password must be worth something.
    for weak in ["aaaaaaaaaaaa", "password1234", "abcabcabcabc"] {
        let r = console
            .client
            .post_json(
                "/api/account/password",
                &json!({"password": weak}),
                &setup.headers(),
            )
            .await;
        assert_eq!(r.status, 400, "{weak}: {}", r.text());
        assert!(r.text().contains("password refused"), "{}", r.text());
    }
    let r = console
        .client
        .post_json(
            "/api/account/password",
            &json!({"password": PASSWORD}),
            &setup.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = enrol_totp(&console.client, &setup).await;
    assert_eq!(
        console
            .client
            .get("/api/me", &setup.cookie_only())
            .await
            .status,
        401
    );
    let r = console.client.get("/api/me", &done.cookie_only()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["setup_pending"], false);
    assert_eq!(r.json()["csrf"], done.csrf.as_str());
}

#[tokio::test]
async fn state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let r = console
        .client
        .post_json(
            "/api/agents/tokens",
            &json!({"name": "web1"}),
            &admin.headers(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mode = |path: &str| {
        std::fs::metadata(console.state.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for file in [
        "accounts.db",
        "accounts.db-wal",
        "pki/join-tokens.db",
        "pki/ca.key",
    ] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}

#[tokio::test]
async fn audit_text_cannot_forge_lines_or_reorder_itself() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let r = console
        .client
        .post_json(
            "/api/login",
            &json!({"user": "eve\u{202e}nimda", "password": "whatever it is"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = console
        .client
        .post_json(
            "/api/agents/join",
            &json!({"name": "web1\r\n2026-01-01 admin ok", "token": "nsj_x", "csr_pem": "x"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let records = audit(&console, &admin, "").await;
    let actors: Vec<&str> = records.iter().filter_map(|r| r["actor"].as_str()).collect();
    assert!(actors.contains(&"eve\\u{202e}nimda"), "{actors:?}");
    assert!(
        actors.contains(&"agent:web1\\u{000d}\\u{000a}2026-01-01 admin ok"),
        "{actors:?}"
    );
    for actor in actors {
        assert!(!actor.contains(['\r', '\n', '\u{202e}']), "{actor:?}");
    }
}

#[tokio::test]
async fn artifacts_are_listed_only_to_those_who_may_deploy() {
    let console = TestConsole::start(Setup::default()).await;
    let admin = console.admin().await;
    let viewer = console.user(&admin, "vera", "viewer").await;
    std::fs::write(console.drop_dir().join("app.jar"), b"the app").unwrap();
    std::fs::write(console.dir.path().join("secret"), vec![b's'; 4096]).unwrap();
    std::os::unix::fs::symlink(
        console.dir.path().join("secret"),
        console.drop_dir().join("leak.jar"),
    )
    .unwrap();
    let names = |r: &support::Resp| -> Vec<String> {
        r.json()["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = console.client.get("/api/artifacts", &admin.headers()).await;
    assert_eq!(
        names(&r),
        ["app.jar"],
        "the link out of the drop dir is not offered"
    );
    let r = console
        .client
        .get("/api/artifacts", &viewer.headers())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        names(&r).is_empty(),
        "a viewer may deploy nothing: {}",
        r.text()
    );
}
