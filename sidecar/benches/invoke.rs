//! Invocation benchmark: the sidecar's per-call cost against a naive
//! wasmtime embedding, in the same run. Prints a table for BENCHMARKS.md.
//!
//! - gatehouse: `Runtime::invoke` (pooling allocator, InstancePre, fresh
//!   Store per call, limits, epoch deadline, tokio timeout, slot semaphore);
//! - naive: default engine (on-demand allocator), `Linker::instantiate_async`
//!   per call, full WASI linked, same component and same call; compilation
//!   happens once, outside the loop.
//!
//! Also measures how far past its deadline a spinning guest is stopped.
//!
//! Run with `./dev bench` (or `cargo bench -p gatehouse --bench invoke`).
#![allow(missing_docs)]

use std::sync::Arc;

use gatehouse::services::Services;
use gatehouse::services::http::resolve::SystemLookup;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatehouse::bindings::Plugin;
use gatehouse::bindings::gatehouse::services::log;
use gatehouse::policy::{self, PolicyLoad, PolicySet};
use gatehouse::{Document, Runtime, RuntimeSettings};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const BATCHES: usize = 15;
const PER_BATCH: usize = 2_000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let policies = bench_policies();
        println!("per-invocation cost ({BATCHES} batches x {PER_BATCH} calls; median batch, p99 of single calls)\n");
        println!("| plugin | embedding | µs/call | p99 µs | calls/s |");
        println!("|---|---|---|---|---|");

        let gatehouse = gatehouse_runtime(&policies.set, RuntimeSettings::default()).await;
        let no_keep = RuntimeSettings { keep_resident: 0, ..RuntimeSettings::default() };
        let gatehouse_no_keep = gatehouse_runtime(&policies.set, no_keep).await;
        let mut ratios = Vec::new();
        for plugin in ["noop", "echo"] {
            let fast = measure(|| async { gatehouse.invoke(plugin, doc()).await.unwrap() }).await;
            fast.row(plugin, "gatehouse (pooling, InstancePre)");
            measure(|| async { gatehouse_no_keep.invoke(plugin, doc()).await.unwrap() })
                .await
                .row(plugin, "gatehouse, keep_resident = 0");
            let naive = Naive::new(&policies.set.plugins[plugin].component.path);
            let slow = measure(|| naive.invoke()).await;
            slow.row(plugin, "naive (on-demand, instantiate per call)");
            ratios.push((plugin, slow.median_us / fast.median_us));
        }
        let enricher_input = Document {
            content_type: "application/json".into(),
            body: include_bytes!("../src/cli/sample-article.json").to_vec(),
        };
        measure(|| async { gatehouse.invoke("doc-enricher", enricher_input.clone()).await.unwrap() })
            .await
            .row("doc-enricher (350 B article)", "gatehouse (pooling, InstancePre)");
        println!();
        for (plugin, ratio) in ratios {
            println!("{plugin}: naive / gatehouse = {ratio:.1}x");
        }

        overshoot(&gatehouse).await;
    });
}

fn doc() -> Document {
    Document { content_type: "text/plain".into(), body: b"ping".to_vec() }
}

fn guest_dir() -> PathBuf {
    std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"))
}

/// Policies for the bench guests, written to a temporary directory.
fn bench_policies() -> PolicyLoad {
    let dir = tempfile::tempdir().unwrap();
    for (name, file, limits) in [
        ("noop", "noop", ""),
        ("echo", "echo", ""),
        ("doc-enricher", "doc_enricher", ""),
        ("spin", "hostile_loop", "timeout = \"100ms\""),
    ] {
        let component = guest_dir().join(format!("{file}.wasm"));
        let text = format!(
            "[plugin]\nname = {name:?}\ncomponent = {:?}\n[limits]\n{limits}\n",
            component.display().to_string()
        );
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let load = policy::load_dir(dir.path(), dir.path()).unwrap();
    assert!(load.errors.is_empty(), "{:?} (run ./dev guests first)", load.errors);
    load
}

async fn gatehouse_runtime(policies: &PolicySet, settings: RuntimeSettings) -> Runtime {
    let runtime = Runtime::new(settings, Arc::new(Services::with_dns(Arc::new(SystemLookup)).unwrap())).unwrap();
    let report = runtime.load(policies).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    runtime
}

struct Measurement {
    median_us: f64,
    p99_us: f64,
}

impl Measurement {
    fn row(&self, plugin: &str, embedding: &str) {
        println!(
            "| {plugin} | {embedding} | {:.2} | {:.1} | {:.0} |",
            self.median_us,
            self.p99_us,
            1e6 / self.median_us
        );
    }
}

async fn measure<F, Fut, T>(mut call: F) -> Measurement
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..PER_BATCH {
        std::hint::black_box(call().await);
    }
    let mut batches = Vec::with_capacity(BATCHES);
    let mut samples = Vec::with_capacity(BATCHES * PER_BATCH);
    for _ in 0..BATCHES {
        let batch = Instant::now();
        for _ in 0..PER_BATCH {
            let start = Instant::now();
            std::hint::black_box(call().await);
            samples.push(start.elapsed());
        }
        batches.push(batch.elapsed() / PER_BATCH as u32);
    }
    batches.sort();
    samples.sort();
    Measurement {
        median_us: batches[BATCHES / 2].as_secs_f64() * 1e6,
        p99_us: samples[samples.len() * 99 / 100].as_secs_f64() * 1e6,
    }
}

/// What a developer writes first: default engine, WASI linked wholesale,
/// `instantiate_async` from the `Linker` on every call.
struct Naive {
    engine: Engine,
    linker: Linker<NaiveState>,
    component: Component,
}

struct NaiveState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for NaiveState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl log::Host for NaiveState {
    async fn log(&mut self, _level: log::Level, message: String, _fields: Vec<log::Field>) -> wasmtime::Result<()> {
        std::hint::black_box(message);
        Ok(())
    }
}

impl Naive {
    fn new(component: &Path) -> Self {
        let engine = Engine::default();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        log::add_to_linker::<_, HasSelf<NaiveState>>(&mut linker, |s| s).unwrap();
        let component = Component::from_file(&engine, component).unwrap();
        Naive { engine, linker, component }
    }

    async fn invoke(&self) -> Document {
        let state = NaiveState { wasi: WasiCtx::builder().build(), table: ResourceTable::new() };
        let mut store = Store::new(&self.engine, state);
        let plugin = Plugin::instantiate_async(&mut store, &self.component, &self.linker).await.unwrap();
        plugin.call_handle(&mut store, &doc()).await.unwrap().unwrap()
    }
}

/// How long after its deadline a guest spinning in wasm is stopped.
async fn overshoot(runtime: &Runtime) {
    let timeout = Duration::from_millis(100);
    let mut overshoots: Vec<Duration> = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        runtime.invoke("spin", doc()).await.unwrap_err();
        overshoots.push(start.elapsed() - timeout);
    }
    overshoots.sort();
    println!(
        "\ndeadline overshoot of a spinning guest (timeout 100ms, epoch tick {:?}, 20 runs): median {:.1} ms, max {:.1} ms",
        RuntimeSettings::default().epoch_tick,
        overshoots[10].as_secs_f64() * 1e3,
        overshoots[19].as_secs_f64() * 1e3
    );
}
