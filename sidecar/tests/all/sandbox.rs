//! The sandbox under a hostile plugin author: components built to take more
//! than their share. Attacks tried, and what must happen:
//! - a second core instance with its own 30 MiB memory next to the
//!   plugin's 4 MiB (one-more-memory.wat): both count against one limit;
//! - 40 core instances with 64 MiB memories each (forty-memories.wat) and
//!   1000 one-page memories in three nested components
//!   (thousand-memories.wat): refused at load by the per-component caps,
//!   while another plugin runs at its full concurrency;
//! - a table past the per-invocation element cap (big-table.wat): refused;
//! - policies whose concurrency adds up to more than the pool: the excess
//!   plugin is refused, so every loaded plugin keeps its share; a reload
//!   that raises a plugin past the pool is refused without changing its
//!   slots, and a plugin kept on its old version (its new component
//!   refused) keeps its share before a new plugin is admitted;
//! - a log call lifting 2.5 million fields, or 120 fields aliasing one
//!   1 MiB string (hostile-log `fields`, `alias`): stopped by the hostcall
//!   budget as `quota-exceeded`, long before the deadline;
//! - `info()` returning a 1 MiB version with a forged log line
//!   (hostile-info): refused at load with a one-line, bounded message;
//! - `info()` spinning forever (hostile-slow-info) and a component that
//!   takes seconds to compile: refused within their budgets, while the
//!   other plugins load without waiting for them;
//! - `wasi:cli/exit(ok)` instead of a result, an output over `max_output`,
//!   an output over the hostcall budget (hostile-exit): typed errors;
//! - a guest parked in a host call (sleeper): stopped at deadline + grace
//!   with its slot released, reported as such; a spinning guest is stopped
//!   by the epoch deadline, before the fallback timer;
//! - a caller queued behind a parked guest gets the slot it frees;
//! - 16 guests spinning on a 2-worker runtime: another plugin's timers and
//!   every deadline still hold (`..._under_hostile_load`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::runtime::{HOSTCALL_BASE, INFO_DEADLINE, TIMEOUT_GRACE};
use gatehouse::{Document, ErrorKind, InvokeError, Runtime, RuntimeSettings};

use crate::common::{Policies, guest, runtime, settings, shape};

fn doc(text: &str) -> Document {
    Document { content_type: "text/plain".into(), body: text.as_bytes().to_vec() }
}

/// Writes a policy for a hand-written shape.
fn shape_policy(policies: &Policies, name: &str, shape_name: &str, limits: &str) {
    let component = shape(policies.dir.path(), shape_name);
    policies.write(
        &format!("{name}.toml"),
        &format!(
            "[plugin]\nname = \"{name}\"\ncomponent = {:?}\n\n[limits]\n{limits}\n",
            component.display().to_string()
        ),
    );
}

async fn load(policies: &Policies, settings: RuntimeSettings) -> (Runtime, gatehouse::LoadReport) {
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let runtime = Runtime::new(settings, crate::common::services()).unwrap();
    let report = runtime.load(&load.set).await;
    (runtime, report)
}

