//! The one wasmtime `Engine` of the process and its epoch ticker.
//!
//! Configuration choices and their measured effect are in BENCHMARKS.md:
//! the pooling allocator with copy-on-write memory images makes a fresh
//! instance per invocation cost microseconds; `concurrency_support` is off
//! because no interface uses component-model async (it costs 2-4x per call);
//! epochs (not fuel) bound execution time.

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::RuntimeSettings;
use super::limits::{MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_TABLES_PER_COMPONENT};

pub(super) fn new_engine(settings: &RuntimeSettings) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true).concurrency_support(false).epoch_interruption(true).memory_init_cow(true);
    if settings.pooling {
        // Every invocation is one component instance capped at the
        // per-component counts, so a pool of `pool_instances` such shapes
        // can never be emptied by one odd-shaped component.
        let instances = settings.pool_instances();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .total_core_instances(instances.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
            .total_tables(instances.saturating_mul(MAX_TABLES_PER_COMPONENT))
            .total_memories(instances.saturating_mul(MAX_MEMORIES_PER_COMPONENT))
            .total_stacks(instances)
            .max_memory_size(usize::try_from(settings.max_memory).unwrap_or(usize::MAX))
            // Resetting a reused slot with memset is cheaper than madvise
            // for the few pages a typical invocation dirties.
            .linear_memory_keep_resident(usize::try_from(settings.keep_resident).unwrap_or(0))
            .table_keep_resident(usize::try_from(settings.keep_resident / 4).unwrap_or(0))
            // With pagemap_scan (Linux >= 6.7) only dirtied pages are reset.
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    let engine = Engine::new(&config)?;
    start_epoch_ticker(&engine, settings.epoch_tick);
    Ok(engine)
}

/// Advances the engine's epoch every `tick` until the engine is dropped.
/// Deadlines are counted in ticks, so the tick bounds the overshoot of a
/// deadline (see the README's "Limits" section).
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("gatehouse-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}
