//! What every request on either listener goes through first: the request
//! id, and the head-size bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The request id header, taken from the caller or generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, set by [`edge`].
#[derive(Clone)]
pub struct RequestId(pub HeaderValue);

/// What every request on either listener goes through first: a head over
/// [`super::serve::MAX_REQUEST_HEAD`] is refused with `431` (hyper's own
/// bound depends on how the head arrives), and every answer carries
/// `x-request-id`.
pub async fn edge(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let head = request.uri().to_string().len()
        + request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    let id = request_id(request.headers());
    let mut response = if head > super::serve::MAX_REQUEST_HEAD {
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head over 64 KiB\n").into_response()
    } else {
        request.extensions_mut().insert(RequestId(id.clone()));
        next.run(request).await
    };
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// The caller's request id if it is short and plain, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let given = headers.get(REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
    });
    if let Some(id) = given {
        return id.clone();
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let id = format!("{start:016x}-{:08x}", NEXT.fetch_add(1, Ordering::Relaxed));
    HeaderValue::from_str(&id).expect("hex digits and a dash")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower_service::Service;

    use super::{REQUEST_ID, edge};
    use crate::api::serve::MAX_REQUEST_HEAD;

    /// The status of `GET /x` with one field `x-big` of `len` bytes, as
    /// the middleware alone answers it (hyper's bound, which depends on
    /// how the head arrives, is not in the way here).
    async fn answer(len: usize) -> StatusCode {
        let mut router = axum::Router::new()
            .route("/x", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(edge));
        std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut router, cx)).await.unwrap();
        let request = Request::get("/x").header("x-big", "a".repeat(len)).body(Body::empty()).unwrap();
        let response: axum::response::Response = router.call(request).await.unwrap();
        assert!(response.headers().contains_key(REQUEST_ID), "every answer has an id, a refusal too");
        response.status()
    }

    #[tokio::test]
    async fn a_head_of_exactly_the_bound_is_served_and_one_byte_more_is_not() {
        // Counted as sent: the target (`/x`) and each field as
        // `name: value` and its line end (`x-big` + 4).
        let fits = MAX_REQUEST_HEAD - "/x".len() - "x-big".len() - 4;
        assert_eq!(answer(fits).await, StatusCode::OK);
        assert_eq!(answer(fits + 1).await, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
