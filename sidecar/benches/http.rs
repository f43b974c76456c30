//! Outbound HTTP benchmark: requests through the gateway against `reqwest`
//! called directly from Rust, same loopback server, same run. Prints a
//! table for BENCHMARKS.md.
//!
//! Rows, each at 1 and at 32 concurrent callers:
//! - direct reqwest: one pooled `reqwest::Client`, `GET` + read body (the
//!   baseline every ratio is against);
//! - direct hyper-util client: the transport the gateway uses, called
//!   directly, so the gateway's own cost can be read off;
//! - gateway from Rust: `PluginHttp::send`, no wasm (policy check, rate
//!   limiter, guarded resolver, bounded body read);
//! - gateway from Rust, 16 plugins: the same, the requests spread over 16
//!   plugins in turn, each with its own connection pools (connections are
//!   never shared between plugins), so the cost of per-plugin pools can be
//!   read off; the connections each layout opens are printed after the
//!   table;
//! - fetcher x100: one invocation sending 100 requests, so the instance
//!   cost is amortised and what remains is the per-request host call;
//! - fetcher / wasi-fetcher: one plugin invocation per request through
//!   each door (fresh instance, JSON in and out);
//! - wasi-fetcher x100: the amortised row through `wasi:http`.
//!
//! The first four alternate over three rounds and the median is kept; the
//! last three run once.
//!
//! Run with `./dev bench` (or `cargo bench -p gatehouse --bench http`).
#![allow(missing_docs)]

use gatehouse::services::Services;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use bytes::Bytes;
use gatehouse::policy;
use gatehouse::services::http::resolve::StaticLookup;
use gatehouse::services::http::{HttpGateway, OutboundRequest, PluginHttp};
use gatehouse::{Document, Runtime, RuntimeSettings};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Requests per row (after a warm-up of a tenth of that).
const REQUESTS: usize = 20_000;
/// Rounds of the alternating rows.
const ROUNDS: usize = 3;

/// One way of making a request (or an invocation making `per_call` of them).
struct Path {
    label: String,
    per_call: usize,
    call: Call,
}

type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn path<F, Fut>(label: impl Into<String>, per_call: usize, call: F) -> Path
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Path { label: label.into(), per_call, call: Arc::new(move || Box::pin(call())) }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let app = axum::Router::new().fallback(|| async { "hello" });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let lookup = Arc::new(StaticLookup::new().with("upstream.test", &["127.0.0.1".parse().unwrap()]));
        let (runtime, http, grant) = setup(port, lookup.clone()).await;
        let runtime = Arc::new(runtime);
        let http = Arc::new(http);
        let plugins = |count: usize| -> Arc<Vec<PluginHttp>> {
            let gateway = Arc::new(HttpGateway::new(lookup.clone()).unwrap());
            let each = (0..count).map(|i| {
                PluginHttp::new(&format!("bench-{i}"), grant.clone(), gateway.clone(), &Default::default()).unwrap()
            });
            Arc::new(each.collect())
        };
        let many = plugins(16);
        let turn = Arc::new(AtomicUsize::new(0));
        let direct_url = format!("http://127.0.0.1:{port}/hello");
        let gateway_url = format!("http://upstream.test:{port}/hello");
        let reqwest = reqwest::Client::builder().no_proxy().build().unwrap();
        let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let hyper_uri: http::Uri = direct_url.parse().unwrap();

        let invoke = |plugin: &'static str, repeat: usize| {
            let runtime = runtime.clone();
            let body = format!(r#"{{"url": "{gateway_url}", "repeat": {repeat}}}"#).into_bytes();
            let label = if repeat == 1 {
                format!("{plugin} (1 per invocation)")
            } else {
                format!("{plugin} x{repeat} per invocation")
            };
            path(label, repeat, move || {
                let (runtime, body) = (runtime.clone(), body.clone());
                async move {
                    let document = Document { content_type: "application/json".into(), body };
                    runtime.invoke(plugin, document).await.unwrap();
                }
            })
        };
        // Alternated over the rounds, median kept.
        let alternating = [
            path("direct reqwest", 1, move || {
                let (client, url) = (reqwest.clone(), direct_url.clone());
                async move {
                    let response = client.get(url).send().await.unwrap();
                    assert!(response.bytes().await.unwrap().len() == 5);
                }
            }),
            path("direct hyper-util client", 1, move || {
                let (client, uri) = (hyper.clone(), hyper_uri.clone());
                async move {
                    let response = client.get(uri).await.unwrap();
                    assert!(response.into_body().collect().await.unwrap().to_bytes().len() == 5);
                }
            }),
            path("gateway from Rust", 1, {
                let url = gateway_url.clone();
                move || {
                    let (h, url) = (http.clone(), url.clone());
                    async move {
                        let request = OutboundRequest { method: "GET".into(), url, ..OutboundRequest::default() };
                        assert!(h.send(request).await.unwrap().body.len() == 5);
                    }
                }
            }),
            path("gateway from Rust, 16 plugins", 1, {
                let url = gateway_url.clone();
                move || {
                    let (many, url) = (many.clone(), url.clone());
                    let i = turn.fetch_add(1, Ordering::Relaxed) % many.len();
                    async move {
                        let request = OutboundRequest { method: "GET".into(), url, ..OutboundRequest::default() };
                        assert!(many[i].send(request).await.unwrap().body.len() == 5);
                    }
                }
            }),
            invoke("fetcher", 100),
        ];
        // Run once each.
        let once = [invoke("fetcher", 1), invoke("wasi-fetcher", 1), invoke("wasi-fetcher", 100)];

        println!("outbound GET of a 5-byte body over loopback, {REQUESTS} requests per row\n");
        println!("| path | callers | req/s | p50 µs | p99 µs | vs direct reqwest |");
        println!("|---|---|---|---|---|---|");
        for callers in [1, 32] {
            // Rounds alternate the paths, so that drift on a shared VM does
            // not favour any of them.
            let mut runs: Vec<Vec<Result>> = alternating.iter().map(|_| Vec::new()).collect();
            for _ in 0..ROUNDS {
                for (path, runs) in alternating.iter().zip(&mut runs) {
                    runs.push(run(callers, path).await);
                }
            }
            let medians: Vec<Result> = runs.into_iter().map(median).collect();
            let baseline = medians[0].rps;
            for (path, result) in alternating.iter().zip(&medians) {
                result.row(&path.label, callers, baseline);
            }
            for path in &once {
                run(callers, path).await.row(&path.label, callers, baseline);
            }
        }
        println!("\n(latency of the x100 rows is per invocation of 100 requests)");

        // What per-plugin pools cost in connections: fresh plugins, 2,000
        // requests from 32 callers, spread over 1 or 16 plugins.
        println!("\n| plugins sharing the load | connections opened for 2,000 requests, 32 callers |");
        println!("|---|---|");
        for count in [1, 16] {
            let fresh = plugins(count);
            let turn = Arc::new(AtomicUsize::new(0));
            let url = gateway_url.clone();
            let call = path("", 1, move || {
                let (fresh, url) = (fresh.clone(), url.clone());
                let i = turn.fetch_add(1, Ordering::Relaxed) % fresh.len();
                async move {
                    let request = OutboundRequest { method: "GET".into(), url, ..OutboundRequest::default() };
                    assert!(fresh[i].send(request).await.unwrap().body.len() == 5);
                }
            });
            let before = connections.load(Ordering::Relaxed);
            drive(32, 2_000, &call.call).await;
            println!("| {count} | {} |", connections.load(Ordering::Relaxed) - before);
        }
    });
}

