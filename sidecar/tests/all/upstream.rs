//! A real HTTP server on loopback for the outbound HTTP tests. It counts
//! every request it receives, so a test can prove that a refused request
//! never reached it.
//!
//! Routes (query parameters in `?k=v` form):
//! - `/hello`: `200 hello`
//! - `/echo`: the method, headers and body it received, as JSON
//! - `/redirect?to=URL&status=302`: a redirect to `URL`
//! - `/loop`: a redirect to itself
//! - `/bad-redirect`: a `302` whose `Location` is not a URL
//! - `/headers?n=N`: `200` with about `N` bytes of headers, in fields of
//!   4000 bytes
//! - `/big?n=N&chunked=1`: `N` bytes of `x`, with or without a length
//! - `/slow?ms=N`: answers after `N` milliseconds

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;

pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let app = routes(hits.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("upstream server");
        });
        Upstream { addr, hits, _server: server }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The routes above, counting every request in `hits`.
pub fn routes(hits: Arc<AtomicUsize>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(hits)
}

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

async fn handle(State(hits): State<Arc<AtomicUsize>>, request: Request) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let query = request.uri().query().unwrap_or("").to_string();
    let number = |key: &str| param(&query, key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    match request.uri().path() {
        "/hello" => text(StatusCode::OK, "hello"),
        "/echo" => {
            let method = request.method().to_string();
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let echo = serde_json::json!({
                "method": method,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            text(StatusCode::OK, &echo.to_string())
        }
        "/redirect" => {
            let to = param(&query, "to").unwrap_or("/hello").replace("%3A", ":").replace("%2F", "/");
            let status = StatusCode::from_u16(number("status").max(301) as u16).unwrap();
            let mut response = text(status, "");
            response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(&to).unwrap());
            response
        }
        "/loop" => {
            let mut response = text(StatusCode::FOUND, "");
            response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/loop"));
            response
        }
        "/bad-redirect" => {
            let mut response = text(StatusCode::FOUND, "");
            response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("http://exa mple.com:99999/"));
            response
        }
        "/headers" => {
            let mut response = text(StatusCode::OK, "headers");
            let field = HeaderValue::from_str(&"h".repeat(4000)).unwrap();
            for i in 0..number("n").div_ceil(4000) {
                response
                    .headers_mut()
                    .insert(format!("x-filler-{i}").parse::<header::HeaderName>().unwrap(), field.clone());
            }
            response
        }
        "/big" => {
            let bytes = Bytes::from(vec![b'x'; number("n") as usize]);
            if param(&query, "chunked").is_some() {
                // A stream has no length, so the client cannot refuse it up front.
                let stream = futures_stream(bytes);
                Response::new(Body::from_stream(stream))
            } else {
                Response::new(Body::from(bytes))
            }
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number("ms"))).await;
            text(StatusCode::OK, "slow")
        }
        _ => text(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn text(status: StatusCode, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The body in 1 KiB chunks, without a declared length.
fn futures_stream(bytes: Bytes) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        bytes.chunks(1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks)
}
