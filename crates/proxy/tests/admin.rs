//! The admin API's change of several backends at once (what a deploy's switch sends): applied
//! together, the other backends left as an operator set them, an unknown name changing nothing.

mod support;

use nonstop_admin_client::{BackendChange, BackendState};
use support::*;

fn change(name: &str, state: BackendState) -> BackendChange {
    BackendChange {
        name: name.into(),
        state: Some(state),
        weight: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_backends_change_in_one_call_and_the_others_stay() {
    let (blue, green, spare) = (
        Backend::start("blue").await,
        Backend::start("green").await,
        Backend::start("spare").await,
    );
    let pool = format!(
        "[pools.app]\n\
         [[pools.app.backends]]\nname = \"blue\"\naddr = \"{}\"\n\
         [[pools.app.backends]]\nname = \"green\"\naddr = \"{}\"\nstate = \"disabled\"\n\
         [[pools.app.backends]]\nname = \"spare\"\naddr = \"{}\"\n",
        blue.addr, green.addr, spare.addr
    );
    let proxy = TestProxy::start("", &pool).await;
    let admin = proxy.admin();
    // An operator drains `spare` on their own; the switch below must not write it back.
    admin
        .set_backends("app", &[change("spare", BackendState::Draining)])
        .await
        .unwrap();
    let mut switch = vec![
        change("blue", BackendState::Draining),
        change("green", BackendState::Active),
    ];
    switch[1].weight = Some(7);
    let pool = admin.set_backends("app", &switch).await.unwrap();
    let state = |name: &str| {
        let b = pool.backend(name).unwrap();
        (b.state, b.weight)
    };
    assert_eq!(state("blue"), (BackendState::Draining, 1));
    assert_eq!(state("green"), (BackendState::Active, 7));
    assert_eq!(state("spare"), (BackendState::Draining, 1));
    let (status, body) = get(&client(), &proxy.url("/")).await.unwrap();
    assert_eq!(
        (status, body.starts_with("node=green")),
        (200, true),
        "{body}"
    );

    let refused = admin
        .set_backends(
            "app",
            &[
                change("blue", BackendState::Active),
                change("nobody", BackendState::Active),
            ],
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("nobody"), "{refused}");
    assert!(!refused.is_not_supported(), "{refused}");
    assert_eq!(
        proxy.backend("app", "blue").state,
        nonstop_config::AdminState::Draining,
        "nothing changed"
    );
    proxy.stop().await;
}
