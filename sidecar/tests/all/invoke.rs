//! Invoking well-behaved plugins: outputs, typed guest errors, logging.

use gatehouse::{Document, ErrorKind, InvokeError};
use serde_json::Value;

use crate::common::{Policies, capture_logs, runtime};

fn doc(text: &str) -> Document {
    Document { content_type: "text/plain".into(), body: text.as_bytes().to_vec() }
}

fn json(body: &str) -> Document {
    Document { content_type: "application/json".into(), body: body.as_bytes().to_vec() }
}

#[tokio::test]
async fn doc_enricher_computes_statistics_and_keeps_other_fields() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    let runtime = runtime(&policies).await;

    let input = json(r#"{"id": 7, "text": "The quick fox jumps. The quick dog sleeps!\n\nQuick, quick."}"#);
    let output = runtime.invoke("doc-enricher", input).await.expect("enriched");
    assert_eq!(output.content_type, "application/json");
    let doc: Value = serde_json::from_slice(&output.body).unwrap();
    assert_eq!(doc["id"], 7);
    let e = &doc["enrichment"];
    assert_eq!(e["words"], 10);
    assert_eq!(e["sentences"], 3);
    assert_eq!(e["paragraphs"], 2);
    assert_eq!(e["top_terms"][0], serde_json::json!({ "term": "quick", "count": 4 }));
}

#[tokio::test]
async fn doc_enricher_accepts_plain_text() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    let runtime = runtime(&policies).await;
    let input = Document {
        content_type: "text/plain; charset=utf-8".into(),
        body: "Ünïcode wörds, 東京 too.".as_bytes().to_vec(),
    };
    let output = runtime.invoke("doc-enricher", input).await.expect("enriched");
    let doc: Value = serde_json::from_slice(&output.body).unwrap();
    assert_eq!(doc["enrichment"]["words"], 4);
    assert_eq!(doc["enrichment"]["characters"], 22);
}

#[tokio::test]
async fn a_guest_error_comes_back_typed() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    let runtime = runtime(&policies).await;
    let error = runtime.invoke("doc-enricher", json("{not json")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let InvokeError::Plugin { plugin, error } = error else { panic!("expected a plugin error, got {error:?}") };
    assert_eq!(plugin, "doc-enricher");
    assert!(error.message.contains("not valid JSON"), "{}", error.message);
}

#[tokio::test]
async fn echo_returns_arbitrary_bytes_unchanged() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let runtime = runtime(&policies).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let input = Document { content_type: "application/octet-stream".into(), body: body.clone() };
    let output = runtime.invoke("echo", input).await.unwrap();
    assert_eq!(output.body, body);
    assert_eq!(output.content_type, "application/octet-stream");
}

#[tokio::test]
async fn the_no_std_noop_plugin_round_trips_small_and_large_inputs() {
    let policies = Policies::new();
    policies.plugin("noop", "noop", "");
    let runtime = runtime(&policies).await;
    // 4 bytes fit its static arena; 1 MiB makes it grow linear memory.
    for size in [4, 1 << 20] {
        let body = vec![0x5a; size];
        let output = runtime.invoke("noop", Document { content_type: "x/y".into(), body: body.clone() }).await.unwrap();
        assert_eq!(output.body, body);
        assert_eq!(output.content_type, "x/y");
    }
}

#[tokio::test]
async fn unknown_plugin_is_not_found() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let runtime = runtime(&policies).await;
    let error = runtime.invoke("nobody", json("{}")).await.unwrap_err();
    assert!(matches!(error, InvokeError::UnknownPlugin(ref name) if name == "nobody"), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn plugin_info_is_read_at_load() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    policies.plugin("echo", "echo", "");
    let runtime = runtime(&policies).await;
    let plugins: Vec<_> = runtime.summaries().into_iter().map(|plugin| (plugin.name, plugin.version)).collect();
    assert_eq!(plugins, [("doc-enricher".to_string(), "0.1.0".to_string()), ("echo".into(), "0.1.0".into())]);
}

