//! Why an outbound request failed, and how each door reports it: the
//! `http-client` interface returns the WIT `error` record (kind, message,
//! retry hint); `wasi:http` returns its standard error codes, and answers
//! a rate-limited request with a `429` carrying `retry-after` (the only
//! way its vocabulary can say when to come back).

use std::time::Duration;

use super::resolve::AddressRefused;
use super::transport::MAX_RESPONSE_HEAD;
use super::url::UrlError;
use crate::error::{ErrorKind, GuestError};

/// An outbound request that did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The plugin's policy has no `[http]` section.
    #[error("this plugin has no [http] grant")]
    NotGranted,
    /// The URL is malformed or refused before any policy check.
    #[error("{0}")]
    Url(#[from] UrlError),
    /// The policy does not allow this request.
    #[error("{0}")]
    Denied(String),
    /// The SSRF guard refused every address the host resolved to.
    #[error("{0}")]
    AddressRefused(AddressRefused),
    /// The request is malformed (bad method, header name or value).
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than the policy allows.
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge {
        /// Body size, or the bytes read before giving up.
        size: u64,
        /// The policy's `max_request`.
        limit: u64,
    },
    /// The response body is larger than the policy allows.
    #[error("response body exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The policy's `max_response`.
        limit: u64,
    },
    /// The plugin is over its request rate.
    #[error("request rate limit of {rate} reached; retry in {} ms", retry_after.as_millis())]
    RateLimited {
        /// The policy's rate, for the message.
        rate: String,
        /// When the next request would be allowed.
        retry_after: Duration,
    },
    /// The response's header section is larger than allowed: over the
    /// transport's fixed bound (`transport::MAX_RESPONSE_HEAD`), or over the
    /// policy's `max_response`, which counts header bytes too.
    #[error("response headers exceed the limit of {limit} bytes")]
    ResponseHeadersTooLarge {
        /// The bound that was exceeded.
        limit: u64,
    },
    /// The redirect chain is longer than the policy allows.
    #[error("stopped after {limit} redirect(s), the policy's max_redirects")]
    TooManyRedirects {
        /// The policy's `max_redirects`.
        limit: u32,
    },
    /// The upstream sent more informational (`1xx`) heads before its
    /// answer than [`super::transport::MAX_INFORMATIONAL`].
    #[error("the upstream sent more than {limit} informational (1xx) heads")]
    TooManyInformational {
        /// The bound.
        limit: usize,
    },
    /// The upstream answered with an informational status (`101
    /// Switching Protocols`): no request through the gateway asks for an
    /// upgrade, and such a status cannot end a request.
    #[error("the upstream answered {status}, which cannot end a request (nothing asked to switch protocols)")]
    InformationalAnswer {
        /// The status it answered with.
        status: u16,
    },
    /// The invocation already has as many `wasi:http` requests open (sent,
    /// or answered with a response it has not dropped) as its memory allows.
    #[error("{limit} outgoing requests are already open in this invocation (its [limits] memory sets how many)")]
    TooManyOpenRequests {
        /// The bound.
        limit: usize,
    },
    /// The request did not complete within its deadline.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The upstream could not be reached or broke the connection.
    #[error("{0}")]
    Unavailable(String),
}

