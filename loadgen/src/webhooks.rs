//! Webhook deliveries, read from the webhook-publishers' Prometheus counter
//! `webhook_attempts_total{outcome="delivered"}` before and after a run (summed over every
//! instance: each counts only its own).

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("scraping {url}: {reason}")]
    Scrape { url: String, reason: String },
}

/// Sums `webhook_attempts_total` samples whose `outcome` label is `outcome`.
pub fn parse_attempts(metrics: &str, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("webhook_attempts_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Successful deliveries so far, according to the publishers at `urls` (comma-separated).
pub async fn delivered(http: &reqwest::Client, urls: &str) -> Result<f64, WebhookError> {
    let mut total = 0.0;
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        total += delivered_by(http, url).await?;
    }
    Ok(total)
}

/// Successful deliveries so far, according to the publisher at `url`.
async fn delivered_by(http: &reqwest::Client, url: &str) -> Result<f64, WebhookError> {
    let scrape = |reason: String| WebhookError::Scrape {
        url: url.to_owned(),
        reason,
    };
    let text = http
        .get(url)
        .send()
        .await
        .map_err(|e| scrape(e.to_string()))?
        .text()
        .await
        .map_err(|e| scrape(e.to_string()))?;
    Ok(parse_attempts(&text, "delivered"))
}
