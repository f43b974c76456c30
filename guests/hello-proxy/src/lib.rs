//! An example `wasi:http/proxy` component, written only against the
//! standard interfaces, as for `wasmtime serve` or Spin: Gatehouse serves it
//! under `/p/<plugin>/`. Routes (the path it sees has the prefix stripped):
//! - `/`: `200 hello from a wasi:http component`;
//! - `/echo`: the request's method, path and body;
//! - `/fetch?url=<url>`: a `GET` of `url` through
//!   `wasi:http/outgoing-handler` (so under the plugin's `[http]` policy),
//!   answering the upstream's status or the error code that refused it;
//! - `/path…`: the path and query exactly as the component received them
//!   (anything starting with `/path`, so encoded separators stay visible);
//! - `/spin`: never answers (the plugin's deadline must stop it);
//! - `/drip`: answers, then writes a byte every 50 ms forever, ignoring
//!   write errors (only the sidecar can stop it once its client is gone);
//! - `/hold`: sends its answer's head, then never writes the body nor reads
//!   its request (only the sidecar can stop it once its client is gone);
//! - `/status/<code>`: an empty answer with that status, whatever it is
//!   (the sidecar must not pass on one that cannot end a request);
//! - `/after?url=<url>`: answers, then, 100 ms after its answer ended,
//!   fetches `url` (work after the answer, within the deadline).

use std::io::Read;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

struct HelloProxy;

impl Guest for HelloProxy {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((&path, ""));
        match route {
            "/" | "" => respond(out, 200, b"hello from a wasi:http component\n"),
            "/echo" => {
                let method = format!("{:?}", request.method());
                let mut body = Vec::new();
                if let Ok(incoming) = request.consume() {
                    if let Ok(mut stream) = incoming.stream() {
                        let _ = stream.read_to_end(&mut body);
                    }
                }
                let text = format!("{method} {path}\n{}", String::from_utf8_lossy(&body));
                respond(out, 200, text.as_bytes());
            }
            "/fetch" => {
                let url = query.strip_prefix("url=").unwrap_or_default();
                let answer = fetch(url);
                respond(out, 200, answer.as_bytes());
            }
            "/after" => {
                respond(out, 200, b"answered\n");
                std::thread::sleep(std::time::Duration::from_millis(100));
                let _ = fetch(query.strip_prefix("url=").unwrap_or_default());
            }
            _ if route.starts_with("/path") => respond(out, 200, path.as_bytes()),
            "/drip" => drip(out),
            "/hold" => {
                let response = OutgoingResponse::new(Fields::new());
                let _body = response.body().expect("the body is available once");
                ResponseOutparam::set(out, Ok(response));
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
            "/spin" => {
                let mut n: u64 = 1;
                loop {
                    n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            _ => match route.strip_prefix("/status/").and_then(|code| code.parse().ok()) {
                Some(code) => respond(out, code, b""),
                None => respond(out, 404, b"no such route\n"),
            },
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())]).expect("valid header");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("the body is available once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream is available once");
    // One blocking write takes at most 4096 bytes.
    for chunk in body.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// A body that never ends and never notices that nobody reads it.
fn drip(out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("the body is available once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream is available once");
    loop {
        let _ = stream.blocking_write_and_flush(b"x");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `status <code>` or `error <code>`.
fn fetch(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "error not an absolute URL".into() };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    let _ = request.set_scheme(Some(&scheme));
    if request.set_authority(Some(authority)).is_err() || request.set_path_with_query(Some(path)).is_err() {
        return "error invalid URL".into();
    }
    let pending = match outgoing_handler::handle(request, None) {
        Ok(pending) => pending,
        Err(code) => return format!("error {code:?}"),
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(code))) => format!("error {code:?}"),
        _ => "error no response".into(),
    }
}

wasip2::http::proxy::export!(HelloProxy);
