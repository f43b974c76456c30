//! Hostile guests. Attacks tried, and what must happen:
//! - spinning forever in wasm: stopped at the deadline (`timeout`), the
//!   sidecar and the plugin stay usable;
//! - allocating without bound: stopped at the memory limit
//!   (`quota-exceeded`), not a host abort;
//! - panicking (a trap): fails alone while other plugins run concurrently;
//! - importing raw sockets (`wasi:sockets`) or an interface the sidecar
//!   does not provide: refused at load time, naming the import;
//! - bytes that are not a component at all: refused at load time;
//! - flooding a plugin with more concurrent calls than its policy allows:
//!   the excess waits, then fails `rate-limited`;
//! - writing to stderr: captured into the log, never raw to the terminal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::{Document, ErrorKind, InvokeError, Runtime};

use crate::common::{Policies, capture_logs, runtime, settings};

fn doc(text: &str) -> Document {
    Document { content_type: "text/plain".into(), body: text.as_bytes().to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline_and_everything_keeps_working() {
    let policies = Policies::new();
    policies.plugin("spin", "hostile_loop", "timeout = \"200ms\"");
    policies.plugin("echo", "echo", "");
    let runtime = runtime(&policies).await;

    for attempt in 0..2 {
        let started = Instant::now();
        let error = runtime.invoke("spin", doc("go")).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(error, InvokeError::Timeout { ref plugin, .. } if plugin == "spin"),
            "attempt {attempt}: {error:?}"
        );
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert!(elapsed >= Duration::from_millis(200), "stopped early: {elapsed:?}");
        eprintln!(
            "attempt {attempt}: stopped after {elapsed:?} (overshoot {:?})",
            elapsed - Duration::from_millis(200)
        );
        // Another plugin, and the same engine, are unaffected.
        assert_eq!(runtime.invoke("echo", doc("still here")).await.unwrap().body, b"still here");
    }
    assert_eq!(runtime.in_flight("spin"), Some(0), "the timed-out invocations released their slots");
}

#[tokio::test]
async fn a_memory_hog_fails_with_quota_exceeded() {
    let policies = Policies::new();
    policies.plugin("hog", "hostile_memory", "memory = \"16 MiB\"\ntimeout = \"5s\"");
    policies.plugin("echo", "echo", "");
    let runtime = runtime(&policies).await;

    let error = runtime.invoke("hog", doc("eat")).await.unwrap_err();
    assert!(matches!(error, InvokeError::MemoryLimit { limit, .. } if limit == 16 << 20), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
    assert_eq!(runtime.invoke("echo", doc("ok")).await.unwrap().body, b"ok");
    // The plugin itself is still invocable (and still bounded).
    assert_eq!(runtime.invoke("hog", doc("again")).await.unwrap_err().kind(), ErrorKind::QuotaExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guest_fails_alone_under_concurrency() {
    let policies = Policies::new();
    policies.plugin("crash", "hostile_trap", "concurrency = 8");
    policies.plugin("echo", "echo", "concurrency = 8");
    let runtime = Arc::new(runtime(&policies).await);

    let mut tasks = Vec::new();
    for i in 0..32 {
        let runtime = runtime.clone();
        tasks.push(tokio::spawn(async move {
            let plugin = if i % 2 == 0 { "crash" } else { "echo" };
            (plugin, i, runtime.invoke(plugin, doc(&format!("request {i}"))).await)
        }));
    }
    for task in tasks {
        let (plugin, i, result) = task.await.expect("task panicked");
        match plugin {
            "echo" => assert_eq!(result.unwrap().body, format!("request {i}").into_bytes()),
            _ => {
                let error = result.unwrap_err();
                assert!(matches!(error, InvokeError::Trap { .. }), "{error:?}");
                assert_eq!(error.kind(), ErrorKind::Internal);
            }
        }
    }
}

#[tokio::test]
async fn a_panic_message_is_captured_into_the_log_not_written_raw() {
    let policies = Policies::new();
    policies.plugin("crash", "hostile_trap", "");
    let runtime = runtime(&policies).await;
    let (logs, _guard) = capture_logs();
    runtime.invoke("crash", doc("12345")).await.unwrap_err();
    drop(runtime);
    let events = logs.events();
    let stderr: Vec<_> = events
        .iter()
        .filter(|e| {
            e.target == "gatehouse::plugin"
                && e.fields.get("fields").is_some_and(|f| f.contains(r#""stream":"stderr""#))
        })
        .collect();
    let panic_line = stderr
        .iter()
        .find(|e| e.fields["message"].contains("hostile-trap received 5 bytes"))
        .unwrap_or_else(|| panic!("no captured panic message in {events:#?}"));
    assert_eq!(panic_line.level, tracing::Level::WARN);
    assert_eq!(panic_line.fields["plugin"], "crash");
    assert!(stderr.iter().all(|e| !e.fields["message"].trim().is_empty()), "blank lines are not logged");
}

#[tokio::test]
async fn ungranted_and_unknown_imports_are_refused_at_load() {
    let policies = Policies::new();
    policies.plugin("raw-socket", "hostile_socket", "");
    policies.plugin("foreign", "hostile_foreign_import", "");
    policies.plugin("echo", "echo", "");
    let load = policies.load();
    assert!(load.errors.is_empty());
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let report = runtime.load(&load.set).await;

    assert_eq!(report.loaded.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["echo"]);
    let reason =
        |name: &str| report.refused.iter().find(|e| e.plugin == name).map(|e| e.to_string()).unwrap_or_default();
    let socket = reason("raw-socket");
    assert!(socket.contains("wasi:sockets/tcp-create-socket") && socket.contains("never granted"), "{socket}");
    let foreign = reason("foreign");
    assert!(foreign.contains("evil:net/raw") && foreign.contains("does not provide"), "{foreign}");

    let error = runtime.invoke("raw-socket", doc("connect")).await.unwrap_err();
    assert!(matches!(error, InvokeError::Refused(_)), "{error:?}");
    assert!(error.to_string().contains("wasi:sockets"), "{error}");
    assert_eq!(runtime.invoke("echo", doc("fine")).await.unwrap().body, b"fine");
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused_at_load() {
    let policies = Policies::new();
    let junk = policies.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm but not really").unwrap();
    policies.write("junk.toml", &format!("[plugin]\nname = \"junk\"\ncomponent = {:?}\n", junk.display().to_string()));
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let report = runtime.load(&policies.load().set).await;
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].reason.contains("not a valid component"), "{}", report.refused[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_by_the_policy() {
    // One slot, 400ms deadline. A holds it until it times out; B and C
    // queue behind it. Whichever of them gets the slot next holds it until
    // its own deadline, longer than the other may wait: that one fails
    // `rate-limited`. No sleeps: each step waits for the state it needs.
    let policies = Policies::new();
    policies.plugin("spin", "hostile_loop", "timeout = \"400ms\"\nconcurrency = 1");
    let runtime = Arc::new(runtime(&policies).await);
    let call = |runtime: Arc<Runtime>| tokio::spawn(async move { runtime.invoke("spin", doc("x")).await });

    let a = call(runtime.clone());
    while runtime.in_flight("spin") != Some(1) {
        tokio::task::yield_now().await;
    }
    let (b, c) = (call(runtime.clone()), call(runtime.clone()));
    assert_eq!(a.await.unwrap().unwrap_err().kind(), ErrorKind::Timeout);
    let mut kinds = vec![b.await.unwrap().unwrap_err(), c.await.unwrap().unwrap_err()];
    kinds.sort_by_key(|e| e.kind().as_str());
    assert!(matches!(kinds[0], InvokeError::Busy { limit: 1, .. }), "{kinds:?}");
    assert_eq!(kinds[0].kind(), ErrorKind::RateLimited);
    assert_eq!(kinds[1].kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn a_cached_artifact_others_may_write_is_never_run() {
    // Attack: loosen (or plant) a compiled artifact in the code cache;
    // loading it would run whatever native code it holds.
    use std::os::unix::fs::PermissionsExt;
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let cache = tempfile::tempdir().unwrap();
    let settings = gatehouse::RuntimeSettings { cache_dir: Some(cache.path().join("cache")), ..settings() };
    let warm = Runtime::new(settings.clone(), crate::common::services()).unwrap();
    let (artifact, _) = warm.precompile(&policies.load().set.plugins["echo"]).unwrap();
    assert_eq!(std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o666)).unwrap();

    let (logs, _guard) = capture_logs();
    let runtime = Runtime::new(settings, crate::common::services()).unwrap();
    assert!(runtime.load(&policies.load().set).await.refused.is_empty());
    assert!(
        logs.events().iter().any(|e| e.fields.get("message").is_some_and(|m| m.contains("untrusted cached artifact"))),
        "the loosened artifact was used"
    );
    assert_eq!(std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777, 0o600, "compiled again");
    assert_eq!(runtime.invoke("echo", doc("ok")).await.unwrap().body, b"ok");
}
