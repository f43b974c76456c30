//! `/p/{name}/…`: `wasi:http/proxy` components served as they would be
//! under `wasmtime serve`, behind the same limits and policies as plugins.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use tracing::Instrument;

use super::edge::RequestId;
use super::hangup::{ClientSocket, EndsWithClient, unless_client_leaves};
use super::invoke::{WithStatus, refuse_early};
use super::{Api, errors};
use crate::ErrorKind;

/// `/p/{name}` is the component's `/`.
pub(super) async fn root(
    state: State<Arc<Api>>,
    name: Result<Path<String>, PathRejection>,
    request: axum::extract::Request,
) -> Response {
    let Ok(Path(name)) = name else { return errors::bad_path() };
    serve_proxy(state, name, request).await
}

pub(super) async fn path(
    state: State<Arc<Api>>,
    parts: Result<Path<(String, String)>, PathRejection>,
    request: axum::extract::Request,
) -> Response {
    // The decoded rest is not used: the component gets the raw target.
    let Ok(Path((name, _))) = parts else { return errors::bad_path() };
    serve_proxy(state, name, request).await
}

/// The request target a component sees, and the prefix stripped from it:
/// the *raw* path and query minus `/p/{name}` (not percent-decoded, so
/// `%2F`, `%3F`, `%23` and `%25` reach the component as the client sent
/// them, as under `wasmtime serve` or Spin). `/p/{name}` alone is `/`.
fn strip_prefix(target: &axum::http::uri::PathAndQuery) -> Option<(String, &str)> {
    let path = target.path();
    let after = path.strip_prefix("/p/")?;
    let (prefix, rest) = match after.find('/') {
        Some(at) => (&path[..3 + at], &after[at..]),
        None => (path, "/"),
    };
    let seen = match target.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    Some((seen, prefix))
}

/// Hands the request to a `wasi:http/proxy` plugin with the `/p/{name}`
/// prefix stripped from the raw target (see [`strip_prefix`]); the
/// stripped prefix is in `x-forwarded-prefix`.
async fn serve_proxy(State(api): State<Arc<Api>>, name: String, request: axum::extract::Request) -> Response {
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
    // hyper notices a client gone only by reading, which it stops doing
    // with a body the component has not read or a pipelined byte in its
    // buffer: the socket is watched instead.
    let mut hangup = request.extensions().get::<ClientSocket>().map(|socket| socket.watch());
    let (mut parts, body) = request.into_parts();
    let Some((seen, prefix)) = parts.uri.path_and_query().and_then(strip_prefix) else {
        return errors::bad_path();
    };
    let prefix = HeaderValue::from_str(prefix);
    parts.uri = match seen.parse() {
        Ok(uri) => uri,
        Err(_) => return errors::respond(ErrorKind::InvalidInput, "invalid path", None),
    };
    if let Ok(prefix) = prefix {
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
    let body = DeadlineBody::new(body, api.body_timeout).boxed_unsync();
    let handled = api.runtime.handle_http(&name, axum::http::Request::from_parts(parts, body)).instrument(span.clone());
    let Some((version, outcome)) = unless_client_leaves(hangup.as_mut(), handled).await else {
        if api.request_line(64) {
            let _entered = span.enter();
            tracing::info!("the client hung up before the answer; the component was stopped");
        }
        return errors::client_gone();
    };
    if let Err(error) = &outcome {
        let text = error.to_string();
        if api.request_line(text.len()) {
            let _entered = span.enter();
            tracing::info!(kind = %error.kind(), error = ?text, "request failed");
        }
    }
    api.metrics.invocation(&name, version.as_deref(), &outcome, started.elapsed());
    match outcome {
        // A 1xx (`101 Switching Protocols` would hand the connection over)
        // or a code past 599 cannot end a request.
        Ok(response) if !(200..=599).contains(&response.status().as_u16()) => {
            let code = response.status().as_u16();
            if api.request_line(64) {
                let _entered = span.enter();
                tracing::info!(status = code, "the component answered with a status that cannot end a request");
            }
            let message = format!("plugin `{name}` answered with status {code}, which cannot end a request");
            errors::respond(ErrorKind::Internal, &message, None).with_status(StatusCode::BAD_GATEWAY)
        }
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let body = body.map_err(|code| std::io::Error::other(format!("{code:?}")));
            match hangup {
                Some(hangup) => Response::from_parts(parts, Body::new(EndsWithClient::new(body, hangup))),
                None => Response::from_parts(parts, Body::new(body)),
            }
        }
        Err(error) => errors::respond_to(&error),
    }
}

/// A request body that must arrive within a deadline: past it, the
/// component's next read fails (`HTTP-request-body-size` is not it; a
/// timeout is), so a client that stalls its upload cannot keep a
/// component's slot for the plugin's whole timeout. No end or size hints:
/// wasmtime reads a `wasi:http@0.2` request body frame by frame only.
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
}

#[cfg(test)]
mod tests {
    use super::strip_prefix;

    #[test]
    fn the_prefix_is_stripped_from_the_raw_target() {
        for (target, seen, prefix) in [
            ("/p/x", "/", "/p/x"),
            ("/p/x/", "/", "/p/x"),
            ("/p/x?q=1", "/?q=1", "/p/x"),
            ("/p/x/a%2F..%2Fb?c=%3F", "/a%2F..%2Fb?c=%3F", "/p/x"),
            ("/p/x%20y/%252e", "/%252e", "/p/x%20y"),
            ("/p/x//", "//", "/p/x"),
        ] {
            let target: axum::http::uri::PathAndQuery = target.parse().unwrap();
            assert_eq!(strip_prefix(&target), Some((seen.to_string(), prefix)), "{target}");
        }
        assert_eq!(strip_prefix(&"/v1/x".parse().unwrap()), None);
    }
}