#[tokio::test]
async fn guest_log_calls_become_tagged_events() {
    let policies = Policies::new();
    policies.plugin("doc-enricher", "doc_enricher", "");
    let runtime = runtime(&policies).await;
    let (logs, _guard) = capture_logs();
    runtime.invoke("doc-enricher", json(r#"{"text": "one two three"}"#)).await.unwrap();
    let events = logs.events();
    let event = events
        .iter()
        .find(|e| e.target == "gatehouse::plugin")
        .unwrap_or_else(|| panic!("no plugin event in {events:#?}"));
    assert_eq!(event.level, tracing::Level::INFO);
    assert_eq!(event.fields["message"], "enriched document");
    assert_eq!(event.fields["plugin"], "doc-enricher");
    assert_eq!(event.fields["version"], "0.1.0");
    assert!(event.fields["fields"].contains(r#""words":"3""#), "{:?}", event.fields);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_loaded_version_of_a_plugin_whose_new_policy_or_component_is_refused() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let sleeper = policies.plugin("sleeper", "sleeper", "timeout = \"5s\"");
    let runtime = std::sync::Arc::new(runtime(&policies).await);
    // In flight across the reload: it finishes on the version it started on.
    let in_flight = {
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.invoke("sleeper", doc("300")).await })
    };
    while runtime.in_flight("sleeper") != Some(1) {
        tokio::task::yield_now().await;
    }

    // sleeper's file no longer parses; echo's component is not wasm.
    std::fs::write(&sleeper, "[plugin\nname = ").unwrap();
    let junk = policies.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    policies.write("echo.toml", &format!("[plugin]\nname = \"echo\"\ncomponent = {:?}\n", junk.display().to_string()));
    let load = policies.load();
    let broken: Vec<_> = load.errors.iter().map(|e| e.file.clone()).collect();
    assert_eq!(broken, std::slice::from_ref(&sleeper));
    let report = runtime.reload(&load.set, &load.errors).await;
    assert_eq!(report.refused.len(), 1, "{report:?}");

    assert_eq!(in_flight.await.unwrap().unwrap().body, b"slept");
    assert_eq!(runtime.invoke("sleeper", doc("1")).await.unwrap().body, b"slept");
    assert_eq!(runtime.invoke("echo", doc("still the old echo")).await.unwrap().body, b"still the old echo");

    // A plain load (start-up) does not keep anything.
    let report = runtime.load(&load.set).await;
    assert_eq!(report.refused.len(), 1);
    assert!(matches!(runtime.invoke("echo", doc("x")).await, Err(InvokeError::Refused(_))));
    assert!(matches!(runtime.invoke("sleeper", doc("1")).await, Err(InvokeError::UnknownPlugin(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_counting_invocations_still_running_on_the_old_version() {
    // Attack: reload while the only slot is held, then call again. If the
    // new version had slots of its own, both would run at once.
    let policies = Policies::new();
    policies.plugin("sleeper", "sleeper", "timeout = \"5s\"\nconcurrency = 1");
    let runtime = std::sync::Arc::new(runtime(&policies).await);
    let holder = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            runtime.invoke("sleeper", doc("300")).await.unwrap();
            std::time::Instant::now()
        })
    };
    while runtime.in_flight("sleeper") != Some(1) {
        tokio::task::yield_now().await;
    }
    let report = runtime.reload(&policies.load().set, &[]).await;
    assert!(report.refused.is_empty());
    runtime.invoke("sleeper", doc("1")).await.unwrap();
    let second_done = std::time::Instant::now();
    let holder_done = holder.await.unwrap();
    assert!(second_done >= holder_done, "the second call ran while the first held the only slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_every_running_invocation_across_a_shrinking_reload() {
    let policies = Policies::new();
    policies.plugin("sleeper", "sleeper", "timeout = \"5s\"\nconcurrency = 2");
    let runtime = std::sync::Arc::new(runtime(&policies).await);
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.invoke("sleeper", doc("300")).await })
        })
        .collect();
    while runtime.in_flight("sleeper") != Some(2) {
        tokio::task::yield_now().await;
    }
    policies.plugin("sleeper", "sleeper", "timeout = \"5s\"\nconcurrency = 1");
    assert!(runtime.reload(&policies.load().set, &[]).await.refused.is_empty());
    assert_eq!(runtime.in_flight("sleeper"), Some(2), "both still run on the old version");
    for holder in holders {
        holder.await.unwrap().unwrap();
    }
    assert_eq!(runtime.in_flight("sleeper"), Some(0));
}
