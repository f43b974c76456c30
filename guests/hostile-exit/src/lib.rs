//! Hostile test guest: ends an invocation in ways other than returning,
//! or makes the host do much work in one synchronous call.
//! Input `exit` calls `wasi:cli/exit` with success; `big:<n>` returns an
//! output document of `n` bytes; `random:<n>` asks `wasi:random` for `n`
//! bytes in one call (through the raw import, as any guest may).

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::types::ErrorKind;

#[link(wasm_import_module = "wasi:random/random@0.2.0")]
unsafe extern "C" {
    #[link_name = "get-random-bytes"]
    fn get_random_bytes(len: i64, ret: *mut usize);
}

struct HostileExit;

impl Guest for HostileExit {
    fn handle(input: Document) -> Result<Document, Error> {
        let text = String::from_utf8_lossy(&input.body).into_owned();
        if text == "exit" {
            std::process::exit(0);
        }
        if let Some(n) = text.strip_prefix("random:").and_then(|n| n.parse::<u64>().ok()) {
            let mut list = [0usize; 2];
            // SAFETY: the canonical ABI writes (pointer, length) of a list
            // it allocated with this module's `cabi_realloc` into `list`.
            unsafe { get_random_bytes(n as i64, list.as_mut_ptr()) };
            return Ok(Document { content_type: "text/plain".into(), body: list[1].to_string().into_bytes() });
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
