//! `gatehouse:services/log`: guest log calls become `tracing` events on the
//! `gatehouse::plugin` target, tagged with the plugin's name and version.
//! The guest's stdout/stderr are captured the same way (see [`stdio`]).

pub mod stdio;

use std::fmt::Write as _;
use std::sync::Arc;

use wasmtime::component::HasData;

use crate::bindings::gatehouse::services::log::{Field, Host, Level};

/// Longest message kept, in bytes; longer ones are cut at a char boundary.
pub const MAX_MESSAGE: usize = 4096;
/// Fields kept per event; the rest are dropped.
pub const MAX_FIELDS: usize = 32;

/// Who is logging: attached to every event a plugin produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginTag {
    /// Plugin name from its policy.
    pub name: String,
    /// Version the plugin reports through `info()`.
    pub version: String,
}

/// The per-invocation state of the log interface.
#[derive(Debug, Clone)]
pub struct Logger {
    tag: Arc<PluginTag>,
}

impl Logger {
    /// A logger tagging events with `tag`.
    pub fn new(tag: Arc<PluginTag>) -> Self {
        Logger { tag }
    }

    /// Emits one event; also the path for captured stdout/stderr lines.
    pub fn emit(&self, level: Level, message: &str, fields: &[Field]) {
        let message = truncate(message, MAX_MESSAGE);
        let mut rendered = String::new();
        for field in fields.iter().take(MAX_FIELDS) {
            let (key, value) = (truncate(&field.key, 128), truncate(&field.value, 1024));
            // Quote only values that would otherwise be ambiguous.
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '=' || c == '"') {
                let _ = write!(rendered, "{key}={value:?} ");
            } else {
                let _ = write!(rendered, "{key}={value} ");
            }
        }
        let fields = rendered.trim_end();
        let (plugin, version) = (&self.tag.name, &self.tag.version);
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(target: "gatehouse::plugin", $level, plugin = %plugin, version = %version, fields, "{message}")
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

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel");
        // 'é' is two bytes: cutting inside it backs off to the boundary.
        assert_eq!(truncate("éé", 3), "é");
    }
}
