//! Errors as the HTTP API returns them: one status per error kind (the
//! mapping `../shared/DESIGN.md` fixes), a JSON body `{kind, message,
//! retry_after_ms}`, and `Retry-After` whenever there is a hint.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::{ErrorKind, InvokeError};

/// The longest `Retry-After` the API passes on.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The status for an error kind. `quota-exceeded` is 507 (the request
/// cannot be met with the resources granted), `rate-limited` 429.
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a caller is told about `error`. A crash's trap and backtrace and a
/// load refusal's file and reason are for the operator: the log has them
/// (with the request id), the caller gets the kind and where to look.
pub fn public_message(error: &InvokeError) -> String {
    match error {
        InvokeError::Trap { plugin, .. } => {
            format!("plugin `{plugin}` crashed; the sidecar's log has the details (look for this x-request-id)")
        }
        InvokeError::Refused(refusal) => format!(
            "plugin `{}` was refused at load; the sidecar's log and `gatehouse policy check` say why",
            refusal.plugin
        ),
        other => other.to_string(),
    }
}

/// The response for a failed invocation (see [`public_message`]).
pub fn respond_to(error: &InvokeError) -> Response {
    respond(error.kind(), &public_message(error), error.retry_after())
}

/// A path whose parameters are not UTF-8 (the path is not quoted back).
pub fn bad_path() -> Response {
    respond(ErrorKind::InvalidInput, "the path is not valid: its segments must be UTF-8", None)
}

/// What a call whose client hung up answers: nobody reads it (hyper finds
/// the connection closed), so it only ends the handler.
pub fn client_gone() -> Response {
    respond(ErrorKind::InvalidInput, "the client hung up", None)
}

/// No route: the same JSON shape as every other error.
pub async fn no_route() -> Response {
    respond(ErrorKind::NotFound, "no such route", None)
}

/// A route that exists, with another method.
pub async fn wrong_method() -> Response {
    let mut response = respond(ErrorKind::InvalidInput, "this route does not take that method", None);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// An error response. `message` must already be safe to show (the
/// runtime's errors escape and bound the guest text they quote).
pub fn respond(kind: ErrorKind, message: &str, retry_after: Option<Duration>) -> Response {
    // Transient failures always say when to come back; rate limits without
    // a hint of their own get one second.
    let retry_after = retry_after.or((kind == ErrorKind::RateLimited).then_some(Duration::from_secs(1)));
    // A guest's own error may carry any hint: keep it sensible.
    let retry_after = retry_after.map(|d| d.min(MAX_RETRY_AFTER));
    let retry_after_ms = retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let body = serde_json::json!({ "kind": kind.as_str(), "message": message, "retry_after_ms": retry_after_ms });
    let mut response = (status(kind), body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(ms) = retry_after_ms {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_design() {
        let expected = [
            (ErrorKind::Denied, 403),
            (ErrorKind::InvalidInput, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Conflict, 409),
            (ErrorKind::QuotaExceeded, 507),
            (ErrorKind::RateLimited, 429),
            (ErrorKind::Timeout, 504),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Internal, 500),
        ];
        for (kind, code) in expected {
            assert_eq!(status(kind).as_u16(), code, "{kind}");
        }
    }

    #[test]
    fn rate_limits_always_carry_retry_after() {
        let response = respond(ErrorKind::RateLimited, "slow down", None);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = respond(ErrorKind::RateLimited, "slow down", Some(Duration::from_millis(2500)));
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert!(respond(ErrorKind::Denied, "no", None).headers().get(header::RETRY_AFTER).is_none());
        // A guest's hint of u64::MAX ms is cut to an hour.
        let response = respond(ErrorKind::Timeout, "later", Some(Duration::from_millis(u64::MAX)));
        assert_eq!(response.headers()[header::RETRY_AFTER], "3600");
    }
}
