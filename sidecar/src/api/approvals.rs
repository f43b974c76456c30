//! The approval routes (`[audit] require_approval`), behind the admin
//! token like every admin route:
//!
//! - `GET /admin/approvals`: the grants waiting (`pending`) or refused
//!   (`rejected`), each with the items they would add to the approved
//!   grants (`grows`: `item`, `before`, `after`).
//! - `POST /admin/approvals/<plugin>` with `{"decision": "approve"}` or
//!   `{"decision": "reject"}`, and optionally the `sha256` the listing
//!   gave (refused with 409 if the pending grants changed since): records
//!   the decision in the audit log,
//!   naming the caller's token (`admin:<name>`); an approval then reloads,
//!   so the approved grants take effect at once (`reload` in the answer).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::json;

use super::Api;
use super::admin::Caller;
use super::errors::respond;
use super::invoke::json;
use crate::ErrorKind;
use crate::audit::approval::{Decision, Row};
use crate::audit::trail::RecordError;

/// Largest decision body, in bytes.
const MAX_DECISION: usize = 4096;

/// The routes, to be merged into the admin router.
pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/admin/approvals", get(list)).route("/admin/approvals/{plugin}", post(decide))
}

async fn list(State(api): State<Arc<Api>>) -> Response {
    let Some(trail) = api.services.audit.clone() else {
        return respond(ErrorKind::NotFound, "the audit log is off ([audit] enabled = false)", None);
    };
    let states = match tokio::task::spawn_blocking(move || trail.approvals()).await {
        Ok(Ok(states)) => states,
        Ok(Err(e)) => return failed(&e),
        Err(e) => return respond(ErrorKind::Internal, &format!("the read did not finish: {e}"), None),
    };
    let list: Vec<_> = states
        .iter()
        .map(|state| {
            let grows: Vec<_> =
                state.growth.iter().map(|c| json!({ "item": c.item, "before": c.before, "after": c.after })).collect();
            let which = if state.row == Row::Pending { "pending" } else { "rejected" };
            json!({ "plugin": state.plugin, "state": which, "grows": grows, "sha256": state.sha256 })
        })
        .collect();
    json(StatusCode::OK, &json!({ "required": api.require_approval, "approvals": list }))
}

async fn decide(
    State(api): State<Arc<Api>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(plugin): Path<String>,
    body: axum::body::Body,
) -> Response {
    // A decision is a few bytes: a larger or trickled body is refused.
    let body = match api.read_body(body, MAX_DECISION).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        decision: Decision,
        /// Absent, or a string: `null` is refused, not read as absent (a
        /// client sending unset fields as null would lose the check).
        #[serde(default, deserialize_with = "present")]
        sha256: Option<String>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<String>, D::Error> {
        <String as serde::Deserialize>::deserialize(value).map(Some)
    }
    let Ok(Body { decision, sha256 }) = serde_json::from_slice::<Body>(&body) else {
        return respond(
            ErrorKind::InvalidInput,
            "the body must be {\"decision\": \"approve\"} or {\"decision\": \"reject\"}, with the \
             reviewed grants' \"sha256\" if wanted",
            None,
        );
    };
    let Some(trail) = api.services.audit.clone() else {
        return respond(ErrorKind::NotFound, "the audit log is off ([audit] enabled = false)", None);
    };
    let actor = format!("admin:{caller}");
    let name = plugin.clone();
    let by = actor.clone();
    match tokio::task::spawn_blocking(move || trail.decide(&name, decision, &actor, sha256.as_deref())).await {
        Ok(Ok(recorded)) => {
            let shown = crate::guest_text::escaped(&plugin, 64);
            tracing::info!(plugin = ?shown, actor = %by, entry = recorded.size - 1, "grants {}", decision.kind());
        }
        Ok(Err(e)) => return failed(&e),
        Err(e) => return respond(ErrorKind::Internal, &format!("the decision did not finish: {e}"), None),
    }
    let reload = match decision {
        Decision::Approve => Some(api.reload_by(caller).await),
        Decision::Reject => None,
    };
    json(StatusCode::OK, &json!({ "plugin": plugin, "decision": decision.kind(), "reload": reload }))
}

fn failed(e: &RecordError) -> Response {
    let message = crate::guest_text::escape(&e.to_string(), crate::guest_text::MESSAGE);
    let kind = match e {
        RecordError::NotPending(_) => ErrorKind::NotFound,
        RecordError::NotReviewed(..) => ErrorKind::Conflict,
        _ => ErrorKind::Unavailable,
    };
    respond(kind, &message, None)
}
