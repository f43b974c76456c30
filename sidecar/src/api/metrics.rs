//! `/metrics`: Prometheus text format through `prometheus-client`.
//!
//! Invocation counters and latency histograms live here and are updated
//! by the invoke handler; the outbound HTTP counters are kept by
//! `services::http` per loaded plugin and copied into the exposition at
//! scrape time (they restart when a plugin is reloaded, which Prometheus
//! treats as a counter reset). Database health is checked at scrape time
//! (at most once a second, see `databases`). Key-value operations are
//! counted by `services::kv` per plugin, operation and outcome (fixed
//! sets, so guests cannot add series), and each plugin's usage and quotas
//! are read from the store at scrape time ([`kv_usage`]). The audit
//! log's counters (entries appended, failed appends, the latest
//! checkpoint's size and age) are kept by `audit::trail`. SQL calls are
//! counted by `services::sql` by plugin, alias and outcome, with
//! latencies, and each opened pool's connections are read at scrape time.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::databases::Health;
use crate::services::Services;
use crate::services::kv::PluginUsage;
use crate::{InvokeError, Runtime};

/// Labels of an invocation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// Plugin name.
    pub plugin: String,
    /// Plugin version (`unknown` for a plugin that is not loaded).
    pub version: String,
    /// `ok`, or the error kind.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvLabels {
    plugin: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabel {
    database: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    plugin: String,
    outcome: &'static str,
}

/// A key-value gauge: name, help, and how to read it from a plugin's usage.
type KvGauge = (&'static str, &'static str, fn(&PluginUsage) -> Option<u64>);

type LatencyFamily = Family<PluginLabels, Histogram, fn() -> Histogram>;

/// The server's own counters.
#[derive(Clone)]
pub struct Metrics {
    invocations: Family<InvocationLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        fn latency() -> Histogram {
            // 50 µs to about 26 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        }
        Metrics { invocations: Family::default(), latency: Family::new_with_constructor(latency) }
    }
}

