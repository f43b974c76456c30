//! What the two `wasi:keyvalue` doors share: how they reach the plugin's
//! [`KvHost`] and the invocation's resource table, how the service's typed
//! errors become the drafts' three-case `error` variant, and the CAS
//! fingerprint.
//!
//! # Errors
//! Both drafts have `no-such-store`, `access-denied` and `other(string)`.
//! `denied` (a bucket the policy does not grant, no `[kv]`) is
//! `access-denied`; every other kind is `other("<kind>: <message>")`, with
//! the custom door's kind names (`quota-exceeded`, `rate-limited`,
//! `invalid-input`, `unavailable`, `internal`), and `rate-limited` ends
//! with `retry after N ms`. The custom door's `conflict` (an increment of a
//! value that is not a decimal integer, or past the 64-bit range) reads
//! `invalid-input` here: the drafts' guests asked for an operation the
//! stored value cannot take. `no-such-store` is never returned: an unknown
//! bucket and one that is not granted look the same, so a guest cannot
//! probe which buckets exist. Messages are the service's, where every
//! guest string (key, bucket name) is already escaped and bounded.

use sha2::{Digest, Sha256};
use wasmtime::component::{HasData, ResourceTable};

use super::backend::MAX_PAGE;
use super::host::KvHost;
use crate::error::{ErrorKind, GuestError};

/// Keys one `list-keys` page returns through either draft (neither lets
/// the guest choose): the service's largest page, so that a guest written
/// for a host that returns every key at once (Spin's) sees up to this
/// many before it needs the cursor.
pub const PAGE_KEYS: u32 = MAX_PAGE;

/// Links both drafts against the invocation's [`KvHost`] and resource
/// table (where `bucket` and `cas` handles live, under the table's cap).
pub struct WasiKv;

impl HasData for WasiKv {
    type Data<'a> = WasiKvView<'a>;
}

/// The parts of an invocation's state the `wasi:keyvalue` doors use.
pub struct WasiKvView<'a> {
    /// The plugin's grant: the one enforcement path.
    pub host: &'a mut KvHost,
    /// The invocation's resource table (capped: `runtime::host_budget`).
    pub table: &'a mut ResourceTable,
}

/// A refusal in the drafts' vocabulary (each door turns it into its own
/// generated `error` type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    AccessDenied,
    Other(String),
}

impl From<GuestError> for Refusal {
    fn from(error: GuestError) -> Refusal {
        let kind = match error.kind {
            ErrorKind::Denied => return Refusal::AccessDenied,
            ErrorKind::Conflict => ErrorKind::InvalidInput,
            kind => kind,
        };
        let mut text = format!("{kind}: {}", error.message);
        if let Some(ms) = error.retry_after_ms {
            text.push_str(&format!(", retry after {ms} ms"));
        }
        Refusal::Other(text)
    }
}

/// A refusal the door itself makes (not the service): `invalid-input`.
pub(super) fn invalid(message: String) -> Refusal {
    Refusal::from(GuestError { kind: ErrorKind::InvalidInput, message, retry_after_ms: None })
}

/// What a `cas` handle remembers of the value it saw: its SHA-256, or
/// `None` for an absent key. 33 bytes whatever the value's size, so a
/// guest holding many handles makes the host hold no values.
pub(super) type Fingerprint = Option<[u8; 32]>;

/// The fingerprint of `value`.
pub(super) fn fingerprint(value: Option<&[u8]>) -> Fingerprint {
    value.map(|v| Sha256::digest(v).into())
}

/// [`fingerprint`] of a value the caller still needs, computed off the
/// executor when large (see [`super::offload`]); the value comes back.
pub(super) async fn fingerprinted(value: Option<Vec<u8>>) -> (Option<Vec<u8>>, Fingerprint) {
    let bytes = value.as_ref().map_or(0, |v| v.len() as u64);
    super::offload::sized(bytes, move || {
        let seen = fingerprint(value.as_deref());
        (value, seen)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind, retry: Option<u64>) -> GuestError {
        GuestError { kind, message: "why".into(), retry_after_ms: retry }
    }

    #[test]
    fn kinds_map_onto_the_drafts_variants() {
        assert_eq!(Refusal::from(error(ErrorKind::Denied, None)), Refusal::AccessDenied);
        let cases = [
            (ErrorKind::QuotaExceeded, None, "quota-exceeded: why"),
            (ErrorKind::RateLimited, Some(250), "rate-limited: why, retry after 250 ms"),
            (ErrorKind::InvalidInput, None, "invalid-input: why"),
            (ErrorKind::Conflict, None, "invalid-input: why"),
            (ErrorKind::Unavailable, None, "unavailable: why"),
            (ErrorKind::Internal, None, "internal: why"),
        ];
        for (kind, retry, text) in cases {
            assert_eq!(Refusal::from(error(kind, retry)), Refusal::Other(text.into()), "{kind}");
        }
    }

    #[test]
    fn fingerprints_tell_absent_empty_and_values_apart() {
        let seen = [fingerprint(None), fingerprint(Some(b"")), fingerprint(Some(b"1")), fingerprint(Some(b"2"))];
        for (i, a) in seen.iter().enumerate() {
            for b in &seen[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(fingerprint(Some(b"1")), fingerprint(Some(b"1")));
    }
}
