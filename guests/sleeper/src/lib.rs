//! Test guest: sleeps for the number of milliseconds in its input (a
//! `wasi:clocks` timer, so the guest waits parked in a host call, where
//! epochs cannot interrupt it), then answers `slept`.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::types::ErrorKind;

struct Sleeper;

impl Guest for Sleeper {
    fn handle(input: Document) -> Result<Document, Error> {
        let ms: u64 = String::from_utf8_lossy(&input.body).trim().parse().map_err(|_| Error {
            kind: ErrorKind::InvalidInput,
            message: "expected a number of milliseconds".into(),
            retry_after_ms: None,
        })?;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(Document { content_type: "text/plain".into(), body: b"slept".to_vec() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "sleeper".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sleeps as long as asked".into(),
        }
    }
}

export!(Sleeper);
