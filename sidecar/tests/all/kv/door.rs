//! The `gatehouse:services/kv` door, end to end: the `kv-counter` guest
//! through the runtime, on a real redb file in a temporary data directory.

use std::path::Path;
use std::sync::Arc;

use gatehouse::services::Services;
use gatehouse::services::kv::KvStore;
use gatehouse::{Document, ErrorKind, InvokeError, Runtime};

use crate::common::{Policies, guest, settings};

/// A runtime over `policies` with its key-value store in `data`.
async fn runtime(policies: &Policies, data: &Path) -> Runtime {
    let services = Services::with_dns(Arc::new(gatehouse::services::http::resolve::SystemLookup))
        .unwrap()
        .with_kv(KvStore::redb(data.join("kv")));
    let runtime = Runtime::new(settings(), Arc::new(services)).unwrap();
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    runtime
}

fn counter(policies: &Policies, name: &str, kv: &str) {
    let component = guest("kv_counter").display().to_string();
    policies.write(
        &format!("{name}.toml"),
        &format!("[plugin]\nname = \"{name}\"\ncomponent = {component:?}\n[kv]\n{kv}\n"),
    );
}

async fn call(runtime: &Runtime, plugin: &str, command: &str) -> Result<serde_json::Value, InvokeError> {
    let output = runtime
        .invoke(plugin, Document { content_type: "text/plain".into(), body: command.as_bytes().to_vec() })
        .await?;
    Ok(serde_json::from_slice(&output.body).unwrap())
}

fn kind(result: Result<serde_json::Value, InvokeError>) -> ErrorKind {
    result.expect_err("expected an error").kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_restart_and_plugins_count_apart() {
    let policies = Policies::new();
    counter(&policies, "a", "");
    counter(&policies, "b", "");
    let data = tempfile::tempdir().unwrap();
    {
        let runtime = runtime(&policies, data.path()).await;
        assert_eq!(call(&runtime, "a", "visit").await.unwrap()["visits"], 1);
        assert_eq!(call(&runtime, "a", "visit").await.unwrap()["visits"], 2);
        // Another plugin's `visits` is another key: namespaces are per plugin.
        assert_eq!(call(&runtime, "b", "visit").await.unwrap()["visits"], 1);
    }
    // A new runtime over the same data directory: the writes were durable.
    let runtime = runtime(&policies, data.path()).await;
    assert_eq!(call(&runtime, "a", "visit").await.unwrap()["visits"], 3);
    assert_eq!(call(&runtime, "a", "usage").await.unwrap()["keys"], 1);
}

/// Attacks: reading a bucket the policy does not grant; writing past the
/// byte quota (refused whole, nothing written); calling past the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_quotas_and_rate_are_the_policys() {
    let policies = Policies::new();
    counter(&policies, "a", "max_bytes = \"1 KiB\"\nmax_value = \"4 KiB\"\nrate = \"5/m\"");
    let data = tempfile::tempdir().unwrap();
    let runtime = runtime(&policies, data.path()).await;
    assert_eq!(kind(call(&runtime, "a", "peek secret key").await), ErrorKind::Denied);
    assert_eq!(call(&runtime, "a", "fill 900").await.unwrap()["stored"], 900);
    assert_eq!(kind(call(&runtime, "a", "fill 1100").await), ErrorKind::QuotaExceeded);
    let usage = call(&runtime, "a", "usage").await.unwrap();
    assert_eq!(usage["bytes"], 4 + 900, "the refused write changed nothing");
    // The fifth call in this minute passes (refused calls spent their
    // tokens too); the sixth is over the rate.
    assert_eq!(call(&runtime, "a", "visit").await.unwrap()["visits"], 1);
    let error = call(&runtime, "a", "visit").await.expect_err("the sixth call in a minute");
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
}

/// A component that imports the door without a `[kv]` section is refused
/// at load, naming the import and the section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_needs_a_kv_section() {
    let policies = Policies::new();
    let component = guest("kv_counter").display().to_string();
    policies.write("a.toml", &format!("[plugin]\nname = \"a\"\ncomponent = {component:?}\n"));
    let services = Services::with_dns(Arc::new(gatehouse::services::http::resolve::SystemLookup)).unwrap();
    let runtime = Runtime::new(settings(), Arc::new(services)).unwrap();
    let report = runtime.load(&policies.load().set).await;
    let reason = &report.refused[0].reason;
    assert!(reason.contains("gatehouse:services/kv") && reason.contains("[kv]"), "{reason}");
}