fn refusal(report: &gatehouse::LoadReport, plugin: &str) -> String {
    report.refused.iter().find(|e| e.plugin == plugin).map(|e| e.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn every_memory_of_an_invocation_counts_against_one_limit() {
    let policies = Policies::new();
    // The plugin's own 4 MiB plus a 30 MiB memory: over 32 MiB together,
    // though each alone is under it.
    shape_policy(&policies, "tight", "one-more-memory", "memory = \"32 MiB\"");
    shape_policy(&policies, "roomy", "one-more-memory", "memory = \"64 MiB\"");
    // The same, reached by memory.grow instead of declared sizes.
    shape_policy(&policies, "grower", "grow-two", "memory = \"16 MiB\"");
    let (runtime, report) = load(&policies, settings()).await;
    let tight = refusal(&report, "tight");
    assert!(tight.contains("memory limit of 33554432 bytes"), "{tight}");
    let grower = refusal(&report, "grower");
    assert!(grower.contains("memory limit of 16777216 bytes"), "{grower}");
    assert_eq!(runtime.invoke("roomy", doc("hi")).await.unwrap().body, b"hi");
}

#[tokio::test]
async fn components_with_more_memories_than_allowed_are_refused_at_load() {
    let policies = Policies::new();
    shape_policy(&policies, "forty", "forty-memories", "memory = \"64 MiB\"");
    shape_policy(&policies, "thousand", "thousand-memories", "");
    shape_policy(&policies, "three", "three-memories", "");
    shape_policy(&policies, "table", "big-table", "");
    policies.plugin("echo", "echo", "");
    let (runtime, report) = load(&policies, settings()).await;
    for (plugin, why) in
        [("forty", "41 core module instances"), ("thousand", "1001 core module instances"), ("three", "memories")]
    {
        let reason = refusal(&report, plugin);
        assert!(reason.contains(why) && reason.contains("maximum"), "{plugin}: {reason}");
        assert!(!reason.contains('\n') && reason.len() < 1000, "{plugin}: one bounded line: {reason}");
    }
    let table = refusal(&report, "table");
    assert!(table.contains("exceeds table limits"), "{table}");
    assert_eq!(runtime.invoke("echo", doc("ok")).await.unwrap().body, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plugin_can_empty_the_pool_for_another() {
    // A pool of 64 instances: the hostile plugin asks for all of them, and
    // its component for 1000 memories per instance.
    let policies = Policies::new();
    policies.plugin("echo", "echo", "concurrency = 32");
    shape_policy(&policies, "hog", "thousand-memories", "concurrency = 32");
    shape_policy(&policies, "greedy", "one-more-memory", "concurrency = 64");
    let (runtime, report) = load(&policies, settings()).await;
    assert!(refusal(&report, "hog").contains("exceeds the configured maximum"), "{report:?}");
    let greedy = refusal(&report, "greedy");
    assert!(greedy.contains("max_instances of 64"), "{greedy}");
    let runtime = Arc::new(runtime);
    // echo gets every one of its 32 slots at once.
    let calls = (0..32).map(|i| {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.invoke("echo", doc(&i.to_string())).await })
    });
    for (i, call) in calls.enumerate() {
        assert_eq!(call.await.unwrap().unwrap().body, i.to_string().into_bytes());
    }
}

/// What is tried: plugin `a` fills a pool of 4 with long invocations, then
/// a reload lowers `a` to 2 and admits `b` with 2. Expected: `b`'s callers
/// are told the pool is full (`unavailable`, naming the reload), not that
/// `b` is at its concurrency limit; once `a`'s old invocations finish, `b`
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_old_invocations_keep_their_instances_and_new_callers_are_told_so() {
    let policies = Policies::new();
    policies.plugin("a", "sleeper", "concurrency = 4\ntimeout = \"5s\"");
    let mut small = settings();
    small.max_instances = 4;
    let (runtime, report) = load(&policies, small).await;
    assert!(report.refused.is_empty(), "{report:?}");
    let runtime = Arc::new(runtime);
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.invoke("a", doc("1500")).await })
        })
        .collect();
    while runtime.in_flight("a") != Some(4) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    policies.plugin("a", "sleeper", "concurrency = 2\ntimeout = \"5s\"");
    policies.plugin("b", "echo", "concurrency = 2\ntimeout = \"200ms\"");
    let load = policies.load();
    assert!(runtime.reload(&load.set, &[]).await.refused.is_empty());
    let error = runtime.invoke("b", doc("x")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("started before the last reload"), "{error}");
    for holder in holders {
        assert_eq!(holder.await.unwrap().unwrap().body, b"slept");
    }
    assert_eq!(runtime.invoke("b", doc("x")).await.unwrap().body, b"x");
}

