//! `GET /`: the live dashboard (plain HTML, CSS and JavaScript, no build step), and its two
//! assets `GET /dashboard.js` and `GET /dashboard.css`.
//!
//! The page is the same for every role; the token pasted into it (or given as `/#token=<jwt>`)
//! decides what it shows. It loads the figures from the gateway's reports at
//! `GATEWAY_PUBLIC_URL`, which is written into the page as JSON, and the last hour's decisions
//! from this notifier's `GET /decisions`; then it follows the WebSocket. See `docs/dashboard.md`.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};

use crate::AppState;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");
/// Where the page's configuration goes in `page.html`.
const CONFIG_SLOT: &str = "{{CONFIG}}";
pub const DEFAULT_GATEWAY_URL: &str = "http://localhost:3000";

/// `GATEWAY_PUBLIC_URL`, checked to be an http(s) URL, without a trailing slash.
pub fn gateway_url_from_env() -> anyhow::Result<String> {
    let text = std::env::var("GATEWAY_PUBLIC_URL").unwrap_or_default();
    let text = if text.trim().is_empty() {
        DEFAULT_GATEWAY_URL
    } else {
        text.trim()
    };
    check_gateway_url(text).map_err(|reason| {
        anyhow::anyhow!("environment variable GATEWAY_PUBLIC_URL={text:?} is invalid: {reason}")
    })
}

fn check_gateway_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the dashboard needs an http or https URL".into());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// The page with its configuration: `{"gatewayUrl": …}` inside a `<script type=
/// "application/json">`, with `<` escaped so no value can close the script element.
pub fn render(gateway_url: &str) -> String {
    let config = serde_json::json!({ "gatewayUrl": gateway_url })
        .to_string()
        .replace('<', "\\u003c");
    PAGE.replace(CONFIG_SLOT, &config)
}

pub async fn page(State(state): State<AppState>) -> Html<String> {
    Html(state.page.to_string())
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_url_is_written_into_the_page_as_inert_json() {
        let page = render("http://gw.example:3000");
        assert!(page.contains(r#"{"gatewayUrl":"http://gw.example:3000"}"#));
        assert!(!page.contains(CONFIG_SLOT));
        let hostile = render("http://x/</script><script>alert(1)</script>");
        assert!(!hostile.contains("</script><script>alert"));
    }

    #[test]
    fn only_http_urls_are_accepted_and_lose_their_trailing_slash() {
        assert_eq!(
            check_gateway_url("https://shop.example/api/").unwrap(),
            "https://shop.example/api"
        );
        assert!(check_gateway_url("javascript:alert(1)").is_err());
        assert!(check_gateway_url("localhost:3000").is_err());
    }
}
