//! The error vocabulary shared with guests.
//!
//! Guests see the WIT `error` record; the host uses the same kinds so that
//! the CLI, the HTTP API and the guests all speak one language.

use std::fmt;

pub use crate::bindings::gatehouse::services::types::ErrorKind;

/// An error record as a guest returns it (WIT `error`).
pub type GuestError = crate::bindings::gatehouse::services::types::Error;

impl ErrorKind {
    /// The kind as written in WIT (`invalid-input`, `rate-limited`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::QuotaExceeded => "quota-exceeded",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