impl Metrics {
    /// Counts one invocation (through either route) and its latency.
    /// `version` is `None` when no such plugin is loaded: those are counted
    /// under one `(unknown)` label, since callers choose the names.
    pub fn invocation<T>(&self, plugin: &str, version: Option<&str>, outcome: &Result<T, InvokeError>, took: Duration) {
        let (plugin, version) = match version {
            Some(version) => (plugin, version),
            None => ("(unknown)", "unknown"),
        };
        let outcome = match outcome {
            Ok(_) => "ok",
            // The plugin exists; the caller used the other route.
            Err(InvokeError::WrongInterface { .. }) => "wrong-interface",
            Err(e) => e.kind().as_str(),
        };
        let labels = InvocationLabels { plugin: plugin.into(), version: version.into(), outcome: outcome.into() };
        self.invocations.get_or_create(&labels).inc();
        let labels = PluginLabels { plugin: plugin.into(), version: version.into() };
        self.latency.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The exposition, in the OpenMetrics text format, with each
    /// database's last check.
    pub fn render(&self, runtime: &Runtime, services: &Services, databases: &[Health], kv: &[PluginUsage]) -> String {
        let mut registry = Registry::with_prefix("gatehouse");
        registry.register("invocations", "Plugin invocations, by outcome", self.invocations.clone());
        registry.register("invocation_seconds", "Invocation latency", self.latency.clone());
        let in_flight: Family<NameLabel, Gauge> = Family::default();
        let slots: Family<NameLabel, Gauge> = Family::default();
        let http: Family<HttpLabels, Counter> = Family::default();
        let http_bytes: Family<HttpLabels, Counter> = Family::default();
        for plugin in runtime.summaries() {
            let label = NameLabel { plugin: plugin.name.clone() };
            in_flight.get_or_create(&label).set(i64::from(runtime.in_flight(&plugin.name).unwrap_or(0)));
            slots.get_or_create(&label).set(i64::from(plugin.concurrency));
            let Some(s) = services.http.metrics(&plugin.name) else { continue };
            let plugin = plugin.name;
            for (outcome, n) in [
                ("response", s.responses),
                ("denied_by_policy", s.denied - s.denied_address),
                ("denied_by_address", s.denied_address),
                ("rate_limited", s.rate_limited),
                ("failed", s.failed),
                ("redirect", s.redirects),
            ] {
                http.get_or_create(&HttpLabels { plugin: plugin.clone(), outcome }).inc_by(n);
            }
            http_bytes.get_or_create(&HttpLabels { plugin: plugin.clone(), outcome: "sent" }).inc_by(s.bytes_sent);
            http_bytes.get_or_create(&HttpLabels { plugin, outcome: "received" }).inc_by(s.bytes_received);
        }
        registry.register("plugin_in_flight", "Invocations running now", in_flight);
        registry.register("plugin_concurrency", "Invocations a plugin may run at once (its policy)", slots);
        registry.register("outbound_http_requests", "Outbound HTTP requests of plugins, by outcome", http);
        registry.register("outbound_http_body_bytes", "Outbound HTTP body bytes of plugins", http_bytes);
        let kv_ops: Family<KvLabels, Counter> = Family::default();
        if let Some(store) = &services.kv {
            for plugin in runtime.summaries() {
                for (operation, outcome, n) in store.metrics(&plugin.name).unwrap_or_default() {
                    kv_ops.get_or_create(&KvLabels { plugin: plugin.name.clone(), operation, outcome }).inc_by(n);
                }
            }
        }
        registry.register("kv_operations", "Key-value operations of plugins, by operation and outcome", kv_ops);
        let gauges: [KvGauge; 4] = [
            ("kv_keys", "Keys a plugin stores, all buckets", |u| Some(u.keys)),
            ("kv_bytes", "Bytes of keys and values a plugin stores, all buckets", |u| Some(u.bytes)),
            ("kv_max_keys", "The max_keys quota of a plugin's [kv] grant", |u| u.quota.map(|q| q.max_keys)),
            ("kv_max_bytes", "The max_bytes quota of a plugin's [kv] grant", |u| u.quota.map(|q| q.max_bytes)),
        ];
        for (name, help, read) in gauges {
            let family: Family<NameLabel, Gauge> = Family::default();
            for usage in kv {
                if let Some(n) = read(usage) {
                    family
                        .get_or_create(&NameLabel { plugin: usage.plugin.clone() })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            registry.register(name, help, family);
        }
        services.sql.metrics.register(&services.sql, &mut registry);
        let up: Family<DatabaseLabel, Gauge> = Family::default();
        for health in databases {
            up.get_or_create(&DatabaseLabel { database: health.alias.clone() }).set(i64::from(health.is_up()));
        }
        registry.register("database_up", "Whether the database answered its last check (1) or not (0)", up);
        if let Some(trail) = &services.audit {
            let m = trail.metrics();
            let appended: Counter = Counter::default();
            appended.inc_by(m.appended());
            registry.register("audit_entries_appended", "Audit entries this process appended", appended);
            let failures: Counter = Counter::default();
            failures.inc_by(m.failures());
            registry.register(
                "audit_append_failures",
                "Audit appends that failed (each left the grants in force unchanged)",
                failures,
            );
            let size: Gauge = Gauge::default();
            size.set(i64::try_from(m.checkpoint_size()).unwrap_or(i64::MAX));
            registry.register("audit_checkpoint_size", "Tree size of the latest signed audit checkpoint", size);
            if let Some(age) = m.checkpoint_age() {
                let gauge: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
                gauge.set(age);
                registry.register(
                    "audit_checkpoint_age_seconds",
                    "Seconds since the latest audit checkpoint was signed",
                    gauge,
                );
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// Each plugin loaded with a `[kv]` grant, its usage and quotas, for a
/// scrape. Empty when no plugin has a grant (the store is then not
/// opened) or when the store cannot be read (the gauges are left out, and
/// the operation counters show the `unavailable` calls).
pub async fn kv_usage(services: &Services) -> Vec<PluginUsage> {
    let Some(store) = &services.kv else { return Vec::new() };
    let granted = store.granted();
    if granted.is_empty() {
        return Vec::new();
    }
    let Ok(reader) = store.reader().await else { return Vec::new() };
    let mut list = Vec::with_capacity(granted.len());
    for (plugin, policy) in &granted {
        if let Ok(usage) = reader.plugin_usage(plugin, Some(policy)).await {
            list.push(usage);
        }
    }
    list
}
