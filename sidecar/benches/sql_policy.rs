//! Statement policy benchmark: what `services::sql::check` costs (parse in
//! the alias's dialect, then the walk against a policy) for typical
//! statements, against sqlparser's parse alone (the baseline, same
//! statements, same run), and what a statement sent again costs: a lookup
//! in the grant's [`CheckCache`] (what the gateway does before checking).
//! Prints a table for BENCHMARKS.md.
//!
//! Each statement is checked in batches of 2,000 calls; rows alternate
//! over five rounds and the median batch is kept. Run with `./dev bench`
//! or `cargo bench -p gatehouse --bench sql_policy`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use gatehouse::services::sql::check_cache::CheckCache;
use gatehouse::services::sql::{Dialect, Door, SqlPolicy, check};
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

const ROUNDS: usize = 5;
const BATCH: u32 = 2_000;

const POLICY: &str = r#"
statements = ["select", "insert", "update", "delete"]
[tables]
products = ["select", "insert", "update"]
orders = ["select", "insert", "update", "delete"]
customers = { select = ["id", "name"], update = ["name"] }
"#;

/// (label, SQLite text, PostgreSQL text): the same statement with each
/// dialect's placeholders.
const STATEMENTS: &[(&str, &str, &str)] = &[
    (
        "point select",
        "SELECT id, name, price FROM products WHERE id = ?",
        "SELECT id, name, price FROM products WHERE id = $1",
    ),
    (
        "join + filter + order",
        "SELECT p.name, o.quantity FROM orders o JOIN products p ON p.id = o.product_id WHERE o.status = ? ORDER BY o.id DESC LIMIT 20",
        "SELECT p.name, o.quantity FROM orders o JOIN products p ON p.id = o.product_id WHERE o.status = $1 ORDER BY o.id DESC LIMIT 20",
    ),
    (
        "aggregate + group",
        "SELECT status, count(*), sum(quantity) FROM orders GROUP BY status HAVING count(*) > ?",
        "SELECT status, count(*), sum(quantity) FROM orders GROUP BY status HAVING count(*) > $1",
    ),
    (
        "sub-query + CTE",
        "WITH recent AS (SELECT * FROM orders WHERE id > ?) SELECT c.name FROM customers c WHERE c.id IN (SELECT r.customer_id FROM recent r)",
        "WITH recent AS (SELECT * FROM orders WHERE id > $1) SELECT c.name FROM customers c WHERE c.id IN (SELECT r.customer_id FROM recent r)",
    ),
    (
        "insert",
        "INSERT INTO orders (id, customer_id, product_id, quantity, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        "INSERT INTO orders (id, customer_id, product_id, quantity, status, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    ),
    (
        "upsert + returning",
        "INSERT INTO products (id, name, price, stock) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET stock = excluded.stock RETURNING id",
        "INSERT INTO products (id, name, price, stock) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET stock = excluded.stock RETURNING id",
    ),
    (
        "update",
        "UPDATE products SET stock = stock - ? WHERE id = ?",
        "UPDATE products SET stock = stock - $1 WHERE id = $2",
    ),
    ("delete", "DELETE FROM orders WHERE status = ? AND id < ?", "DELETE FROM orders WHERE status = $1 AND id < $2"),
];

fn per_call_us(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..BATCH {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let policy = SqlPolicy::from_toml(POLICY).expect("valid policy");
    println!("| statement | dialect | parse only µs | parse + check µs | ratio | sent again (cache) µs |");
    println!("|---|---|---|---|---|---|");
    let mut totals = [(0.0, 0.0, 0.0); 2];
    for (label, sqlite, postgres) in STATEMENTS {
        for (i, (dialect, sql)) in [(Dialect::Sqlite, *sqlite), (Dialect::Postgres, *postgres)].into_iter().enumerate()
        {
            let passed = check(dialect, &policy, sql).unwrap_or_else(|d| panic!("{label}: {d}"));
            let cache = CheckCache::default();
            cache.put(Door::Gatehouse, sql, &passed);
            let (mut parse, mut checked, mut cached) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                parse.push(per_call_us(|| {
                    let statements = match dialect {
                        Dialect::Sqlite => Parser::parse_sql(&SQLiteDialect {}, black_box(sql)),
                        Dialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, black_box(sql)),
                    };
                    black_box(statements.expect("parses"));
                }));
                checked.push(per_call_us(|| {
                    black_box(check(dialect, &policy, black_box(sql)).expect("allowed"));
                }));
                cached.push(per_call_us(|| {
                    black_box(cache.get(Door::Gatehouse, black_box(sql)).expect("kept"));
                }));
            }
            let (parse, checked, cached) = (median(parse), median(checked), median(cached));
            totals[i].0 += parse;
            totals[i].1 += checked;
            totals[i].2 += cached;
            println!("| {label} | {dialect} | {parse:.2} | {checked:.2} | {:.2}x | {cached:.2} |", checked / parse);
        }
    }
    let n = STATEMENTS.len() as f64;
    for (i, dialect) in [Dialect::Sqlite, Dialect::Postgres].into_iter().enumerate() {
        let (parse, checked, cached) = (totals[i].0 / n, totals[i].1 / n, totals[i].2 / n);
        println!("| **mean** | {dialect} | {parse:.2} | {checked:.2} | {:.2}x | {cached:.2} |", checked / parse);
    }
}
