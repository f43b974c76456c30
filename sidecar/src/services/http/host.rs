//! The two doors. Each translates a guest request into an
//! [`OutboundRequest`] for the same [`PluginHttp`] pipeline and the outcome
//! back into its own vocabulary.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use wasmtime::component::HasData;
use wasmtime_wasi_http::{ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks};

use super::error::HttpError;
use super::gateway::{InboundResponse, OutboundRequest, PluginHttp};
use super::policy::HttpPolicy;
use crate::bindings::gatehouse::services::http_client::{Host, Request, Response};
use crate::error::GuestError;
use crate::runtime::host_budget;

/// Per-invocation state of both doors: the plugin's gateway handle, or
/// `None` when its policy has no `[http]` section (such a plugin is refused
/// at load if it imports either door, so `None` is a second line of defence).
#[derive(Clone)]
pub struct HttpHost {
    plugin: Option<Arc<PluginHttp>>,
    /// `wasi:http` requests this invocation may have open: a permit is
    /// held from hand-over until the response (body included) is dropped.
    open: Arc<Semaphore>,
    open_limit: usize,
}

impl HttpHost {
    /// The doors for a plugin with (or without) an HTTP grant, allowing
    /// `open_limit` open `wasi:http` requests at once.
    pub fn new(plugin: Option<Arc<PluginHttp>>, open_limit: usize) -> Self {
        HttpHost { plugin, open: Arc::new(Semaphore::new(open_limit)), open_limit }
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

/// Resolves once the response body has been sent to the guest; ours is
/// complete before the response is handed over.
type IoDone = Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>;
type Sent = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoDone)>;
type ResponseFuture = Box<dyn Future<Output = Sent> + Send>;

fn ready(sent: Sent) -> ResponseFuture {
    Box::new(std::future::ready(sent))
}

fn io_done() -> IoDone {
    Box::new(std::future::ready(Ok(())))
}

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

    /// What one outgoing body may buffer in the host: one write of at most
    /// 64 KiB waiting (the channel holds one more), not wasmtime's 1 MiB,
    /// so a handle holds at most `host_budget::MAX_BYTES_PER_HANDLE`.
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        host_budget::OUTGOING_BODY_CHUNKS
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        host_budget::OUTGOING_BODY_CHUNK
    }

    /// The URL carries the authority; a guest-set `host` could disagree.
    fn set_host_header(&mut self) -> bool {
        false
    }

    /// The token and the open-request slot are taken here, when the guest
    /// hands the request over and before its body is read, and the one
    /// deadline (the policy's `timeout`) runs from here too: reading the
    /// body and sending share it.
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> ResponseFuture {
        let Some(plugin) = self.plugin.clone() else {
            return ready(Err(HttpError::NotGranted.to_wasi()));
        };
        let started = Instant::now();
        let (method, url) = (request.method().to_string(), request.uri().to_string());
        let refuse = |error: HttpError| -> ResponseFuture {
            let wasi = error.to_wasi();
            plugin.refused_at_door(&method, &url, error, started);
            ready(Err(wasi))
        };
        let Ok(slot) = self.open.clone().try_acquire_owned() else {
            return refuse(HttpError::TooManyOpenRequests { limit: self.open_limit });
        };
        if let Err(error) = plugin.take_door_token() {
            let answer = too_many_requests(&error);
            plugin.refused_at_door(&method, &url, error, started);
            return ready(Ok((into_wasi_response(answer, slot), io_done())));
        }
        let deadline = started + plugin.policy().timeout;
        Box::new(
            async move {
                let reading = read_wasi_request(request, options, plugin.policy());
                let read = tokio::time::timeout_at(deadline.into(), reading);
                let mut outbound = match read.await.unwrap_or(Err(HttpError::Timeout(plugin.policy().timeout))) {
                    Ok(outbound) => outbound,
                    Err(error) => {
                        // The token stays spent: it paid for reading the body.
                        let wasi = error.to_wasi();
                        plugin.refused_at_door(&method, &url, error, started);
                        return Err(wasi);
                    }
                };
                // What is left of the deadline, or less if the guest asked.
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                outbound.timeout = Some(outbound.timeout.map_or(left, |asked| asked.min(left)));
                let response = match plugin.send_prepaid(outbound).await {
                    Ok(response) => response,
                    Err(error @ HttpError::RateLimited { .. }) => too_many_requests(&error),
                    Err(error) => return Err(error.to_wasi()),
                };
                Ok((into_wasi_response(response, slot), io_done()))
            }
            // wasmtime-wasi-http runs this on a task of its own: keep the
            // invocation's span, so the log lines carry its request id.
            .instrument(tracing::Span::current()),
        )
    }
}

