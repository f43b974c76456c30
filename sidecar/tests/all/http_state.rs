//! Host state a guest makes the sidecar hold through `wasi:http` resources
//! (issue 16, finding 1), with the `hostile-http-state` guest. Each attack
//! keeps objects that live in the host until the invocation ends:
//!
//! - `fields-clone`: clones of a 60 KiB `fields`, each made distinct by a
//!   small append (unbounded: 3.4 GB);
//! - `from-list`: new 60 KiB `fields` (unbounded: 2.6 GB);
//! - `bodies`: outgoing bodies with a buffered write each (unbounded: 1 MiB
//!   a write, 5.1 GB);
//! - `unsent`: requests with 60 KiB bodies handed to `outgoing-handler`
//!   for a server that never answers (unbounded: 1.4 GB).
//!
//! Each must be refused early, and the peak resident memory of this test
//! process (nextest runs each test in a process of its own) must grow by
//! at most the guest's `memory`, the host bound `host_budget` documents for
//! it, and a slack for the runtime's own allocations.

use gatehouse::services::Services;
use std::sync::Arc;

use gatehouse::runtime::host_budget::{MAX_BYTES_PER_HANDLE, host_bytes_bound, max_handles};
use gatehouse::{Document, ErrorKind, InvokeError, Runtime};

use crate::common::{Policies, guest, settings};
use crate::http_gateway::dns;

const MIB: u64 = 1 << 20;
/// The policy's `[limits] memory`.
const MEMORY: u64 = 16 * MIB;
/// What the runtime itself may allocate during one invocation (instance
/// state, tokio, the allocator's own slack): not attributable to the guest.
const SLACK: u64 = 32 * MIB;
/// The guest stops at this many objects, refused or not.
const GUEST_MAX_OBJECTS: usize = 4_000;

fn policy(http: bool, port: u16) -> String {
    let http = if http {
        format!(
            "[http]\nallow = [\"http://upstream.test:{port}\"]\nmethods = [\"GET\", \"POST\"]\nrate = \"100000/s\"\n"
        )
    } else {
        String::new()
    };
    format!(
        "[plugin]\nname = \"state\"\ncomponent = {:?}\n\n[limits]\nmemory = \"16 MiB\"\ntimeout = \"20s\"\n\n{http}",
        guest("hostile_http_state").display().to_string()
    )
}

fn status_field(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Resets the peak resident size to the current one (Linux `clear_refs` 5).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
}

/// Runs one attack: what the guest answered (or how the invocation
/// failed) and how much the peak resident memory grew meanwhile.
async fn attack(runtime: &Runtime, input: &str) -> (Result<String, InvokeError>, u64) {
    reset_peak();
    let before = status_field("VmRSS:");
    let document = Document { content_type: "text/plain".into(), body: input.as_bytes().to_vec() };
    let outcome = runtime.invoke("state", document).await;
    let grown = status_field("VmHWM:").saturating_sub(before);
    (outcome.map(|output| String::from_utf8_lossy(&output.body).into_owned()), grown)
}

#[tokio::test]
async fn one_invocation_holds_at_most_its_memory_plus_the_documented_constant_in_the_host() {
    // A server that accepts and never answers: requests handed to it stay open.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let policies = Policies::new();
    policies.write("state.toml", &policy(true, port));
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let runtime = Runtime::new(settings(), Arc::new(Services::with_dns(Arc::new(dns())).unwrap())).unwrap();
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);

    let bound = MEMORY + host_bytes_bound(MEMORY, MIB, 4 * MIB) + SLACK;
    for input in ["fields-clone", "from-list", "bodies", &format!("unsent http://upstream.test:{port}/"), "big-strings"]
    {
        let (outcome, grown) = attack(&runtime, input).await;
        println!("{input}: {outcome:?}; peak resident memory grew {} KiB", grown / 1024);
        match &outcome {
            // The guest saw a refusal and stopped: it kept fewer objects
            // than it would have, and no more than it has handles.
            Ok(answer) => {
                let kept: usize = answer.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
                assert!(kept < GUEST_MAX_OBJECTS, "{input}: never refused: {answer}");
                assert!(kept <= max_handles(MEMORY), "{input}: kept more objects than handles: {answer}");
            }
            // The host stopped the invocation at its handle budget.
            Err(error) => {
                assert!(matches!(error, InvokeError::TooManyHandles { .. }), "{input}: {error}");
                assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
            }
        }
        assert!(
            grown <= bound,
            "{input}: the host grew by {} MiB, over {} MiB (memory + host bound + slack); {outcome:?}",
            grown / MIB,
            bound / MIB
        );
    }
    // Per handle, the host holds at most this much (the documented figure).
    assert_eq!(MAX_BYTES_PER_HANDLE, 128 * 1024);
}

#[tokio::test]
async fn a_plugin_world_component_without_http_cannot_import_the_wasi_http_types() {
    let policies = Policies::new();
    policies.write("state.toml", &policy(false, 1));
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let report = runtime.load(&load.set).await;
    let refused = format!("{:?}", report.refused);
    assert!(refused.contains("wasi:http/types") && refused.contains("[http]"), "{refused}");
}
