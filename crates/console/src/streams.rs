//! Long answers (the live log, a job's events) keep their authority only while it holds: the
//! credential and grant that opened one are re-checked every few seconds and at every change.

use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::HeaderMap;

use crate::auth;
use crate::routes::Route;
use crate::state::App;

/// The longest an open stream outlives a logout, a revoked grant or a deleted user by: changes
/// made through the console are noticed at once, others (expiry, another console) at this pace.
pub const RECHECK: Duration = Duration::from_secs(2);

/// What a stream asks again: the request's credentials on its route, as the guard saw them.
pub struct Authority {
    pub app: App,
    pub route: Route,
    pub headers: HeaderMap,
    pub client: String,
    pub service: Option<String>,
}

impl Authority {
    async fn holds(&self) -> bool {
        let Ok(caller) =
            auth::authenticate(&self.app, &self.route, &self.headers, &self.client).await
        else {
            return false;
        };
        auth::authorize(
            &self.app,
            &self.route,
            &caller,
            &self.headers,
            false,
            self.service.as_deref(),
        )
        .await
        .is_ok()
    }
}

/// `body`, ended as soon as `authority` no longer holds.
pub fn guarded(body: Body, authority: Authority) -> Body {
    let changes = authority.app.changes.subscribe();
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    let state = (body.into_data_stream(), authority, changes, tick);
    let stream = futures_util::stream::unfold(state, |state| async move {
        let (mut data, authority, mut changes, mut tick) = state;
        loop {
            tokio::select! {
                chunk = data.next() => {
                    let chunk = chunk?;
                    return Some((chunk, (data, authority, changes, tick)));
                }
                _ = tick.tick() => {}
                changed = changes.changed() => changed.ok()?,
            }
            if !authority.holds().await {
                tracing::info!(
                    route = authority.route.path,
                    "a stream's authority ended; closing it"
                );
                return None;
            }
        }
    });
    Body::from_stream(stream)
}