/// The response as wasi:http hands it to the guest. Its body holds the
/// request's open slot until the guest has read or dropped it, so unread
/// responses count against the invocation's open requests.
fn into_wasi_response(response: InboundResponse, slot: OwnedSemaphorePermit) -> http::Response<WasiBody> {
    let body = SlotBody { body: Some(response.body), _slot: slot };
    let mut reply = http::Response::new(body.boxed_unsync());
    *reply.status_mut() = response.status;
    *reply.headers_mut() = response.headers;
    reply
}

/// A complete response body that keeps an open-request slot while it is
/// alive. wasmtime reads it frame by frame only (no `is_end_stream` or
/// `size_hint`: the upstream's own headers already say its length).
struct SlotBody {
    body: Option<Bytes>,
    _slot: OwnedSemaphorePermit,
}

impl hyper::body::Body for SlotBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.body.take().filter(|b| !b.is_empty()).map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// wasmtime-wasi-http's forbidden headers, and the policy's denied ones
/// except `content-length`: standard guests may set it, and the body is
/// read in full before sending anyway. wasmtime asks this for the fields a
/// component receives too (a proxy component's request, a response), so
/// the forwarding family, which needs a grant only to be sent, is checked
/// by the gateway instead.
fn wasi_header_forbidden(plugin: Option<&PluginHttp>, name: &HeaderName) -> bool {
    wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
        || plugin
            .is_some_and(|p| *name != http::header::CONTENT_LENGTH && p.policy().check_field(name.as_str()).is_err())
}

/// Reads the guest's body (up to the request limit, or not at all for a
/// `GET` without `body_methods`) and flattens the request into the
/// pipeline's form.
async fn read_wasi_request(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: &HttpPolicy,
) -> Result<OutboundRequest, HttpError> {
    let (parts, body) = request.into_parts();
    // A method that carries no body unless granted gets a limit of 0: its
    // first byte is refused, so nothing is buffered.
    let (limit, no_body) = match policy.check_body(parts.method.as_str()) {
        Ok(()) => (policy.max_request, None),
        Err(denial) => (0, Some(denial)),
    };
    let body =
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await.map_err(|e| {
            match (e.downcast_ref::<LengthLimitError>(), no_body) {
                (Some(_), Some(denial)) => HttpError::Denied(denial.0),
                (Some(_), None) => HttpError::RequestTooLarge { size: limit + 1, limit },
                (None, _) => HttpError::BadRequest(format!("reading the request body: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, body: &'static [u8]) -> http::Request<WasiBody> {
        let body = http_body_util::Full::new(Bytes::from_static(body)).map_err(|never| match never {}).boxed_unsync();
        http::Request::builder().method(method).uri("http://upstream.test/").body(body).unwrap()
    }

    /// The body a guest streams is read up to `max_request` and no
    /// further; past it the refusal says more than the limit arrived.
    #[tokio::test]
    async fn a_wasi_body_is_read_up_to_max_request() {
        let mut policy = HttpPolicy::new(Vec::new());
        policy.max_request = 16;
        let fits = read_wasi_request(request("POST", &[b'a'; 16]), None, &policy).await.unwrap();
        assert_eq!(fits.body.as_deref(), Some(&[b'a'; 16][..]));
        match read_wasi_request(request("POST", &[b'a'; 20]), None, &policy).await {
            Err(HttpError::RequestTooLarge { size, limit: 16 }) => assert!(size > 16, "{size}"),
            other => panic!("{other:?}"),
        }
        let error = read_wasi_request(request("GET", b"query"), None, &policy).await.unwrap_err();
        assert!(matches!(error, HttpError::Denied(_)), "{error}");
    }
}
