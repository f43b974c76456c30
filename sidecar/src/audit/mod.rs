//! The audit log: grant changes as a hash chain inside an RFC 6962 Merkle
//! tree, sealed by C2SP signed checkpoints, so an auditor who trusts only
//! the log's public key can check that no entry was changed, removed,
//! reordered or inserted, and (with a checkpoint kept from before) that
//! the log was not rolled back or forked. `docs/audit-log.md` is the
//! format's specification; `tools/verify_audit.py` is a verifier written
//! from it alone.
//!
//! One job per file:
//! - [`canonical`]: canonical JSON, the byte form that is hashed.
//! - [`entry`]: entries, their fields' limits and encoding.
//! - [`scan`]: the fast check that bytes are a canonical entry (verify).
//! - [`merkle`]: RFC 6962 roots, inclusion and consistency proofs.
//! - [`note`]: C2SP signed-note with Ed25519 (sign, open, key forms).
//! - [`checkpoint`]: C2SP tlog-checkpoint.
//! - [`key`]: the signing key file (0600, refused when others may read it).
//! - [`tables`]: what the log reads and writes in one transaction.
//! - [`store`]: the embedded store (redb).
//! - [`postgres`]: the shared store (PostgreSQL).
//! - [`log`]: [`AuditLog`]: durable, signed appends; proofs.
//! - [`export`]: JSON Lines export.
//! - [`tiles`]: the C2SP tlog-tiles export.
//! - [`verify`]: verification that names the first bad entry and why.
//! - [`trail`]: [`AuditTrail`], the log in the running sidecar: grant
//!   changes recorded before they take effect, the grants in force kept
//!   beside the entries.
//! - [`approval`]: which grant changes wait for a person, and where the
//!   approvals are kept.
//!
//! # Crates
//! `signed_note` and `tlog_tiles` (crates.io, Cloudflare's ports of Go's
//! `sumdb/note` and `sumdb/tlog`, version 0.2, one maintainer team, last
//! released as part of the `azul` CT log) would cover [`note`],
//! [`checkpoint`] and [`merkle`], but bring `thiserror` 1, `base64` 0.21,
//! `url` and `rand_core` 0.6 into the binary for a few hundred lines, and
//! read tree nodes only in Go's stored-hash layout. So the log's own code
//! is written here against the specifications and the RFC 6962 test
//! vectors, and both crates are used in the tests as the independent
//! implementation that must accept our checkpoints and proofs.

pub mod approval;
pub mod canonical;
pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod key;
pub mod log;
pub mod merkle;
pub mod note;
pub mod postgres;
pub mod scan;
pub mod store;
pub mod tables;
pub mod tiles;
pub mod trail;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use entry::{Change, Entry, NewEntry};
pub use log::{Appended, AuditError, AuditLog, AuditReader, ConsistencyProof, InclusionProof, Plan, Snapshot};
pub use note::{NoteSigner, NoteVerifier};
pub use trail::{AuditTrail, Trigger};
pub use verify::{Location, Problem, Summary, VerifyError, verify};

/// Where the embedded log lives in the data directory.
pub const STORE_FILE: &str = "audit/log.redb";
/// Where the signing key lives in the data directory unless configured.
pub const KEY_FILE: &str = "audit/key";
