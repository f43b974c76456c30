//! The invoke listener. It has no admin route at all, so nothing on it can
//! change what is loaded or granted.
//!
//! `POST /v1/plugins/{name}/invoke`: the request body is the input
//! document and its `content-type` is carried through (default
//! `application/octet-stream`); the response is the output document with
//! the plugin's content type. Errors are JSON (see [`super::errors`]).
//! Every response carries `x-request-id`: the caller's (1–128 of
//! `A-Za-z0-9._-`) or a generated one; the plugin's log events carry it
//! as a span field.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tracing::Instrument;

use super::{Api, errors};
use crate::{Document, ErrorKind};

/// The request id header, taken from the caller or generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The invoke listener's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/plugins/{name}/invoke", post(invoke))
        .route("/v1/plugins", get(list))
        .route("/p/{name}", any(proxy_root))
        .route("/p/{name}/", any(proxy_root))
        .route("/p/{name}/{*rest}", any(proxy))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(api)
        .layer(axum::middleware::from_fn(edge))
}

async fn invoke(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refusal) = refuse_early(&api, &headers) {
        return refusal;
    }
    // The id is checked or generated to be plain ASCII.
    let span = tracing::info_span!(
        "invoke",
        request_id = id.to_str().unwrap_or(""),
        // Quoted: a name from the path could otherwise pass for fields.
        plugin = ?crate::guest_text::escaped(&name, 64)
    );
    async {
        let read = tokio::time::timeout(api.body_timeout, axum::body::to_bytes(body, api.max_body)).await;
        let body = match read {
            Ok(Ok(body)) => body,
            Err(_slow) => {
                let message = format!("request body not received within {:?}", api.body_timeout);
                return errors::respond(ErrorKind::InvalidInput, &message, None)
                    .into_response()
                    .with_status(StatusCode::REQUEST_TIMEOUT);
            }
            Ok(Err(_)) => {
                let message = format!("request body over the limit of {} bytes, or not fully received", api.max_body);
                return errors::respond(ErrorKind::InvalidInput, &message, None)
                    .into_response()
                    .with_status(StatusCode::PAYLOAD_TOO_LARGE);
            }
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let started = Instant::now();
        let version = api.runtime.version(&name).unwrap_or_else(|| "unknown".into());
        let outcome = api.runtime.invoke(&name, Document { content_type, body: body.to_vec() }).await;
        let label = outcome.as_ref().map_or_else(|e| e.kind().as_str(), |_| "ok");
        // Unknown names are counted under one label: callers choose them.
        let plugin = if version == "unknown" { "(unknown)" } else { name.as_str() };
        api.metrics.invocation(plugin, &version, label, started.elapsed());
        match outcome {
            Ok(output) => {
                let content_type = HeaderValue::from_str(&output.content_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream"));
                ([(header::CONTENT_TYPE, content_type)], output.body).into_response()
            }
            Err(error) => {
                // Quoted: the message may quote (escaped) caller or guest text.
                tracing::info!(kind = %error.kind(), error = ?error.to_string(), "invocation failed");
                errors::respond(error.kind(), &error.to_string(), error.retry_after())
            }
        }
    }
    .instrument(span)
    .await
}

/// `/p/{name}` is the component's `/`.
async fn proxy_root(state: State<Arc<Api>>, Path(name): Path<String>, request: axum::extract::Request) -> Response {
    serve_proxy(state, name, String::new(), request).await
}

async fn proxy(
    state: State<Arc<Api>>,
    Path((name, rest)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    serve_proxy(state, name, rest, request).await
}

/// Hands the request to a `wasi:http/proxy` plugin with the `/p/{name}`
/// prefix stripped (the component sees `/{rest}?{query}`, as under
/// `wasmtime serve`); the stripped prefix is in `x-forwarded-prefix`.
async fn serve_proxy(
    State(api): State<Arc<Api>>,
    name: String,
    rest: String,
    request: axum::extract::Request,
) -> Response {
    use http_body_util::BodyExt;
    use wasmtime_wasi_http::Error as ErrorCode;

    if let Some(refusal) = refuse_early(&api, request.headers()) {
        return refusal;
    }
    let id = request.extensions().get::<RequestId>().map_or(HeaderValue::from_static(""), |r| r.0.clone());
    let span = tracing::info_span!(
        "http",
        request_id = id.to_str().unwrap_or(""),
        // Quoted: a name from the path could otherwise pass for fields.
        plugin = ?crate::guest_text::escaped(&name, 64)
    );
    let (mut parts, body) = request.into_parts();
    let path = match parts.uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    parts.uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return errors::respond(ErrorKind::InvalidInput, "invalid path", None),
    };
    if let Ok(prefix) = HeaderValue::from_str(&format!("/p/{name}")) {
        parts.headers.insert(HeaderName::from_static("x-forwarded-prefix"), prefix);
    }
    parts.headers.entry(header::HOST).or_insert(HeaderValue::from_static("localhost"));
    let max = api.max_body;
    let body = http_body_util::Limited::new(body, max)
        .map_err(move |e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ErrorCode::HttpRequestBodySize(Some(max as u64))
            } else {
                ErrorCode::HttpProtocolError
            }
        })
        .boxed_unsync();
    let started = Instant::now();
    let version = api.runtime.version(&name).unwrap_or_else(|| "unknown".into());
    let body = DeadlineBody::new(body, api.body_timeout).boxed_unsync();
    let outcome =
        api.runtime.handle_http(&name, axum::http::Request::from_parts(parts, body)).instrument(span.clone()).await;
    if let Err(error) = &outcome {
        let _entered = span.enter();
        tracing::info!(kind = %error.kind(), error = ?error.to_string(), "request failed");
    }
    let label = outcome.as_ref().map_or_else(|e| e.kind().as_str(), |_| "ok");
    let plugin = if version == "unknown" { "(unknown)" } else { name.as_str() };
    api.metrics.invocation(plugin, &version, label, started.elapsed());
    match outcome {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let body = body.map_err(|code| std::io::Error::other(format!("{code:?}")));
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => errors::respond(error.kind(), &error.to_string(), error.retry_after()),
    }
}