/// What is tried: with a pool of 10 shared by `a` (5) and `b` (5), a
/// reload raises `b` to 8. Expected: the raise is refused, `b` keeps 5
/// slots (the admin API's figure and the real one agree), so at most 5 of 8
/// callers run at once and `a` keeps its whole share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_does_not_change_a_plugins_concurrency() {
    let policies = Policies::new();
    policies.plugin("a", "echo", "concurrency = 5");
    policies.plugin("b", "sleeper", "concurrency = 5\ntimeout = \"5s\"");
    let mut small = settings();
    small.max_instances = 10;
    let (runtime, report) = load(&policies, small).await;
    assert!(report.refused.is_empty(), "{report:?}");
    let runtime = Arc::new(runtime);
    policies.plugin("b", "sleeper", "concurrency = 8\ntimeout = \"5s\"");
    let report = runtime.reload(&policies.load().set, &[]).await;
    assert!(refusal(&report, "b").contains("max_instances of 10"), "{report:?}");
    let shown = runtime.summaries().into_iter().find(|p| p.name == "b").unwrap();
    assert_eq!(shown.concurrency, 5);

    let calls: Vec<_> = (0..8)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.invoke("b", doc("300")).await })
        })
        .collect();
    let mut most = 0;
    while calls.iter().any(|call| !call.is_finished()) {
        most = most.max(runtime.in_flight("b").unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(most, 5, "callers running at once after a refused raise to 8");
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().body, b"slept");
    }
}

/// What is tried: `a` (5) and `b` (5) fill a pool of 10; a reload replaces
/// `a`'s component with one that is refused (so `a` keeps its loaded
/// version) and adds `c` (5). Expected: the kept `a` is reserved first,
/// `c` is refused, and `a` and `b` still run at their full concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_version_keeps_its_share_of_the_pool_across_a_reload() {
    let policies = Policies::new();
    policies.plugin("a", "sleeper", "concurrency = 5\ntimeout = \"5s\"");
    policies.plugin("b", "sleeper", "concurrency = 5\ntimeout = \"5s\"");
    let mut small = settings();
    small.max_instances = 10;
    let (runtime, report) = load(&policies, small).await;
    assert!(report.refused.is_empty(), "{report:?}");
    let runtime = Arc::new(runtime);
    policies.plugin("a", "hostile_socket", "concurrency = 5\ntimeout = \"5s\"");
    policies.plugin("c", "echo", "concurrency = 5");
    let report = runtime.reload(&policies.load().set, &[]).await;
    assert!(refusal(&report, "a").contains("wasi:sockets"), "{report:?}");
    assert!(refusal(&report, "c").contains("max_instances of 10"), "{report:?}");
    assert!(matches!(runtime.invoke("c", doc("x")).await, Err(InvokeError::Refused(_))));
    // Both kept plugins get every one of their slots at once.
    let calls: Vec<_> = ["a", "b"]
        .into_iter()
        .flat_map(|name| std::iter::repeat_n(name, 5))
        .map(|name| {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.invoke(name, doc("300")).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().body, b"slept");
    }
}

