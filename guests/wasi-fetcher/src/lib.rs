//! The `fetcher` plugin written against the standard
//! `wasi:http/outgoing-handler` instead of Gatehouse's own interface, as a
//! component built for any wasi:http host would be. The sidecar applies the
//! same `[http]` policy to it; refusals arrive as wasi:http error codes
//! (for example `HTTP-request-denied`, `destination-IP-prohibited`), which
//! this plugin maps onto the shared error kinds. Input and output formats:
//! see `fetch-common`.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use std::io::{Read, Write};

use fetch_common::{FetchRequest, FetchResponse, parse, render};
use gatehouse::services::types::ErrorKind;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, HeaderError, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};

struct WasiFetcher;

impl Guest for WasiFetcher {
    fn handle(input: Document) -> Result<Document, Error> {
        let fetch = parse(&input.body).map_err(|message| error(ErrorKind::InvalidInput, message))?;
        let mut response = send(&fetch)?;
        for _ in 1..fetch.repeat {
            response = send(&fetch)?;
        }
        response.requests = fetch.repeat;
        Ok(Document { content_type: "application/json".into(), body: render(&response) })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "wasi-fetcher".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Fetches an allowlisted URL through wasi:http/outgoing-handler".into(),
        }
    }
}

fn error(kind: ErrorKind, message: String) -> Error {
    Error { kind, message, retry_after_ms: None }
}

fn send(fetch: &FetchRequest) -> Result<FetchResponse, Error> {
    let invalid = |message: String| error(ErrorKind::InvalidInput, message);
    let (scheme, rest) =
        fetch.url.split_once("://").ok_or_else(|| invalid(format!("not an absolute URL: {}", fetch.url)))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let headers: Vec<(String, Vec<u8>)> =
        fetch.headers.iter().map(|(name, value)| (name.clone(), value.clone().into_bytes())).collect();
    let fields = Fields::from_list(&headers).map_err(|e| match e {
        HeaderError::Forbidden => error(ErrorKind::Denied, "the host forbids one of the request headers".into()),
        other => invalid(format!("invalid header: {other:?}")),
    })?;

    let request = OutgoingRequest::new(fields);
    let method = match fetch.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let refused = |what: &str| invalid(format!("the host refused the request's {what}"));
    request.set_method(&method).map_err(|()| refused("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| refused("scheme"))?;
    request.set_authority(Some(authority)).map_err(|()| refused("authority"))?;
    request.set_path_with_query(Some(path)).map_err(|()| refused("path"))?;
    let options = fetch.timeout_ms.map(|ms| {
        let options = RequestOptions::new();
        let _ = options.set_first_byte_timeout(Some(ms * 1_000_000));
        options
    });

    let body = request.body().expect("the body of a new request is available once");
    let pending = outgoing_handler::handle(request, options).map_err(from_code)?;
    if let Some(bytes) = &fetch.body {
        let mut stream = body.write().expect("the body stream is available once");
        let parts = if fetch.upload_ms > 0 { 4 } else { 1 };
        let size = bytes.len().div_ceil(parts).max(1);
        for part in bytes.as_bytes().chunks(size) {
            if fetch.upload_ms > 0 {
                wasip2::clocks::monotonic_clock::subscribe_duration(fetch.upload_ms * 1_000_000 / 4).block();
            }
            stream
                .write_all(part)
                .map_err(|e| error(ErrorKind::InvalidInput, format!("writing the body: {e}")))?;
        }
    }
    // Kept open (not finished, not dropped) until the response arrives.
    let _unfinished = if fetch.unfinished_body {
        Some(body)
    } else {
        OutgoingBody::finish(body, None).map_err(from_code)?;
        None
    };

    pending.subscribe().block();
    let response = pending.get().expect("ready after block").expect("taken once").map_err(from_code)?;
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let incoming = response.consume().expect("the body of a response is available once");
    let mut body = Vec::new();
    incoming
        .stream()
        .expect("the body stream is available once")
        .read_to_end(&mut body)
        .map_err(|e| error(ErrorKind::Unavailable, format!("reading the response body: {e}")))?;
    Ok(FetchResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned(), requests: 1 })
}

/// The shared error kind closest to a wasi:http error code.
fn from_code(code: ErrorCode) -> Error {
    let kind = match &code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited | ErrorCode::LoopDetected => {
            ErrorKind::Denied
        }
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestUriTooLong
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpProtocolError => ErrorKind::InvalidInput,
        ErrorCode::HttpResponseBodySize(_)
        | ErrorCode::HttpResponseHeaderSectionSize(_)
        | ErrorCode::HttpResponseHeaderSize(_) => ErrorKind::QuotaExceeded,
        ErrorCode::ConnectionLimitReached => ErrorKind::RateLimited,
        ErrorCode::HttpResponseTimeout | ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => {
            ErrorKind::Timeout
        }
        ErrorCode::InternalError(_) => ErrorKind::Internal,
        _ => ErrorKind::Unavailable,
    };
    error(kind, format!("wasi:http error {code:?}"))
}

export!(WasiFetcher);
