//! One HTTP attempt of one delivery, and what it means for the delivery.
//!
//! The request is signed per Standard Webhooks: `webhook-id` is the event's id (the same on every
//! attempt, so the receiver can deduplicate), `webhook-timestamp` is the time of this attempt
//! (receivers refuse stale ones), `webhook-signature` covers both and the exact body bytes.
//! Only a 2xx is success; redirects are not followed (the client has no redirect policy), a
//! 3xx is a failure like any other. Which client sends, and which addresses it may reach, is
//! `client.rs`.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use secrecy::ExposeSecret;
use webhook_signing::Secret;

use crate::client::{Clients, describe};
use crate::schedule::{RetrySchedule, parse_retry_after};
use crate::store::{AttemptRecord, Job, Next, now_ms};

/// At most this much of a response body is kept in the history.
pub const RESPONSE_BODY_LIMIT: usize = 1024;

/// The outcome of one request besides the history record.
pub struct Sent {
    pub record: AttemptRecord,
    pub retry_after: Option<Duration>,
}

impl Sent {
    /// An attempt that got no HTTP answer.
    fn no_answer(started: Instant, error: String) -> Self {
        Self {
            record: AttemptRecord {
                latency_ms: elapsed_ms(started),
                error: Some(error),
                ..Default::default()
            },
            retry_after: None,
        }
    }
}

/// Sends the job's request once.
pub async fn send(clients: &Clients, job: &Job) -> Sent {
    let started = Instant::now();
    let (client, url) = match clients.for_url(&job.url) {
        Ok(found) => found,
        Err(e) => return Sent::no_answer(started, e),
    };
    let request = match signed_request(client, url, job) {
        Ok(request) => request,
        Err(e) => return Sent::no_answer(started, e),
    };
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Sent::no_answer(started, describe(&e)),
    };
    let status = response.status();
    let retry_after = retry_after(status.as_u16(), response.headers());
    let (body, body_error) = read_truncated(&mut response).await;
    let error = if status.is_success() {
        body_error
    } else {
        Some(format!("the endpoint answered {status}"))
    };
    Sent {
        record: AttemptRecord {
            status_code: Some(status.as_u16()),
            latency_ms: elapsed_ms(started),
            error,
            response_body: body,
        },
        retry_after,
    }
}

/// The POST of one attempt, signed with this attempt's timestamp.
fn signed_request(
    client: &reqwest::Client,
    url: reqwest::Url,
    job: &Job,
) -> Result<reqwest::RequestBuilder, String> {
    let secret = Secret::parse(job.secret.expose_secret())
        .map_err(|e| format!("the subscription's secret is unusable: {e}"))?;
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = secret.sign(&job.webhook_id, timestamp, &job.payload);
    let request = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    // The order's trace goes on into the subscriber (W3C trace context).
    let request = match &job.traceparent {
        Some(traceparent) => request.header("traceparent", traceparent),
        None => request,
    };
    Ok(request.body(job.payload.clone()))
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn retry_after(status: u16, headers: &HeaderMap) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Reads at most [`RESPONSE_BODY_LIMIT`] bytes of the body; the rest is not downloaded.
async fn read_truncated(response: &mut reqwest::Response) -> (Option<String>, Option<String>) {
    let mut kept = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LIMIT - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if kept.len() >= RESPONSE_BODY_LIMIT {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return (
                    Some(kept_text(&kept)),
                    Some(format!("reading the response failed: {e}")),
                );
            }
        }
    }
    (Some(kept_text(&kept)).filter(|t| !t.is_empty()), None)
}

/// The kept bytes of a response body as text to store: invalid UTF-8 and NUL bytes (which a
/// PostgreSQL `text` column refuses, so the attempt could never be recorded and the delivery
/// would be sent again after every lease) become U+FFFD.
fn kept_text(kept: &[u8]) -> String {
    String::from_utf8_lossy(kept).replace('\0', "\u{FFFD}")
}

/// Decides where the delivery goes after an attempt.
pub fn next_step(job: &Job, sent: &Sent, schedule: &RetrySchedule) -> Next {
    match sent.record.status_code {
        Some(code) if (200..300).contains(&code) => return Next::Delivered,
        Some(410) => return Next::Gone,
        _ => {}
    }
    if job.manual {
        // A replay is one attempt on the operator's request; it does not restart the schedule.
        return Next::Failed("the manual replay failed".to_owned());
    }
    let failed = job.scheduled_attempts + 1;
    match schedule.delay_after(failed, sent.retry_after) {
        Some(delay) => Next::RetryAt(now_ms() + i64::try_from(delay.as_millis()).unwrap_or(0)),
        None => Next::Failed(format!(
            "gave up after {} attempts; last: {}",
            failed,
            sent.record.error.as_deref().unwrap_or("unknown error")
        )),
    }
}
