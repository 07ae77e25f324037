//! JSON request bodies whose every failure is a problem+json answer: the `ValidJson<T>`
//! extractor (the gateway), and [`parse`] and [`invalid`] for a handler that reads the body
//! itself (the webhook-publisher, whose checks are async).
//!
//! 415 when the body is not declared JSON, 413 when it is over the size limit, 400 when it is
//! not JSON at all, 422 when it is JSON of the wrong shape (missing field, wrong type, unknown
//! field) or fails validation; 422 bodies list every offending field. The 413 names the limit
//! in bytes, which [`body_limit`] tells the extractor along with enforcing it.

use crate::problem::{FieldError, Problem};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

/// Field-level checks beyond what the types say.
pub trait Validate {
    fn validate(&self) -> Vec<FieldError>;
}

pub struct ValidJson<T>(pub T);

/// The request body limit (`MAX_BODY_BYTES`), as a request extension for the 413's detail.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The layers that refuse bodies over `max_bytes` and let [`ValidJson`] say so in bytes.
pub fn body_limit(max_bytes: usize) -> (DefaultBodyLimit, Extension<BodyLimit>) {
    (
        DefaultBodyLimit::max(max_bytes),
        Extension(BodyLimit(max_bytes)),
    )
}

impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(&req) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let limit = req.extensions().get::<BodyLimit>().copied();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                let detail = match limit {
                    Some(BodyLimit(max)) => {
                        format!("the request body is larger than the limit of {max} bytes")
                    }
                    None => rejection.body_text(),
                };
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "Body too large",
                    detail,
                )
            } else {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable-body",
                    "Unreadable body",
                    rejection.body_text(),
                )
            }
        })?;
        let value = parse::<T>(&bytes)?;
        let errors = value.validate();
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        Ok(Self(value))
    }
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parses JSON, telling a syntax error (400) from a shape error (422, with the field's path).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return malformed(&inner);
        }
        let field = if path == "." {
            first_word_in_backticks(&inner.to_string()).unwrap_or(path)
        } else {
            path
        };
        invalid(vec![FieldError {
            field,
            message: strip_position(&inner.to_string()),
        }])
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(e: &serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "malformed-json",
        "Malformed JSON",
        format!("the body is not valid JSON: {e}"),
    )
}

/// 422: the body is JSON of the right shape, but these fields are wrong.
pub fn invalid(errors: Vec<FieldError>) -> Problem {
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "Invalid request",
        format!("invalid fields: {}", fields.join(", ")),
    )
    .with_errors(errors)
}

/// serde names a missing field as "missing field `quantity` at line 1 column 20".
fn first_word_in_backticks(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        quantity: i64,
    }

    #[test]
    fn syntax_is_400_shape_is_422() {
        assert_eq!(parse::<Sample>(b"{").unwrap_err().status, 400);
        assert_eq!(
            parse::<Sample>(b"{\"quantity\": 1} trailing")
                .unwrap_err()
                .status,
            400
        );
        let missing = parse::<Sample>(b"{}").unwrap_err();
        assert_eq!(
            (missing.status, missing.errors[0].field.as_str()),
            (422, "quantity")
        );
        let wrong = parse::<Sample>(b"{\"quantity\": \"3\"}").unwrap_err();
        assert_eq!(
            (wrong.status, wrong.errors[0].field.as_str()),
            (422, "quantity")
        );
        let unknown = parse::<Sample>(b"{\"quantity\": 3, \"x\": 1}").unwrap_err();
        assert_eq!(unknown.status, 422);
        assert!(
            unknown.errors[0].message.contains("unknown field `x`"),
            "{:?}",
            unknown.errors
        );
    }
}
