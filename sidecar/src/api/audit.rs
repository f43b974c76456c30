//! The audit log's admin routes (read-only, behind the admin listener's
//! token like every admin route):
//!
//! - `GET /admin/audit[?after=SEQ][&limit=N]`: entries in order, from the
//!   first (or the one after `SEQ`), at most `N` (default 100, at most
//!   [`MAX_PAGE`]); `next` is the `after` of the next page, `null` at the
//!   end; `size` is the log's size.
//! - `GET /admin/audit/checkpoint`: the latest signed checkpoint, as the
//!   signed note's text (`text/plain`); 404 before the first entry.
//!
//! Entries are returned as the JSON objects they are; their bytes are the
//! canonical encoding, so `gatehouse audit export` (the file itself) is
//! what an auditor verifies, not this view.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Api;
use super::errors::respond;
use super::invoke::json;
use crate::ErrorKind;
use crate::audit::{AuditError, AuditTrail};

/// Most entries in one page (each at most 64 KiB: 64 MiB at worst).
pub const MAX_PAGE: usize = 1000;
/// Entries in a page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;

/// The routes, to be merged into the admin router.
pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/admin/audit", get(entries)).route("/admin/audit/checkpoint", get(checkpoint))
}

/// A refusal, answered in the JSON error shape.
type Refusal = (ErrorKind, String);

fn answer((kind, message): Refusal) -> Response {
    respond(kind, &message, None)
}

fn trail(api: &Api) -> Result<Arc<AuditTrail>, Refusal> {
    api.services
        .audit
        .clone()
        .ok_or_else(|| (ErrorKind::NotFound, "the audit log is off ([audit] enabled = false)".to_string()))
}

fn failed(e: AuditError) -> Refusal {
    let message = crate::guest_text::escape(&e.to_string(), crate::guest_text::MESSAGE);
    (ErrorKind::Unavailable, format!("the audit log cannot be read: {message}"))
}

/// Runs a read of the log off the executor.
async fn read<T: Send + 'static>(
    trail: Arc<AuditTrail>,
    read: impl FnOnce(&crate::audit::AuditReader) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(move || trail.read(read)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failed(e)),
        Err(e) => Err((ErrorKind::Internal, format!("the read did not finish: {e}"))),
    }
}

async fn entries(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let number = |name: &str| -> Result<Option<u64>, Refusal> {
        params
            .get(name)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| (ErrorKind::InvalidInput, format!("`{name}` must be a non-negative integer")))
    };
    let (after, limit) = match (number("after"), number("limit")) {
        (Ok(after), Ok(limit)) => (after, limit),
        (Err(refusal), _) | (_, Err(refusal)) => return answer(refusal),
    };
    let limit = match limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE as u64).contains(&n) => n as usize,
        Some(_) => {
            return respond(ErrorKind::InvalidInput, &format!("`limit` must be between 1 and {MAX_PAGE}"), None);
        }
    };
    let trail = match trail(&api) {
        Ok(trail) => trail,
        Err(refusal) => return answer(refusal),
    };
    let from = after.map_or(0, |a| a.saturating_add(1));
    // One more than asked, to know whether a next page exists.
    let page = read(trail, move |log| Ok((log.entries(from, limit + 1)?, log.size()?))).await;
    let (mut rows, size) = match page {
        Ok(page) => page,
        Err(refusal) => return answer(refusal),
    };
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(|(seq, _)| *seq) } else { None };
    let list: Vec<serde_json::Value> =
        rows.iter().map(|(_, bytes)| serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)).collect();
    json(StatusCode::OK, &serde_json::json!({ "entries": list, "next": next, "size": size }))
}

async fn checkpoint(State(api): State<Arc<Api>>) -> Response {
    let trail = match trail(&api) {
        Ok(trail) => trail,
        Err(refusal) => return answer(refusal),
    };
    match read(trail, |log| log.checkpoint()).await {
        Ok(Some(note)) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response(),
        Ok(None) => respond(ErrorKind::NotFound, "the audit log has no checkpoint yet", None),
        Err(refusal) => answer(refusal),
    }
}
