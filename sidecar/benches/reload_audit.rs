//! What the audit log adds to a reload. Prints a table for BENCHMARKS.md:
//! a reload of one plugin (the `echo` guest, compiled once, then from
//! the code cache) whose `[http] allow` list flips between two sets of N
//! origins (2N grant changes each time), without the audit log
//! (`Runtime::reload`) and with it (`Runtime::reload_gated` recording
//! the changes through `AuditTrail::record`: read the grants in force,
//! diff, one durable append of 2N entries with a signed checkpoint).
//!
//! Run with `cargo bench -p gatehouse --bench reload_audit`
//! (`GATEHOUSE_GUEST_DIR`: where the guests are; `GATEHOUSE_BENCH_DIR`:
//! the disk, default the system's temporary directory).
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::audit::{AuditTrail, Trigger};
use gatehouse::config::AuditSettings;
use gatehouse::policy::{PolicySet, load_dir};
use gatehouse::services::Services;
use gatehouse::services::http::resolve::SystemLookup;
use gatehouse::{Runtime, RuntimeSettings};

const ROUNDS: u32 = 40;

fn guest_dir() -> PathBuf {
    std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip2/release")))
}

/// The policy with N origins named `<prefix>0..N`.
fn set(dir: &std::path::Path, prefix: &str, n: usize) -> PolicySet {
    let allow: Vec<String> = (0..n).map(|i| format!("\"https://{prefix}{i}.example.com\"")).collect();
    let text = format!(
        "[plugin]\nname = \"echo\"\ncomponent = {:?}\n[http]\nallow = [{}]\n",
        guest_dir().join("echo.wasm").display().to_string(),
        allow.join(", ")
    );
    std::fs::write(dir.join("echo.toml"), text).unwrap();
    let load = load_dir(dir, &guest_dir()).unwrap();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    load.set
}

fn main() {
    let base = std::env::var_os("GATEHOUSE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let tokio = tokio::runtime::Runtime::new().unwrap();
    println!("| changes per reload | reload without audit | with audit | audit's share |");
    println!("|---|---|---|---|");
    for n in [1usize, 10, 100, 500] {
        let data = tempfile::tempdir_in(&base).unwrap();
        let policies = tempfile::tempdir_in(&base).unwrap();
        let sets = [set(policies.path(), "a", n), set(policies.path(), "b", n)];
        let settings = RuntimeSettings { cache_dir: Some(data.path().join("cache")), ..RuntimeSettings::default() };
        let services = Arc::new(Services::with_dns(Arc::new(SystemLookup)).unwrap());
        let runtime = Runtime::new(settings, services).unwrap();
        let audit = AuditSettings {
            enabled: true,
            key: data.path().join("audit/key"),
            origin: Some("bench/reload".into()),
            require_approval: false,
            database: None,
        };
        let trail = Arc::new(AuditTrail::open(data.path(), &audit).unwrap());
        tokio.block_on(async {
            // Warm: compile once into the cache, record the first state.
            runtime.reload(&sets[0], &[]).await;
            let mut plain = Duration::ZERO;
            let mut audited = Duration::ZERO;
            for round in 0..ROUNDS {
                let next = &sets[(round as usize + 1) % 2];
                let started = Instant::now();
                runtime.reload(next, &[]).await;
                plain += started.elapsed();
            }
            // The log starts from the grants in force (sets[0], ROUNDS even).
            let in_force: Vec<_> = sets[0].plugins.values().cloned().collect();
            trail.record(&Trigger::Disk, &in_force, &[]).unwrap();
            for round in 0..ROUNDS {
                let next = &sets[(round as usize + 1) % 2];
                let trail = trail.clone();
                let started = Instant::now();
                let gate = move |in_force: Vec<gatehouse::policy::PluginPolicy>| async move {
                    let written = tokio::task::spawn_blocking(move || trail.record(&Trigger::Disk, &in_force, &[]))
                        .await
                        .unwrap()
                        .map_err(|e| e.to_string())?;
                    assert_eq!(written.entries, 2 * n as u64);
                    Ok(())
                };
                runtime.reload_gated(next, &[], &gatehouse::Holds::default(), gate).await.map_err(|(_, e)| e).unwrap();
                audited += started.elapsed();
            }
            let (plain, audited) = (plain / ROUNDS, audited / ROUNDS);
            let share = audited.saturating_sub(plain).as_secs_f64() / audited.as_secs_f64() * 100.0;
            println!("| {} | {plain:.2?} | {audited:.2?} | {share:.0}% |", 2 * n);
        });
    }
}
