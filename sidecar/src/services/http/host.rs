//! The two doors. Each translates a guest request into an
//! [`OutboundRequest`] for the same [`PluginHttp`] pipeline and the outcome
//! back into its own vocabulary.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tracing::Instrument;
use wasmtime::component::HasData;
use wasmtime_wasi_http::{ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks};

use super::error::HttpError;
use super::gateway::{InboundResponse, OutboundRequest, PluginHttp};
use super::policy::HttpPolicy;
use crate::bindings::gatehouse::services::http_client::{Host, Request, Response};
use crate::error::GuestError;

/// Per-invocation state of both doors: the plugin's gateway handle, or
/// `None` when its policy has no `[http]` section (such a plugin is refused
/// at load if it imports either door, so `None` is a second line of defence).
#[derive(Clone, Default)]
pub struct HttpHost {
    plugin: Option<Arc<PluginHttp>>,
}

impl HttpHost {
    /// The doors for a plugin with (or without) an HTTP grant.
    pub fn new(plugin: Option<Arc<PluginHttp>>) -> Self {
        HttpHost { plugin }
    }
}

/// Links `gatehouse:services/http-client` against [`HttpHost`].
pub struct HttpClientService;

impl HasData for HttpClientService {
    type Data<'a> = &'a mut HttpHost;
}

impl Host for HttpHost {
    async fn send(&mut self, request: Request) -> wasmtime::Result<Result<Response, GuestError>> {
        let Some(plugin) = self.plugin.clone() else {
            return Ok(Err(HttpError::NotGranted.to_guest()));
        };
        let outbound = OutboundRequest {
            method: request.method,
            url: request.url,
            headers: request.headers.into_iter().map(|(name, value)| (name, value.into_bytes())).collect(),
            body: request.body.map(Bytes::from),
            timeout: request.timeout_ms.map(Duration::from_millis),
        };
        Ok(plugin.send(outbound).await.map(into_wit_response).map_err(|e| e.to_guest()))
    }
}

fn into_wit_response(response: InboundResponse) -> Response {
    let headers = response
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    Response { status: response.status.as_u16(), headers, body: response.body.into() }
}

type ResponseFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpHost {
    /// Asked for every header a guest sets. Overridden (not left to the
    /// default, which builds `forbidden_header_filter`'s closure per call)
    /// because the wasi:http types ask it once per header.
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        wasi_header_forbidden(self.plugin.as_deref(), name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        let plugin = self.plugin.clone();
        Arc::new(move |name| wasi_header_forbidden(plugin.as_deref(), name))
    }

    /// The URL carries the authority; a guest-set `host` could disagree.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> ResponseFuture {
        let plugin = self.plugin.clone();
        Box::new(
            async move {
                let Some(plugin) = plugin else {
                    return Err(HttpError::NotGranted.to_wasi());
                };
                // A guest that never finishes its body must not hold the
                // request open past the policy's deadline.
                let timeout = plugin.policy().timeout;
                let started = std::time::Instant::now();
                let (method, url) = (request.method().to_string(), request.uri().to_string());
                let read = tokio::time::timeout(timeout, read_wasi_request(request, options, plugin.policy()));
                let outbound = match read.await.unwrap_or(Err(HttpError::Timeout(timeout))) {
                    Ok(outbound) => outbound,
                    Err(error) => {
                        let wasi = error.to_wasi();
                        plugin.refused_at_door(&method, &url, error, started);
                        return Err(wasi);
                    }
                };
                let response = match plugin.send(outbound).await {
                    Ok(response) => response,
                    Err(error @ HttpError::RateLimited { .. }) => too_many_requests(&error),
                    Err(error) => return Err(error.to_wasi()),
                };
                let mut reply =
                    http::Response::new(Full::new(response.body).map_err(|never| match never {}).boxed_unsync());
                *reply.status_mut() = response.status;
                *reply.headers_mut() = response.headers;
                let io_done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((reply, io_done))
            }
            // wasmtime-wasi-http runs this on a task of its own: keep the
            // invocation's span, so the log lines carry its request id.
            .instrument(tracing::Span::current()),
        )
    }
}

/// wasmtime-wasi-http's forbidden headers, and the policy's denied ones
/// except `content-length`: standard guests may set it, and the body is
/// read in full before sending anyway.
fn wasi_header_forbidden(plugin: Option<&PluginHttp>, name: &HeaderName) -> bool {
    wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
        || plugin
            .is_some_and(|p| *name != http::header::CONTENT_LENGTH && p.policy().check_header(name.as_str()).is_err())
}

/// Reads the guest's body (up to the request limit) and flattens the
/// request into the pipeline's form.
async fn read_wasi_request(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: &HttpPolicy,
) -> Result<OutboundRequest, HttpError> {
    let (parts, body) = request.into_parts();
    let limit = policy.max_request;
    let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            HttpError::RequestTooLarge { size: limit + 1, limit }
        } else {
            HttpError::BadRequest(format!("reading the request body: {e}"))
        }
    })?;
    let body = body.to_bytes();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| **name != http::header::CONTENT_LENGTH)
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    // request-options can only shorten the deadline: connect plus
    // first-byte time, whichever are set.
    let timeout = options.and_then(|o| match (o.connect_timeout, o.first_byte_timeout) {
        (None, None) => None,
        (connect, first_byte) => Some(connect.unwrap_or_default() + first_byte.unwrap_or_default()),
    });
    Ok(OutboundRequest {
        method: parts.method.to_string(),
        url: parts.uri.to_string(),
        headers,
        body: (!body.is_empty() || matches!(parts.method.as_str(), "POST" | "PUT" | "PATCH")).then_some(body),
        timeout,
    })
}

/// `wasi:http` has no rate-limit error code, so a rate-limited request gets
/// the answer an egress proxy would give: `429` with `retry-after` (whole
/// seconds, rounded up) and the exact figure in `gatehouse-retry-after-ms`.
fn too_many_requests(error: &HttpError) -> InboundResponse {
    let retry_ms = error.to_guest().retry_after_ms.unwrap_or(1);
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_ms.div_ceil(1000)));
    headers.insert(HeaderName::from_static("gatehouse-retry-after-ms"), HeaderValue::from(retry_ms));
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    InboundResponse { status: StatusCode::TOO_MANY_REQUESTS, headers, body: Bytes::from(error.to_string()) }
}
