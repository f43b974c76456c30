//! `--log-format json`: one JSON object per line, for log pipelines.
//!
//! tracing-subscriber's own JSON format writes every field as it was
//! recorded, so a plugin's log fields (one field holding a JSON object)
//! would arrive as a string. This formatter writes them as a real object
//! under `fields`, and puts the fields of the enclosing spans (the request
//! id and plugin of an API request) at the top level.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The formatter; use with `JsonFields` so span fields are stored as JSON.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string().into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else { continue };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields.into_iter().map(|(name, value)| match value {
                        Value::String(text) => (name, unquote(text).into()),
                        other => (name, other),
                    }));
                }
            }
        }
        let mut visitor = Collect { line: &mut line, plugin_event: meta.target() == "gatehouse::plugin" };
        event.record(&mut visitor);
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Guest and caller text is recorded with `?` so that the text log shows
/// it quoted (it cannot pass for other fields there). JSON quotes strings
/// itself: drop the outer pair, keep the escapes inside.
fn unquote(text: String) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.to_string(),
        None => text,
    }
}

struct Collect<'a> {
    line: &'a mut Map<String, Value>,
    plugin_event: bool,
}

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.line.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A plugin's fields are rendered by the log service as a JSON
        // object of escaped strings: keep them an object.
        if self.plugin_event
            && field.name() == "fields"
            && let Ok(object @ Value::Object(_)) = serde_json::from_str::<Value>(&text)
        {
            self.line.insert("fields".into(), object);
            return;
        }
        self.line.insert(field.name().into(), unquote(text).into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.line.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.line.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.line.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.line.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::JsonFields;

    use super::JsonLines;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn quoted_fields_are_plain_json_strings_with_their_escapes_kept() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let name = "fetcher\nforged";
            let span = tracing::info_span!("invoke", plugin = ?gatehouse::guest_text::escaped(name, 64));
            let _entered = span.enter();
            tracing::info!(error = ?"bad \"x\"".to_string(), "failed");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["plugin"], "fetcher\\nforged", "{text}");
        assert_eq!(line["error"], "bad \\\"x\\\"", "{text}");
    }
}
