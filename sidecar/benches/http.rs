//! Outbound HTTP benchmark: requests through the gateway against `reqwest`
//! called directly from Rust, same loopback server, same run. Prints a
//! table for BENCHMARKS.md.
//!
//! Rows, each at 1 and at 32 concurrent callers:
//! - direct: one pooled `reqwest::Client`, `GET` + read body (the baseline);
//!   direct and gateway alternate over three rounds, median kept;
//! - gateway: `PluginHttp::send` from Rust, no wasm (policy check, rate
//!   limiter, guarded resolver, bounded body read);
//! - fetcher / wasi-fetcher: one plugin invocation per request through
//!   each door (fresh instance, JSON in and out);
//! - fetcher x100: one invocation sending 100 requests, so the instance
//!   cost is amortised and what remains is the per-request host call.
//!
//! Run with `./dev bench` (or `cargo bench -p gatehouse --bench http`).
#![allow(missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse::policy;
use gatehouse::services::http::resolve::StaticLookup;
use gatehouse::services::http::{HttpGateway, OutboundRequest, PluginHttp};
use gatehouse::{Document, Runtime, RuntimeSettings};

/// Requests per row (after a warm-up of a tenth of that).
const REQUESTS: usize = 20_000;
/// Alternating rounds of the direct and gateway rows.
const ROUNDS: usize = 3;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(|| async { "hello" });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let lookup = Arc::new(StaticLookup::new().with("upstream.test", &["127.0.0.1".parse().unwrap()]));
        let (runtime, http) = setup(port, lookup).await;
        let runtime = Arc::new(runtime);
        let http = Arc::new(http);
        let direct_url = format!("http://127.0.0.1:{port}/hello");
        let gateway_url = format!("http://upstream.test:{port}/hello");
        let direct = reqwest::Client::builder().no_proxy().build().unwrap();

        println!("outbound GET of a 5-byte body over loopback, {REQUESTS} requests per row\n");
        println!("| path | callers | req/s | p50 µs | p99 µs | vs direct |");
        println!("|---|---|---|---|---|---|");
        for callers in [1, 32] {
            // Direct and gateway alternate over a few rounds (median kept),
            // so that drift on a shared VM does not favour either.
            let (mut direct_runs, mut gateway_runs) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let (client, url) = (direct.clone(), direct_url.clone());
                direct_runs.push(
                    run(callers, 1, move || {
                        let (client, url) = (client.clone(), url.clone());
                        async move {
                            let response = client.get(url).send().await.unwrap();
                            assert!(response.bytes().await.unwrap().len() == 5);
                        }
                    })
                    .await,
                );
                let (h, url) = (http.clone(), gateway_url.clone());
                gateway_runs.push(
                    run(callers, 1, move || {
                        let (h, url) = (h.clone(), url.clone());
                        async move {
                            let request = OutboundRequest { method: "GET".into(), url, ..OutboundRequest::default() };
                            assert!(h.send(request).await.unwrap().body.len() == 5);
                        }
                    })
                    .await,
                );
            }
            let baseline = median(direct_runs);
            baseline.row("direct reqwest", callers, baseline.rps);
            median(gateway_runs).row("gateway from Rust", callers, baseline.rps);
            for (plugin, repeat) in [("fetcher", 1), ("wasi-fetcher", 1), ("fetcher", 100)] {
                let input = format!(r#"{{"url": "{gateway_url}", "repeat": {repeat}}}"#).into_bytes();
                let runtime = runtime.clone();
                let label = if repeat == 1 {
                    format!("{plugin} (1 per invocation)")
                } else {
                    format!("{plugin} x{repeat} per invocation")
                };
                run(callers, repeat, move || {
                    let (runtime, body) = (runtime.clone(), input.clone());
                    async move {
                        let document = Document { content_type: "application/json".into(), body };
                        runtime.invoke(plugin, document).await.unwrap();
                    }
                })
                .await
                .row(&label, callers, baseline.rps);
            }
        }
        println!("\n(latency of the x100 rows is per invocation of 100 requests)");
    });
}

async fn setup(port: u16, lookup: Arc<StaticLookup>) -> (Runtime, PluginHttp) {
    let dir = tempfile::tempdir().unwrap();
    let guests = std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"));
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
    let mut runtime = Runtime::new(RuntimeSettings::default()).unwrap();
    runtime.set_dns(lookup.clone()).unwrap();
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let grant = load.set.plugins["fetcher"].http.clone().unwrap();
    let gateway = Arc::new(HttpGateway::new(lookup).unwrap());
    let http = PluginHttp::new("bench", grant, gateway, &Default::default()).unwrap();
    (runtime, http)
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

/// Runs `call` from `callers` concurrent tasks until `REQUESTS` requests
/// (each call making `per_call` of them) are done; warms up first.
async fn run<F, Fut>(callers: usize, per_call: usize, call: F) -> Result
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let calls = REQUESTS / per_call;
    drive(callers, calls / 10, call.clone()).await;
    let started = Instant::now();
    let mut latencies = drive(callers, calls, call).await;
    let elapsed = started.elapsed();
    latencies.sort();
    Result {
        rps: (calls * per_call) as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    }
}

async fn drive<F, Fut>(callers: usize, calls: usize, call: F) -> Vec<Duration>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
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