async fn setup(port: u16, lookup: Arc<StaticLookup>) -> (Runtime, PluginHttp, gatehouse::services::http::HttpPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let guests = std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"));
    for (name, file) in [("fetcher", "fetcher"), ("wasi-fetcher", "wasi_fetcher")] {
        let component = guests.join(format!("{file}.wasm")).display().to_string();
        let text = format!(
            "[plugin]\nname = {name:?}\ncomponent = {component:?}\n[limits]\ntimeout = \"10s\"\nconcurrency = 64\n\
             [http]\nallow = [\"http://upstream.test:{port}\"]\nrate = \"1000000/s\"\n"
        );
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let load = policy::load_dir(dir.path(), dir.path()).unwrap();
    assert!(load.errors.is_empty(), "{:?} (run ./dev guests first)", load.errors);
    let runtime =
        Runtime::new(RuntimeSettings::default(), Arc::new(Services::with_dns(lookup.clone()).unwrap())).unwrap();
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let grant = load.set.plugins["fetcher"].http.clone().unwrap();
    let gateway = Arc::new(HttpGateway::new(lookup).unwrap());
    let http = PluginHttp::new("bench", grant.clone(), gateway, &Default::default()).unwrap();
    (runtime, http, grant)
}

struct Result {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

impl Result {
    fn row(&self, path: &str, callers: usize, baseline_rps: f64) {
        println!(
            "| {path} | {callers} | {:.0} | {:.0} | {:.0} | {:.2} |",
            self.rps,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.rps / baseline_rps
        );
    }
}

/// The run with the median throughput.
fn median(mut runs: Vec<Result>) -> Result {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}

/// Runs `path` from `callers` concurrent tasks until `REQUESTS` requests
/// are done; warms up first.
async fn run(callers: usize, path: &Path) -> Result {
    let calls = REQUESTS / path.per_call;
    drive(callers, calls / 10, &path.call).await;
    let started = Instant::now();
    let mut latencies = drive(callers, calls, &path.call).await;
    let elapsed = started.elapsed();
    latencies.sort();
    Result {
        rps: (calls * path.per_call) as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    }
}

async fn drive(callers: usize, calls: usize, call: &Call) -> Vec<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (next, call) = (next.clone(), call.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let start = Instant::now();
                    call().await;
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}