/// A request body that must arrive within a deadline: past it, the
/// component's next read fails (`HTTP-request-body-size` is not it; a
/// timeout is), so a client that stalls its upload cannot keep a
/// component's slot for the plugin's whole timeout.
struct DeadlineBody<B> {
    inner: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, within: std::time::Duration) -> Self {
        DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(within)) }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = wasmtime_wasi_http::Error> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, wasmtime_wasi_http::Error>>> {
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return std::task::Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                std::task::Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers before any body is read: `503` while the plugins are still
/// loading (a name that will exist in a moment is not "not found"), `413`
/// for a declared length over `max_body` (so `Expect: 100-continue` gets
/// its answer without sending the body).
fn refuse_early(api: &Api, headers: &HeaderMap) -> Option<Response> {
    if !api.is_ready() {
        return Some(errors::respond(ErrorKind::Unavailable, "the sidecar is still loading its plugins", None));
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api.max_body as u64) {
        let message = format!("request body over the limit of {} bytes", api.max_body);
        return Some(
            errors::respond(ErrorKind::InvalidInput, &message, None).with_status(StatusCode::PAYLOAD_TOO_LARGE),
        );
    }
    None
}

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

trait WithStatus {
    fn with_status(self, status: StatusCode) -> Self;
}

impl WithStatus for Response {
    fn with_status(mut self, status: StatusCode) -> Self {
        *self.status_mut() = status;
        self
    }
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

async fn list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse_early(&api, &headers) {
        return refusal;
    }
    let plugins: Vec<_> = api
        .runtime
        .summaries()
        .into_iter()
        .map(|p| serde_json::json!({ "name": p.name, "version": p.version, "description": p.description, "sha256": p.sha256, "kind": p.kind }))
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "plugins": plugins }))
}

async fn ready(State(api): State<Arc<Api>>) -> Response {
    if api.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading plugins\n").into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let text = api.metrics.render(&api.runtime);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// A JSON response.
pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}
