//! `GET /`: a small live page (inline HTML and JavaScript, no build step). Paste a token (or
//! open `/#token=<jwt>`), and the page shows the events as they arrive, with a
//! connected/reconnecting badge; it reconnects by itself with a capped backoff.

use axum::response::Html;

const PAGE: &str = include_str!("page.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
