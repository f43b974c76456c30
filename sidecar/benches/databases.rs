//! Database readiness benchmark: what `/readyz` and `/metrics` cost a
//! database. Against a throwaway PostgreSQL on loopback, same run:
//! - baseline: a fresh `PgConnection` (TCP, SCRAM login), `SELECT 1`,
//!   close, which is what every probe would cost without the shared check;
//! - `Databases::check`, called back to back by 1 and by 32 tasks: one
//!   real check a second, every other call answered from the last result.
//!
//! Run with `./dev bench` (or `cargo bench -p gatehouse --bench databases`).
#![allow(missing_docs)]

#[path = "../tests/all/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::databases::{DatabaseSettings, Databases, UrlSource};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

fn main() {
    let postgres = postgres::TestPostgres::start("bench", "bench-pw", "bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let settings =
            BTreeMap::from([("main".to_string(), DatabaseSettings::postgres(UrlSource::Inline(postgres.url())))]);
        let databases = Arc::new(Databases::open(&settings).unwrap());
        let options = databases.options("main").unwrap().clone();

        let baseline = per_call(Duration::from_secs(3), || {
            let options = options.clone();
            async move {
                let mut connection = PgConnection::connect_with(&options).await.unwrap();
                connection.execute("SELECT 1").await.unwrap();
                connection.close().await.unwrap();
            }
        })
        .await;
        println!("| path | tasks | µs/call | vs direct connect |");
        println!("|---|---|---|---|");
        println!("| direct connect + `SELECT 1` + close | 1 | {baseline:.1} | 1.00 |");
        for tasks in [1, 32] {
            let started = Instant::now();
            let calls = run_tasks(tasks, Duration::from_secs(3), databases.clone()).await;
            let micros = started.elapsed().as_secs_f64() * 1e6 * tasks as f64 / calls as f64;
            println!("| `Databases::check` | {tasks} | {micros:.2} | {:.0}x faster |", baseline / micros);
        }
    });
}

async fn per_call<F, Fut>(budget: Duration, call: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < budget {
        call().await;
        calls += 1;
    }
    started.elapsed().as_secs_f64() * 1e6 / calls as f64
}

/// Calls `check` from `tasks` tasks for `budget`; returns the calls made.
async fn run_tasks(tasks: usize, budget: Duration, databases: Arc<Databases>) -> u64 {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let databases = databases.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut calls = 0u64;
                while started.elapsed() < budget {
                    assert!(databases.check().await.iter().all(|h| h.is_up()));
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total
}