impl HttpError {
    /// The shared error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HttpError::NotGranted
            | HttpError::Denied(_)
            | HttpError::AddressRefused(_)
            | HttpError::TooManyRedirects { .. }
            | HttpError::Url(UrlError::Credentials) => ErrorKind::Denied,
            HttpError::Url(_) | HttpError::BadRequest(_) | HttpError::RequestTooLarge { .. } => ErrorKind::InvalidInput,
            HttpError::ResponseTooLarge { .. }
            | HttpError::ResponseHeadersTooLarge { .. }
            | HttpError::TooManyOpenRequests { .. } => ErrorKind::QuotaExceeded,
            HttpError::RateLimited { .. } => ErrorKind::RateLimited,
            HttpError::Timeout(_) => ErrorKind::Timeout,
            HttpError::Unavailable(_)
            | HttpError::TooManyInformational { .. }
            | HttpError::InformationalAnswer { .. } => ErrorKind::Unavailable,
        }
    }

    /// When to retry, for rate limiting.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The WIT `error` record the `http-client` interface returns.
    pub fn to_guest(&self) -> GuestError {
        GuestError {
            kind: self.kind(),
            message: self.to_string(),
            retry_after_ms: self.retry_after().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
        }
    }

    /// The closest `wasi:http` error code. Only the code reaches the guest;
    /// the message goes to the sidecar's log.
    pub fn to_wasi(&self) -> wasmtime_wasi_http::Error {
        use wasmtime_wasi_http::Error as Wasi;
        match self {
            HttpError::AddressRefused(_) => Wasi::DestinationIpProhibited,
            HttpError::NotGranted | HttpError::Denied(_) | HttpError::Url(UrlError::Credentials) => {
                Wasi::HttpRequestDenied
            }
            HttpError::Url(UrlError::TooLong) => Wasi::HttpRequestUriTooLong,
            HttpError::Url(_) => Wasi::HttpRequestUriInvalid,
            HttpError::BadRequest(_) => Wasi::HttpProtocolError,
            HttpError::RequestTooLarge { limit, .. } => Wasi::HttpRequestBodySize(Some(*limit)),
            HttpError::ResponseTooLarge { limit } => Wasi::HttpResponseBodySize(Some(*limit)),
            HttpError::ResponseHeadersTooLarge { limit } => {
                Wasi::HttpResponseHeaderSectionSize(Some(u32::try_from(*limit).unwrap_or(u32::MAX)))
            }
            HttpError::TooManyRedirects { .. } => Wasi::LoopDetected,
            HttpError::Timeout(_) => Wasi::HttpResponseTimeout,
            HttpError::Unavailable(_) => Wasi::DestinationUnavailable,
            HttpError::TooManyInformational { .. } | HttpError::InformationalAnswer { .. } => Wasi::HttpProtocolError,
            HttpError::TooManyOpenRequests { .. } => Wasi::ConnectionLimitReached,
            // Answered with a synthetic 429 instead; see `host`.
            HttpError::RateLimited { .. } => Wasi::ConnectionLimitReached,
        }
    }
}

/// Classifies a transport failure. The SSRF guard's refusal travels inside
/// the connector's error chain; find it to report `denied`, not a
/// connection failure. hyper refuses a response head over the transport's
/// bound as a parse error; report that as the size limit it is.
pub(super) fn from_transport(error: &(dyn std::error::Error + 'static)) -> HttpError {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return HttpError::AddressRefused(refused.clone());
        }
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse_too_large) {
            return HttpError::ResponseHeadersTooLarge { limit: MAX_RESPONSE_HEAD as u64 };
        }
        source = e.source();
    }
    HttpError::Unavailable(render_chain(error))
}

/// `error: cause: cause`, skipping repeated text.
fn render_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's error table: only `rate-limited` says when to retry, so
    /// a plugin passing on any other refusal gives its caller no hint.
    #[test]
    fn only_a_rate_limit_carries_a_retry_hint() {
        let limited = HttpError::RateLimited { rate: "2/m".into(), retry_after: Duration::from_millis(2500) };
        assert_eq!(limited.to_guest().retry_after_ms, Some(2500));
        let due_now = HttpError::RateLimited { rate: "2/m".into(), retry_after: Duration::ZERO };
        assert_eq!(due_now.to_guest().retry_after_ms, Some(1), "a hint of 0 ms would read as none");
        let others = [
            HttpError::NotGranted,
            HttpError::Denied("no rule".into()),
            HttpError::BadRequest("bad header".into()),
            HttpError::RequestTooLarge { size: 2, limit: 1 },
            HttpError::ResponseTooLarge { limit: 1 },
            HttpError::ResponseHeadersTooLarge { limit: 1 },
            HttpError::TooManyRedirects { limit: 1 },
            HttpError::TooManyInformational { limit: 1 },
            HttpError::InformationalAnswer { status: 101 },
            HttpError::TooManyOpenRequests { limit: 1 },
            HttpError::Timeout(Duration::from_secs(1)),
            HttpError::Unavailable("refused".into()),
        ];
        for error in others {
            assert_eq!(error.retry_after(), None, "{error}");
            assert_eq!(error.to_guest().retry_after_ms, None, "{error}");
        }
    }
}
