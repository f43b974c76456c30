//! Query counters and latencies of the SQL gateway, by plugin, database
//! alias and outcome (`ok` or an error kind), and each opened pool's
//! connections. Plugins and aliases are named by the operator's files
//! (a call naming an alias the plugin is not granted is counted under
//! `(not granted)`, never under the guest's text) and outcomes come from a
//! fixed set, so the number of series is bounded by the policies and
//! settings, never by a guest.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::pool::SqlGateway;
use crate::ErrorKind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    plugin: String,
    database: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    plugin: String,
    database: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    database: String,
    state: &'static str,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The gateway's counters.
#[derive(Debug)]
pub struct SqlMetrics {
    queries: Family<QueryLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for SqlMetrics {
    fn default() -> Self {
        fn latency() -> Histogram {
            // 50 µs to about 26 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        }
        SqlMetrics { queries: Family::default(), latency: Family::new_with_constructor(latency) }
    }
}

impl SqlMetrics {
    /// Counts one call of `plugin` on `alias` that took `took`.
    pub fn record(&self, plugin: &str, alias: &str, outcome: Option<ErrorKind>, took: Duration) {
        let outcome = outcome.map_or("ok", ErrorKind::as_str);
        let (plugin, database) = (plugin.to_string(), alias.to_string());
        self.queries.get_or_create(&QueryLabels { plugin: plugin.clone(), database: database.clone(), outcome }).inc();
        self.latency.get_or_create(&LatencyLabels { plugin, database }).observe(took.as_secs_f64());
    }

    /// Calls counted for (plugin, alias, outcome).
    pub fn count(&self, plugin: &str, alias: &str, outcome: &'static str) -> u64 {
        let labels = QueryLabels { plugin: plugin.into(), database: alias.into(), outcome };
        self.queries.get(&labels).map_or(0, |c| c.get())
    }

    /// Registers `sql_queries` (counter), `sql_query_seconds` (histogram)
    /// and `sql_pool_connections` (gauge: `in_use` and `idle` for each
    /// alias whose pool is open) in `registry`.
    pub fn register(&self, gateway: &SqlGateway, registry: &mut Registry) {
        registry.register("sql_queries", "SQL calls of plugins, by database alias and outcome", self.queries.clone());
        registry.register("sql_query_seconds", "SQL call latency, by plugin and database alias", self.latency.clone());
        let pools: Family<PoolLabels, Gauge> = Family::default();
        for alias in gateway.aliases() {
            let Some(pool) = alias.opened() else { continue };
            let (size, idle) = pool.usage();
            let idle = i64::try_from(idle).unwrap_or(i64::MAX);
            let database = alias.name.clone();
            pools.get_or_create(&PoolLabels { database: database.clone(), state: "idle" }).set(idle);
            pools.get_or_create(&PoolLabels { database, state: "in_use" }).set((i64::from(size) - idle).max(0));
        }
        registry.register("sql_pool_connections", "Connections of each opened database pool, by state", pools);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_plugin_alias_and_outcome_with_their_latency() {
        let metrics = SqlMetrics::default();
        metrics.record("a", "app", None, Duration::from_micros(50));
        metrics.record("a", "app", None, Duration::from_millis(3));
        metrics.record("a", "app", Some(ErrorKind::Denied), Duration::from_secs(10));
        metrics.record("b", "app", None, Duration::from_micros(50));
        assert_eq!(
            (metrics.count("a", "app", "ok"), metrics.count("a", "app", "denied"), metrics.count("b", "app", "ok")),
            (2, 1, 1)
        );
        let mut registry = Registry::with_prefix("gatehouse");
        metrics.register(&SqlGateway::new(&Default::default()), &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("gatehouse_sql_queries_total{plugin=\"a\",database=\"app\",outcome=\"denied\"} 1"),
            "{text}"
        );
        assert!(text.contains("gatehouse_sql_query_seconds_count{plugin=\"a\",database=\"app\"} 3"), "{text}");
        let bucket = text.lines().find(|l| {
            l.starts_with("gatehouse_sql_query_seconds_bucket{")
                && l.contains("plugin=\"b\"")
                && l.contains("le=\"0.0001\"")
        });
        assert!(bucket.is_some_and(|l| l.ends_with(" 1")), "{text}");
    }
}
