//! The embedded front end: one HTML shell for every page (the script renders what the path
//! names), a stylesheet and two scripts, compiled into the binary so `cargo build` is all it takes.

use axum::response::{Html, IntoResponse, Response};
use http::header::{CONTENT_TYPE, HeaderValue};

const SHELL: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const CANARY_SCRIPT: &str = include_str!("../assets/canary.js");
const STYLE: &str = include_str!("../assets/app.css");

pub async fn shell() -> Html<&'static str> {
    Html(SHELL)
}

pub async fn script() -> Response {
    with_type(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn canary_script() -> Response {
    with_type(CANARY_SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    with_type(STYLE, "text/css; charset=utf-8")
}

fn with_type(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
