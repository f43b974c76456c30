//! Per-plugin counters for outbound HTTP, shared by both doors. Cheap
//! enough to update on every request (relaxed atomics); the server exposes
//! snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::HttpError;
use crate::error::ErrorKind;

/// Live counters of one plugin.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: AtomicU64,
    responses: AtomicU64,
    denied: AtomicU64,
    denied_address: AtomicU64,
    rate_limited: AtomicU64,
    failed: AtomicU64,
    redirects: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

/// A point-in-time copy of [`HttpMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpMetricsSnapshot {
    /// Requests the guest made, whatever the outcome.
    pub requests: u64,
    /// Requests that produced a response (any status).
    pub responses: u64,
    /// Refused by the policy or the SSRF guard (both reasons together).
    pub denied: u64,
    /// Of `denied`: refused by the SSRF guard (every address the host
    /// resolved to, or the IP literal, is not one the plugin may reach).
    pub denied_address: u64,
    /// Refused by the rate limiter.
    pub rate_limited: u64,
    /// Timeouts, connection failures, size limits, malformed requests.
    pub failed: u64,
    /// Redirect hops followed.
    pub redirects: u64,
    /// Request body bytes sent upstream.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl HttpMetrics {
    pub(super) fn redirect(&self) {
        bump(&self.redirects, 1);
    }

    pub(super) fn sent(&self, bytes: u64) {
        bump(&self.bytes_sent, bytes);
    }

    /// Records the outcome of one guest request.
    pub(super) fn finished<T>(&self, outcome: &Result<T, HttpError>, received: u64) {
        bump(&self.requests, 1);
        bump(&self.bytes_received, received);
        if let Err(HttpError::AddressRefused(_)) = outcome {
            bump(&self.denied_address, 1);
        }
        let counter = match outcome.as_ref().map_err(HttpError::kind) {
            Ok(_) => &self.responses,
            Err(ErrorKind::Denied) => &self.denied,
            Err(ErrorKind::RateLimited) => &self.rate_limited,
            Err(_) => &self.failed,
        };
        bump(counter, 1);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> HttpMetricsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpMetricsSnapshot {
            requests: read(&self.requests),
            responses: read(&self.responses),
            denied: read(&self.denied),
            denied_address: read(&self.denied_address),
            rate_limited: read(&self.rate_limited),
            failed: read(&self.failed),
            redirects: read(&self.redirects),
            bytes_sent: read(&self.bytes_sent),
            bytes_received: read(&self.bytes_received),
        }
    }
}
