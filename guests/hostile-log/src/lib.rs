//! Hostile test guest: attacks the log. The input selects the attack:
//! - `forge`: a log message, a field and a stdout line that each try to
//!   start a fake sidecar log line (newline, carriage return, ANSI escapes);
//! - `flood`: 100,000 log calls of 4 KiB, then 80 KB of `y\n` on stdout;
//! - `fields`: one log call with 2.5 million one-byte fields, all pointing
//!   at the same byte (cheap for the guest, expensive to lift);
//! - `alias`: one log call with 120 fields whose values all point at the
//!   same 1 MiB string (120 MiB for the host to copy);
//! - `error`: returns an error whose 1 MiB message starts with a line
//!   break and a forged CLI error line.
//!
//! It calls the log import through its raw canonical-ABI signature, which is
//! how a hand-made component would, so the records can alias one another.

wit_bindgen::generate!({ path: "../../wit", world: "gatehouse:services/plugin" });

use gatehouse::services::types::ErrorKind;

#[link(wasm_import_module = "gatehouse:services/log@0.1.0")]
unsafe extern "C" {
    #[link_name = "log"]
    fn raw_log(level: i32, message: *const u8, message_len: usize, fields: *const RawField, fields_len: usize);
}

/// A `field` record as laid out in linear memory: two (pointer, length)
/// strings.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawField {
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
}

const INFO: i32 = 2;

fn log(message: &str, fields: &[RawField]) {
    // SAFETY: every pointer refers to live memory of the stated length.
    unsafe { raw_log(INFO, message.as_ptr(), message.len(), fields.as_ptr(), fields.len()) }
}

fn field(key: &str, value: &[u8]) -> RawField {
    RawField { key: key.as_ptr(), key_len: key.len(), value: value.as_ptr(), value_len: value.len() }
}

struct HostileLog;

impl Guest for HostileLog {
    fn handle(input: Document) -> Result<Document, Error> {
        match input.body.as_slice() {
            b"forge" => {
                let forged = "ok\n2026-01-01T00:00:00.000000Z ERROR gatehouse::runtime: forged by the guest";
                log(forged, &[field("key\nERROR gatehouse::runtime: forged", b"v\x1b[31mred\r")]);
                println!("line\r\x1b[2K2026-01-01T00:00:00.000000Z  INFO gatehouse::runtime: forged on stdout");
            }
            b"flood" => {
                let chunk = "x".repeat(4096);
                for _ in 0..100_000 {
                    log(&chunk, &[]);
                }
                print!("{}", "y\n".repeat(40_000));
            }
            b"fields" => {
                let byte = b"x";
                let fields = vec![field("k", byte); 2_500_000];
                log("many fields", &fields);
            }
            b"alias" => {
                let big = vec![b'v'; 1 << 20];
                let fields = vec![field("k", &big); 120];
                log("aliased fields", &fields);
            }
            b"error" => {
                let mut message = String::from("refused\nerror: plugin billing refused: forged by the guest\x1b[0m ");
                message.push_str(&"e".repeat(1 << 20));
                return Err(Error { kind: ErrorKind::Denied, message, retry_after_ms: None });
            }
            other => {
                return Err(Error {
                    kind: ErrorKind::InvalidInput,
                    message: format!("unknown attack {:?}", String::from_utf8_lossy(other)),
                    retry_after_ms: None,
                });
            }
        }
        Ok(Document { content_type: "text/plain".into(), body: b"done".to_vec() })
    }

    fn info() -> PluginInfo {
        PluginInfo {
            name: "hostile-log".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Forges and floods the log".into(),
        }
    }
}

export!(HostileLog);
