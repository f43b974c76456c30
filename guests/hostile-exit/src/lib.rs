//! Hostile test guest: ends an invocation in ways other than returning.
//! Input `exit` calls `wasi:cli/exit` with success; `big:<n>` returns an
//! output document of `n` bytes.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::types::ErrorKind;

struct HostileExit;

impl Guest for HostileExit {
    fn handle(input: Document) -> Result<Document, Error> {
        let text = String::from_utf8_lossy(&input.body).into_owned();
        if text == "exit" {
            std::process::exit(0);
        }
        if let Some(n) = text.strip_prefix("big:").and_then(|n| n.parse::<usize>().ok()) {
            return Ok(Document { content_type: "application/octet-stream".into(), body: vec![b'b'; n] });
        }
        Err(Error { kind: ErrorKind::InvalidInput, message: "expected `exit` or `big:<n>`".into(), retry_after_ms: None })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-exit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Exits or returns too much".into(),
        }
    }
}

export!(HostileExit);