#[tokio::test]
async fn a_host_call_cannot_make_the_host_lift_more_than_its_budget() {
    let policies = Policies::new();
    policies.plugin("log", "hostile_log", "memory = \"128 MiB\"\ntimeout = \"5s\"");
    let runtime = runtime(&policies).await;
    for attack in ["fields", "alias"] {
        let started = Instant::now();
        let error = runtime.invoke("log", doc(attack)).await.unwrap_err();
        // The default max_output (16 MiB) plus the base allowance.
        let budget = (16 << 20) + HOSTCALL_BASE;
        assert!(matches!(error, InvokeError::TooMuchData { limit, .. } if limit == budget), "{attack}: {error:?}");
        assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
        // Refused while lifting, not after copying 120 MiB.
        assert!(started.elapsed() < Duration::from_secs(2), "{attack}: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn plugin_info_that_could_forge_or_flood_the_log_is_refused_at_load() {
    let policies = Policies::new();
    policies.plugin("liar", "hostile_info", "");
    policies.plugin("echo", "echo", "");
    let (_runtime, report) = load(&policies, settings()).await;
    let reason = refusal(&report, "liar");
    assert!(reason.contains("invalid version"), "{reason}");
    assert!(!reason.contains('\n') && reason.len() < 600, "one bounded line: {} bytes", reason.len());
    assert_eq!(report.loaded.len(), 1);
}

/// Named for the nextest group that runs alone: it times the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_info_or_a_slow_compile_delays_no_other_plugin_under_hostile_load() {
    let policies = Policies::new();
    policies.plugin("slow-info", "hostile_slow_info", "timeout = \"10m\"");
    let slow = policies.dir.path().join("slow.wasm");
    std::fs::write(&slow, slow_to_compile()).unwrap();
    policies.write("slow.toml", &format!("[plugin]\nname = \"slow\"\ncomponent = {:?}\n", slow.display().to_string()));
    policies.plugin("echo", "echo", "");
    // A cache of its own, so the slow component is compiled here.
    let cache = tempfile::tempdir().unwrap();
    let budget = Duration::from_secs(1);
    let settings =
        RuntimeSettings { compile_timeout: budget, cache_dir: Some(cache.path().join("cache")), ..settings() };
    // The ordinary guests are compiled ahead (as `gatehouse compile` would),
    // so that on two busy cores their compilation is not what the budget
    // measures.
    let warm = Runtime::new(settings.clone(), crate::common::services()).unwrap();
    for plugin in ["echo", "slow-info"] {
        warm.precompile(&policies.load().set.plugins[plugin]).unwrap();
    }

    let started = Instant::now();
    let (runtime, report) = load(&policies, settings).await;
    let took = started.elapsed();
    assert!(refusal(&report, "slow-info").contains("did not finish within its 1s timeout"), "{report:?}");
    assert!(refusal(&report, "slow").contains("compile budget of 1s"), "{report:?}");
    assert_eq!(runtime.invoke("echo", doc("ok")).await.unwrap().body, b"ok");
    // Both run at once, each bounded by its own budget of 1 s: not one
    // after the other (2 s), and not for the policy's 10 minutes.
    assert!(took < INFO_DEADLINE + Duration::from_millis(800), "loading took {took:?}");
}

/// A component whose one function has 4000 locals and 8000 small blocks
/// that branch out of themselves (each block end merges every live local):
/// about 2 s of Cranelift time from 150 KB, and worse than linear in size.
pub fn slow_to_compile() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..8000 {
        let (set, a, b, cond) = (i % 4000, (i * 7) % 4000, (i * 13) % 4000, (i * 3) % 4000);
        body.push_str(&format!(
            "(block (local.set {set} (i64.add (local.get {a}) (local.get {b}))) (br_if 0 (i32.wrap_i64 (local.get {cond}))))\n"
        ));
    }
    let locals = "i64 ".repeat(4000);
    let text = format!(
        "(component (core module $m (func (export \"f\") (param i64) (result i64) (local {locals}) {body} (local.get 1))) \
         (core instance (instantiate $m)))"
    );
    wat::parse_str(text).expect("slow component")
}

