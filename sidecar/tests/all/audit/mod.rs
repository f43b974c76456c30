//! The audit log end to end: tampering with an export and with the store,
//! crashes during appends, the independent Python verifier, and the
//! independent Rust implementations of Go's sumdb/note and sumdb/tlog,
//! and the log in the running sidecar (`running`).

mod approvals;
mod crash;
mod independent;
mod postgres;
mod python;
mod running;
mod tamper;

use std::path::Path;

use gatehouse::audit::{AuditLog, Change, NewEntry, NoteSigner};
use serde_json::json;

/// The origin (and key name) of the test logs.
pub const ORIGIN: &str = "gatehouse.test/audit";

/// The log's key: fixed, so failures reproduce.
pub fn key() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [42; 32]).unwrap()
}

/// An attacker's key with the log's name.
pub fn attacker_key() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [66; 32]).unwrap()
}

/// A grant change, numbered.
pub fn change(n: u64) -> NewEntry {
    NewEntry {
        actor: format!("admin:ops-{}", n % 3),
        plugin: Some(format!("plugin-{}", n % 2)),
        change: Change {
            kind: "changed".into(),
            item: "kv.max_keys".into(),
            before: Some(json!(n * 10)),
            after: Some(json!({ "max_keys": n * 10 + 10, "note": format!("step {n}") })),
        },
    }
}

/// A log at `path` with `n` entries, one batch each, and the signed
/// checkpoint after each batch (index i = size i + 1).
pub fn log_of(path: &Path, n: u64) -> (AuditLog, Vec<String>) {
    let log = AuditLog::open(path, ORIGIN, vec![key()]).unwrap();
    let checkpoints = (0..n).map(|i| log.append(&[change(i)]).unwrap().checkpoint).collect();
    (log, checkpoints)
}

/// The log's export, as lines without newlines.
pub fn export_lines(log: &AuditLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    log.export(&mut out).unwrap();
    assert_eq!(out.last(), Some(&b'\n'));
    out[..out.len() - 1].split(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

/// Lines joined back into an export.
pub fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}
