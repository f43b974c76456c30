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
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tracing::Instrument;

use super::edge::RequestId;
use super::hangup::{ClientSocket, unless_client_leaves};
use super::{Api, errors};
use crate::{Document, ErrorKind};

/// The invoke listener's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/plugins/{name}/invoke", post(invoke))
        .route("/v1/plugins", get(list))
        .route("/p/{name}", any(super::proxy::root))
        .route("/p/{name}/", any(super::proxy::root))
        .route("/p/{name}/{*rest}", any(super::proxy::path))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(errors::no_route)
        .method_not_allowed_fallback(errors::wrong_method)
        .with_state(api)
        .layer(axum::middleware::from_fn(super::edge::edge))
}

async fn invoke(
    State(api): State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    socket: Option<axum::Extension<ClientSocket>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path(name)) = name else { return errors::bad_path() };
    let mut hangup = socket.map(|axum::Extension(socket)| socket.watch());
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
        let body = match api.read_body(body, api.max_body).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let started = Instant::now();
        let input = Document { content_type, body: body.to_vec() };
        // hyper notices a client gone only by reading, which it stops doing
        // once a pipelined byte is in its buffer: the socket is watched.
        let invoked = api.runtime.invoke_on_own_task(&name, input);
        let Some((version, outcome)) = unless_client_leaves(hangup.as_mut(), invoked).await else {
            if api.request_line(64) {
                tracing::info!("the client hung up before the answer; the invocation was stopped");
            }
            return errors::client_gone();
        };
        api.metrics.invocation(&name, version.as_deref(), &outcome, started.elapsed());
        match outcome {
            Ok((output, slot)) => {
                let content_type = output_content_type(&output.content_type);
                ([(header::CONTENT_TYPE, content_type)], Body::new(Answer::new(output.body, slot))).into_response()
            }
            Err(error) => {
                let text = error.to_string();
                if api.request_line(text.len()) {
                    // Quoted: the message may quote (escaped) caller or guest text.
                    tracing::info!(kind = %error.kind(), error = ?text, "invocation failed");
                }
                errors::respond_to(&error)
            }
        }
    }
    .instrument(span)
    .await
}

/// An invocation's output on its way to the caller, in chunks of
/// [`Answer::CHUNK`], keeping the invocation's concurrency slot until its
/// last chunk is handed to hyper (or the client is gone): a client that
/// reads slowly holds the plugin's slot, not memory charged to no one.
struct Answer {
    rest: bytes::Bytes,
    slot: Option<crate::runtime::SlotHold>,
}

impl Answer {
    /// hyper's write buffer queues a chunk whole, so this is what of an
    /// answer is left unaccounted once the slot is given back.
    const CHUNK: usize = 64 * 1024;

    fn new(body: Vec<u8>, slot: crate::runtime::SlotHold) -> Self {
        Answer { rest: body.into(), slot: Some(slot) }
    }
}

impl hyper::body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            self.slot = None;
            return std::task::Poll::Ready(None);
        }
        let take = self.rest.len().min(Self::CHUNK);
        let chunk = self.rest.split_to(take);
        if self.rest.is_empty() {
            self.slot = None;
        }
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// The plugin's content type as a header, when it is a short line of
/// printable ASCII; otherwise `application/octet-stream` (a guest could
/// send 16 MiB, control characters or bidirectional text).
fn output_content_type(text: &str) -> HeaderValue {
    let plain = text.len() <= 256 && text.contains('/') && text.bytes().all(|b| (0x20..0x7f).contains(&b));
    plain
        .then(|| HeaderValue::from_str(text).ok())
        .flatten()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Answers before any body is read: `503` while the plugins are still
/// loading (a name that will exist in a moment is not "not found"), `413`
/// for a declared length over `max_body` (so `Expect: 100-continue` gets
/// its answer without sending the body).
pub(super) fn refuse_early(api: &Api, headers: &HeaderMap) -> Option<Response> {
    if !api.is_loaded() {
        let soon = Some(std::time::Duration::from_secs(1));
        return Some(errors::respond(ErrorKind::Unavailable, "the sidecar is still loading its plugins", soon));
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

pub(super) trait WithStatus {
    fn with_status(self, status: StatusCode) -> Self;
}

impl WithStatus for Response {
    fn with_status(mut self, status: StatusCode) -> Self {
        *self.status_mut() = status;
        self
    }
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

/// Ready once the plugins are loaded (see [`Api::readiness`]) and every
/// database answers; otherwise 503 with one line per problem. Only names
/// are given here; the reasons are in the log and the admin API.
async fn ready(State(api): State<Arc<Api>>) -> Response {
    let mut problems = api.readiness().problems;
    if api.is_loaded() {
        let health = api.databases.check().await;
        problems.extend(health.iter().filter(|h| !h.is_up()).map(|h| format!("database `{}` unreachable", h.alias)));
        if let Some(kv) = &api.services.kv
            && kv.readiness_problem().await.is_some()
        {
            problems.push("key-value store unavailable".to_string());
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body: String = problems.iter().map(|p| format!("{p}\n")).collect();
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let databases = api.databases.check().await;
    let kv = super::metrics::kv_usage(&api.services).await;
    let text = api.metrics.render(&api.runtime, &api.services, &databases, &kv);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// A JSON response.
pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::output_content_type;

    #[test]
    fn a_plugin_content_type_is_passed_on_only_when_plain_and_short() {
        assert_eq!(output_content_type("application/json; charset=utf-8"), "application/json; charset=utf-8");
        let long = format!("text/{}", "x".repeat(300));
        for bad in ["text/plain\u{202e}", "text/plain\r\nx-evil: 1", "plain", "", "text/\u{7f}", &long] {
            assert_eq!(output_content_type(bad), "application/octet-stream", "{bad:?}");
        }
    }
}