#[tokio::test]
async fn exits_and_oversized_outputs_are_typed_errors() {
    let policies = Policies::new();
    policies.plugin("exit", "hostile_exit", "memory = \"256 MiB\"\nmax_output = \"1 MiB\"\ntimeout = \"5s\"");
    let runtime = runtime(&policies).await;

    let error = runtime.invoke("exit", doc("exit")).await.unwrap_err();
    assert!(matches!(error, InvokeError::Exited { status: 0, .. }), "{error:?}");
    assert!(error.to_string().contains("exited (status 0) without returning a result"), "{error}");

    // Over max_output, within the hostcall budget (max_output + 1 MiB).
    let error = runtime.invoke("exit", doc(&format!("big:{}", (1 << 20) + 1000))).await.unwrap_err();
    assert!(matches!(error, InvokeError::OutputTooLarge { limit: 1_048_576, .. }), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
    // Over the hostcall budget: refused while lifting, not after 130 MiB.
    let error = runtime.invoke("exit", doc(&format!("big:{}", 130 << 20))).await.unwrap_err();
    assert!(matches!(error, InvokeError::TooMuchData { .. }), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
    // Within bounds, it works.
    assert_eq!(runtime.invoke("exit", doc("big:1000")).await.unwrap().body.len(), 1000);

    // 64 MiB of random bytes in one synchronous host call would take the
    // host ~250 ms and 64 MiB, past any deadline: refused at 1 MiB.
    assert_eq!(runtime.invoke("exit", doc("random:32")).await.unwrap().body, b"32");
    let started = Instant::now();
    let error = runtime.invoke("exit", doc(&format!("random:{}", 64 << 20))).await.unwrap_err();
    assert!(matches!(error, InvokeError::Trap { .. }), "{error:?}");
    assert!(error.to_string().contains("exceeds limit 1048576"), "{error}");
    assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_parked_in_a_host_call_is_stopped_at_deadline_plus_grace() {
    let policies = Policies::new();
    policies.plugin("sleeper", "sleeper", "timeout = \"200ms\"\nconcurrency = 1");
    policies.plugin("spin", "hostile_loop", "timeout = \"200ms\"");
    let runtime = Arc::new(runtime(&policies).await);

    let started = Instant::now();
    let error = runtime.invoke("sleeper", doc("10000")).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, InvokeError::Timeout { in_host_call: true, .. }), "{error:?}");
    assert!(took >= Duration::from_millis(200) + TIMEOUT_GRACE, "stopped before deadline + grace: {took:?}");
    assert!(took < Duration::from_secs(2), "not stopped near deadline + grace: {took:?}");
    assert_eq!(runtime.in_flight("sleeper"), Some(0), "its slot is released");

    // A spinning guest is stopped by the epoch deadline, before the
    // fallback timer would fire at deadline + grace.
    let started = Instant::now();
    let error = runtime.invoke("spin", doc("go")).await.unwrap_err();
    let overshoot = started.elapsed().saturating_sub(Duration::from_millis(200));
    assert!(matches!(error, InvokeError::Timeout { in_host_call: false, .. }), "{error:?}");
    assert!(overshoot < TIMEOUT_GRACE, "overshoot {overshoot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_queued_behind_a_parked_guest_gets_the_slot_it_frees() {
    let policies = Policies::new();
    policies.plugin("sleeper", "sleeper", "timeout = \"200ms\"\nconcurrency = 1");
    let runtime = Arc::new(runtime(&policies).await);
    let holder = {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.invoke("sleeper", doc("10000")).await })
    };
    while runtime.in_flight("sleeper") != Some(1) {
        tokio::task::yield_now().await;
    }
    // Queued now; the holder is stopped only at 200ms + grace.
    let queued = runtime.invoke("sleeper", doc("1")).await;
    assert_eq!(queued.unwrap().body, b"slept");
    assert!(matches!(holder.await.unwrap(), Err(InvokeError::Timeout { in_host_call: true, .. })));
}

/// Latency of another plugin, and deadline overshoot, with 16 guests
/// spinning on a 2-worker runtime (the sidecar's layout on a 2-core
/// machine). What starvation looks like: a worker that runs a spinner
/// until its deadline serves nothing else meanwhile, so the victim waits
/// for a spinner's whole deadline and a spinner that waited for a worker
/// overshoots its own by about as much (before yields let tokio poll its
/// drivers, a 100 ms deadline was enforced at 577 ms). The spinners'
/// deadline is [`SPIN_DEADLINE`] (1 s); both figures must stay under half
/// of it, plus whatever the machine itself stalled a plain thread during
/// the same run (measured alongside, so a busy machine does not fail the
/// test). Measured unloaded: victim 14–39 ms, overshoot 22–45 ms. With a
/// 10 ms tick (one yield per 10 ms, where tokio's own interval of 61 polls
/// would mean 610 ms between driver checks) the same bound holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_and_deadlines_hold_under_hostile_load() {
    for tick in [Duration::from_millis(1), Duration::from_millis(10)] {
        let settings = RuntimeSettings { epoch_tick: tick, ..settings() };
        let run = spin_and_measure(settings).await;
        let bound = SPIN_DEADLINE / 2 + run.machine_stall;
        assert!(run.victim < bound, "tick {tick:?}: a 5 ms sleep took {:?} (bound {bound:?})", run.victim);
        assert!(run.overshoot < bound, "tick {tick:?}: deadline overshoot {:?} (bound {bound:?})", run.overshoot);
    }
}

/// The spinners' deadline in [`timers_and_deadlines_hold_under_hostile_load`].
const SPIN_DEADLINE: Duration = Duration::from_secs(1);

