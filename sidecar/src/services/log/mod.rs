//! `gatehouse:services/log`: guest log calls become `tracing` events on the
//! `gatehouse::plugin` target, tagged with the plugin's name and version.
//! The guest's stdout/stderr are captured the same way (see [`stdio`]).

pub mod stdio;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::HasData;

use crate::bindings::gatehouse::services::log::{Field, Host, Level};
use crate::guest_text::{self, escaped};
use window::{Admit, Dropped, LogWindow};

/// Longest message kept, in escaped bytes; the rest is replaced by a marker.
pub const MAX_MESSAGE: usize = guest_text::MESSAGE;
/// Fields kept per event; the rest are dropped.
pub const MAX_FIELDS: usize = 32;
/// Longest field key, in escaped bytes.
pub const MAX_FIELD_KEY: usize = 64;
/// Longest field value, in escaped bytes.
pub const MAX_FIELD_VALUE: usize = 1024;
/// Events one invocation may log (log calls and captured stdio lines).
pub const MAX_EVENTS_PER_INVOCATION: u64 = 256;
/// Guest text one invocation may log, counted after escaping.
pub const MAX_BYTES_PER_INVOCATION: u64 = 256 * 1024;
/// Events one plugin may log per second, across all its invocations
/// (the per-invocation summaries and the sidecar's notes included).
pub const MAX_EVENTS_PER_PLUGIN_SECOND: u64 = 1000;
/// Bytes one plugin may log per second, across all its invocations.
pub const MAX_BYTES_PER_PLUGIN_SECOND: u64 = 1 << 20;

/// Who is logging, attached to every event a plugin produces, and the
/// plugin's log budget over time, shared by all its invocations.
#[derive(Debug, Clone)]
pub struct PluginTag {
    /// Plugin name from its policy.
    pub name: String,
    /// Version the plugin reports through `info()` (validated at load).
    pub version: String,
    /// Events and bytes per second, across invocations.
    pub window: Arc<LogWindow>,
}

impl PluginTag {
    /// A tag for `name` at `version` with a fresh budget over time.
    pub fn new(name: &str, version: &str) -> Self {
        let window = Arc::new(LogWindow::new(MAX_EVENTS_PER_PLUGIN_SECOND, MAX_BYTES_PER_PLUGIN_SECOND));
        PluginTag { name: name.to_string(), version: version.to_string(), window }
    }

    /// The same plugin at another version, sharing the budget over time.
    pub fn at_version(&self, version: &str) -> Self {
        PluginTag { version: version.to_string(), ..self.clone() }
    }
}

/// The per-invocation state of the log interface. Clones share one
/// budget, so the guest's log calls and its captured stdout and stderr
/// draw on the same per-invocation allowance.
#[derive(Debug, Clone)]
pub struct Logger {
    budget: Arc<Budget>,
}

/// What one invocation has logged so far, and what it was refused. When
/// the invocation ends (the last clone of its logger is dropped), one
/// summary event reports what was dropped.
#[derive(Debug)]
struct Budget {
    tag: Arc<PluginTag>,
    events: AtomicU64,
    bytes: AtomicU64,
    dropped_events: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl Logger {
    /// A logger tagging events with `tag`, with a fresh budget.
    pub fn new(tag: Arc<PluginTag>) -> Self {
        Logger {
            budget: Arc::new(Budget {
                tag,
                events: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                dropped_events: AtomicU64::new(0),
                dropped_bytes: AtomicU64::new(0),
            }),
        }
    }

    /// Emits one guest event, escaped and bounded, if the invocation's
    /// budget allows; also the path for captured stdout/stderr lines.
    pub fn emit(&self, level: Level, message: &str, fields: &[Field]) {
        // Once the budget is spent, drop without rendering anything.
        if self.budget.spent() {
            self.budget.drop_event(message.len() as u64);
            return;
        }
        let message = escaped(message, MAX_MESSAGE).to_string();
        // A JSON object: one unambiguous rendering for the text log (where
        // it shows as `fields={"k":"v"}`) and the JSON log (where it becomes
        // an object). Keys and values are escaped first, so no control
        // character survives into either.
        let mut object = serde_json::Map::new();
        for field in fields.iter().take(MAX_FIELDS) {
            let (key, value) = (escaped(&field.key, MAX_FIELD_KEY), escaped(&field.value, MAX_FIELD_VALUE));
            object.insert(key.to_string(), serde_json::Value::String(value.to_string()));
        }
        let rendered = serde_json::Value::Object(object).to_string();
        if !self.budget.spend((message.len() + rendered.len()) as u64) {
            return;
        }
        self.event(level, &message, &rendered);
    }

    /// Emits an event the sidecar writes about the guest (not guest text),
    /// outside the invocation's budget but within the plugin's over time;
    /// `fields` is a JSON object.
    pub(crate) fn notice(&self, level: Level, message: &str, fields: &str) {
        self.event(level, message, fields);
    }

    fn event(&self, level: Level, message: &str, fields: &str) {
        emit_within_window(&self.budget.tag, level, message, fields);
    }
}

/// Emits an event if the plugin's budget over time allows, after the
/// report of what the previous window dropped, if anything.
fn emit_within_window(tag: &PluginTag, level: Level, message: &str, fields: &str) {
    match tag.window.admit((message.len() + fields.len()) as u64) {
        Admit::Write(dropped) => {
            if let Some(Dropped { events, bytes }) = dropped {
                let fields = serde_json::json!({
                    "dropped_events": events,
                    "dropped_bytes": bytes,
                    "max_events_per_second": MAX_EVENTS_PER_PLUGIN_SECOND,
                    "max_bytes_per_second": MAX_BYTES_PER_PLUGIN_SECOND,
                })
                .to_string();
                emit_event(tag, Level::Warn, "log budget of the plugin exceeded; events dropped", &fields);
            }
            emit_event(tag, level, message, fields);
        }
        Admit::Drop => {}
    }
}

fn emit_event(tag: &PluginTag, level: Level, message: &str, fields: &str) {
    let (plugin, version) = (&tag.name, &tag.version);
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(target: "gatehouse::plugin", $level, plugin = %plugin, version = %version, fields = %fields, "{message}")
        };
    }
    match level {
        Level::Trace => event!(tracing::Level::TRACE),
        Level::Debug => event!(tracing::Level::DEBUG),
        Level::Info => event!(tracing::Level::INFO),
        Level::Warn => event!(tracing::Level::WARN),
        Level::Error => event!(tracing::Level::ERROR),
    }
}

