//! Counts its visits in the key-value store (`gatehouse:services/kv`):
//! the example of state that outlives an invocation. Its input is a
//! command, so the tests can also drive the store's limits through it:
//!
//! - `visit` (or an empty input): adds one to `visits`, answers `{"visits": N}`;
//! - `fill N`: stores N bytes under `blob`;
//! - `peek BUCKET KEY`: reads a key of another bucket;
//! - `usage`: answers `{"keys": K, "bytes": B}`;
//! - `read N KEY`: reads KEY N times in a loop (the benchmark of a guest
//!   `get`), answers `{"reads": N, "bytes": B}` (B: bytes read in all).
//!
//! Errors from the store are returned as they come, so their kind reaches
//! the caller.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::kv;
use gatehouse::services::types::ErrorKind;

struct Counter;

impl Guest for Counter {
    fn handle(input: Document) -> Result<Document, Error> {
        let command = String::from_utf8_lossy(&input.body).trim().to_string();
        let words: Vec<&str> = command.split_whitespace().collect();
        let answer = match words.as_slice() {
            [] | ["visit"] => format!("{{\"visits\": {}}}", kv::increment("", "visits", 1)?),
            ["fill", n] => {
                let n: usize = n.parse().map_err(|_| invalid("fill takes a byte count"))?;
                kv::set("", "blob", &vec![b'x'; n])?;
                format!("{{\"stored\": {n}}}")
            }
            ["peek", bucket, key] => {
                let value = kv::get(bucket, key)?;
                format!("{{\"found\": {}}}", value.is_some())
            }
            ["read", n, key] => {
                let n: u64 = n.parse().map_err(|_| invalid("read takes a count"))?;
                let mut bytes = 0;
                for _ in 0..n {
                    bytes += kv::get("", key)?.map_or(0, |v| v.len());
                }
                format!("{{\"reads\": {n}, \"bytes\": {bytes}}}")
            }
            ["usage"] => {
                let usage = kv::usage()?;
                format!("{{\"keys\": {}, \"bytes\": {}}}", usage.keys, usage.bytes)
            }
            _ => return Err(invalid("commands: visit, fill N, peek BUCKET KEY, read N KEY, usage")),
        };
        Ok(Document { content_type: "application/json".into(), body: answer.into_bytes() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "kv-counter".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Counts its visits in the key-value store".into(),
        }
    }
}

fn invalid(message: &str) -> Error {
    Error { kind: ErrorKind::InvalidInput, message: message.into(), retry_after_ms: None }
}

export!(Counter);