/// What one run of [`spin_and_measure`] saw: the victim's worst call, the
/// worst deadline overshoot, and the worst oversleep of a plain thread
/// sleeping 5 ms in a loop meanwhile (the machine's own stalls).
struct Measured {
    victim: Duration,
    overshoot: Duration,
    machine_stall: Duration,
}

/// Runs 16 spinners (restarted as they time out) and a victim sleeping
/// 5 ms in a loop for 2.5 s, with a plain thread measuring the machine.
async fn spin_and_measure(settings: RuntimeSettings) -> Measured {
    const SPINNERS: usize = 16;
    let policies = Policies::new();
    let deadline = format!("{}ms", SPIN_DEADLINE.as_millis());
    policies.plugin("spin", "hostile_loop", &format!("timeout = \"{deadline}\"\nconcurrency = {SPINNERS}"));
    policies.plugin("victim", "sleeper", "timeout = \"5s\"");
    let (runtime, report) = load(&policies, settings.clone()).await;
    assert!(report.refused.is_empty(), "{report:?}");
    let runtime = Arc::new(runtime);
    let window = Duration::from_millis(2500);
    let started = Instant::now();

    let machine = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        while started.elapsed() < window {
            let nap = Instant::now();
            std::thread::sleep(Duration::from_millis(5));
            worst = worst.max(nap.elapsed().saturating_sub(Duration::from_millis(5)));
        }
        worst
    });
    let spinners: Vec<_> = (0..SPINNERS)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                while started.elapsed() < window {
                    let call = Instant::now();
                    let error = runtime.invoke("spin", doc("go")).await.unwrap_err();
                    assert_eq!(error.kind(), ErrorKind::Timeout);
                    worst = worst.max(call.elapsed().saturating_sub(SPIN_DEADLINE));
                }
                worst
            })
        })
        .collect();

    let mut victim_calls = 0;
    let mut victim = Duration::ZERO;
    while started.elapsed() < window {
        let call = Instant::now();
        assert_eq!(runtime.invoke("victim", doc("5")).await.unwrap().body, b"slept");
        victim = victim.max(call.elapsed());
        victim_calls += 1;
    }
    let mut overshoot = Duration::ZERO;
    for spinner in spinners {
        overshoot = overshoot.max(spinner.await.unwrap());
    }
    let machine_stall = machine.join().unwrap();
    eprintln!(
        "tick {:?}: victim {victim_calls} calls, worst {victim:?}; spin overshoot worst {overshoot:?}; \
         machine stall {machine_stall:?}",
        settings.epoch_tick
    );
    Measured { victim, overshoot, machine_stall }
}

#[test]
fn hostile_shapes_parse() {
    // Keeps the .wat files valid even if a test above is skipped.
    let dir = tempfile::tempdir().unwrap();
    for shape_name in ["one-more-memory", "three-memories", "forty-memories", "thousand-memories", "big-table"] {
        assert!(shape(dir.path(), shape_name).is_file());
    }
    assert!(Path::new(&guest("echo")).is_file());
}

#[tokio::test]
async fn names_quoted_from_a_component_in_load_errors_are_escaped() {
    // An import name that is a forged log line: wasmtime's error quotes it.
    let policies = Policies::new();
    let forged = "x\\0a2026-11-25T18:00:00Z  INFO gatehouse::runtime: plugin loaded plugin=admin\\1b[31m";
    let text =
        format!("(component (core module $e (import \"{forged}\" \"f\" (func))) (core instance (instantiate $e)))");
    let path = policies.dir.path().join("forge.wasm");
    std::fs::write(&path, wat::parse_str(text).unwrap()).unwrap();
    policies
        .write("forge.toml", &format!("[plugin]\nname = \"forge\"\ncomponent = {:?}\n", path.display().to_string()));
    let (_runtime, report) = load(&policies, settings()).await;
    let reason = refusal(&report, "forge");
    assert!(reason.contains("plugin loaded plugin=admin"), "{reason}");
    assert!(!reason.contains('\n') && !reason.contains('\u{1b}'), "{reason:?}");
}