impl Budget {
    /// Takes one event of `bytes` from the budget; false (and counted as
    /// dropped) if either allowance would be exceeded.
    fn spend(&self, bytes: u64) -> bool {
        let events = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if events > MAX_EVENTS_PER_INVOCATION || total > MAX_BYTES_PER_INVOCATION {
            self.drop_event(bytes);
            return false;
        }
        true
    }

    /// Whether no further event can fit.
    fn spent(&self) -> bool {
        self.events.load(Ordering::Relaxed) >= MAX_EVENTS_PER_INVOCATION
            || self.bytes.load(Ordering::Relaxed) >= MAX_BYTES_PER_INVOCATION
    }

    fn drop_event(&self, bytes: u64) {
        self.dropped_events.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        let dropped = *self.dropped_events.get_mut();
        if dropped > 0 {
            let fields = serde_json::json!({
                "dropped_events": dropped,
                "dropped_bytes": *self.dropped_bytes.get_mut(),
                "max_events": MAX_EVENTS_PER_INVOCATION,
                "max_bytes": MAX_BYTES_PER_INVOCATION,
            })
            .to_string();
            let message = "log budget of the invocation exceeded; later events dropped";
            emit_within_window(&self.tag, Level::Warn, message, &fields);
        }
    }
}

impl Host for Logger {
    async fn log(&mut self, level: Level, message: String, fields: Vec<Field>) -> wasmtime::Result<()> {
        self.emit(level, &message, &fields);
        Ok(())
    }
}

/// Marker for linking the log interface against a [`Logger`].
pub struct LogService;

impl HasData for LogService {
    type Data<'a> = &'a mut Logger;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger(window: LogWindow) -> Logger {
        let tag = PluginTag { name: "p".into(), version: "1".into(), window: Arc::new(window) };
        Logger::new(Arc::new(tag))
    }

    pub(super) fn unbounded() -> Logger {
        logger(LogWindow::new(u64::MAX, u64::MAX))
    }

    /// Events and bytes the invocation of `logger` has logged.
    pub(super) fn logged(logger: &Logger) -> (u64, u64) {
        (logger.budget.events.load(Ordering::Relaxed), logger.budget.bytes.load(Ordering::Relaxed))
    }

    #[test]
    fn an_invocation_spends_its_budget_to_the_event_and_to_the_byte() {
        let events = unbounded();
        for _ in 0..MAX_EVENTS_PER_INVOCATION {
            assert!(events.budget.spend(1));
        }
        assert!(events.budget.spent());
        assert!(!events.budget.spend(0), "one event more");

        let bytes = unbounded();
        assert!(bytes.budget.spend(MAX_BYTES_PER_INVOCATION - 1));
        assert!(!bytes.budget.spent());
        assert!(bytes.budget.spend(1), "exactly the bytes allowed");
        assert!(bytes.budget.spent(), "bytes alone spend the budget");
        assert!(!bytes.budget.spend(1), "one byte more");
        assert_eq!(bytes.budget.dropped_bytes.load(Ordering::Relaxed), 1);
    }

    /// An event costs its escaped message and its rendered fields, in the
    /// invocation's budget and in the plugin's over time alike.
    #[test]
    fn an_event_costs_its_message_and_fields() {
        let message = "m".repeat(1000);
        let invocation = unbounded();
        invocation.emit(Level::Info, &message, &[]);
        assert_eq!(logged(&invocation).1, 1000 + "{}".len() as u64);
        let field = Field { key: "k".into(), value: "v".into() };
        invocation.emit(Level::Info, &message, &[field]);
        assert_eq!(logged(&invocation).1, 2002 + r#"{"k":"v"}"#.len() as u64);

        // A window of exactly one such event: it is written, and nothing more fits.
        let windowed = logger(LogWindow::new(10, 1002));
        windowed.emit(Level::Info, &message, &[]);
        assert_eq!(windowed.budget.tag.window.admit(1), Admit::Drop);
    }
}
