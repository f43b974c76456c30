//! Approvals: with `[audit] require_approval`, grants that would grow
//! beyond what a person approved wait for one, and the plugin stays on the
//! version it has (or unloaded, if new) until `gatehouse grants approve` or
//! `POST /admin/approvals/<plugin>`.
//!
//! What grows ([`grows`]), judged by the generic grant diff so that a
//! section added to the policy later waits rather than slips through:
//! anything added (a plugin, a section, a list element, a field), any
//! changed value except a number lowered, and any removal except of what
//! grants ([`removal_narrows`]: an origin, a bucket, a table, a section).
//! Removing a restriction (a denied header, an injected one, a setting
//! that falls back to a more permissive default) waits. The
//! component's hash is not a grant that grows: an upgrade waits only when
//! its manifest asks for more (`requested.*`) or its policy grants more.
//!
//! The state lives beside the grants in force, in the same signed table
//! (`audit_grants`), under keys no plugin name can take:
//!
//! - `approved:<plugin>`: the grants last approved (before the first
//!   approval, the grants in force count as approved, so turning approvals
//!   on holds nothing that already runs);
//! - `pending:<plugin>`: grants waiting, written with a `requested` entry
//!   per item that grows;
//! - `rejected:<plugin>`: grants a person refused, held (not pending
//!   again, however often they are reloaded) until the policy or the
//!   manifest asks for something else, which becomes pending in their
//!   place, or a later approval.
//!
//! Approved and rejected rows end (`revoked`) when their plugin is neither
//! in force nor held: what comes back under the name asks again.
//!
//! Each row is written in the same transaction as the entry that explains
//! it, and each checkpoint signs the table's digest, so an edit of the
//! state outside the sidecar stops the log as an edit of the grants does.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::policy::grant_diff::{GrantChange, diff_grants};

/// Which approval row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// `approved:<plugin>`.
    Approved,
    /// `pending:<plugin>`.
    Pending,
    /// `rejected:<plugin>`.
    Rejected,
}

impl Row {
    /// The row's name: the prefix of its key.
    pub fn name(self) -> &'static str {
        match self {
            Row::Approved => "approved",
            Row::Pending => "pending",
            Row::Rejected => "rejected",
        }
    }

    /// The row's key in the grants table.
    pub fn key(self, plugin: &str) -> String {
        format!("{}:{plugin}", self.name())
    }

    /// The row and plugin a key of the grants table names, if it is an
    /// approval row.
    pub fn parse(key: &str) -> Option<(Row, &str)> {
        let (prefix, plugin) = key.split_once(':')?;
        let row = [Row::Approved, Row::Pending, Row::Rejected].into_iter().find(|row| row.name() == prefix)?;
        Some((row, plugin))
    }
}

/// Whether a key of the grants table is a plugin's grants in force (and
/// not an approval row: plugin names never hold `:`).
pub fn is_plugin_row(key: &str) -> bool {
    !key.contains(':')
}

/// A person's decision on pending grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The pending grants become the approved ones.
    Approve,
    /// The pending grants are held until something else is asked for.
    Reject,
}

impl Decision {
    /// The entry's kind: `approved` or `rejected`.
    pub fn kind(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
        }
    }
}

/// A row of the grants table that is not the JSON the sidecar wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the grants recorded for plugin `{0}` cannot be read")]
pub struct UnreadableRow(pub String);

/// An approval row's grants, from the grants table's `rows`.
pub fn row(rows: &BTreeMap<String, Vec<u8>>, which: Row, plugin: &str) -> Result<Option<Value>, UnreadableRow> {
    rows.get(&which.key(plugin))
        .map(|bytes| serde_json::from_slice(bytes).map_err(|_| UnreadableRow(plugin.to_string())))
        .transpose()
}

/// The grants approved for `plugin`: the last approval, else the grants in
/// force (nothing is held that already ran), else none (a new plugin).
pub fn approved(rows: &BTreeMap<String, Vec<u8>>, plugin: &str) -> Result<Option<Value>, UnreadableRow> {
    if let Some(value) = row(rows, Row::Approved, plugin)? {
        return Ok(Some(value));
    }
    let Some(bytes) = rows.get(plugin) else { return Ok(None) };
    let in_force: Value = serde_json::from_slice(bytes).map_err(|_| UnreadableRow(plugin.to_string()))?;
    Ok(Some(in_force["grants"].clone()))
}

/// Grants pending or rejected for one plugin ([`states`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalState {
    /// The plugin.
    pub plugin: String,
    /// `pending` or `rejected`.
    pub row: Row,
    /// The grants waiting or rejected.
    pub grants: Value,
    /// What they add to the approved grants.
    pub growth: Vec<GrantChange>,
    /// [`digest`] of `grants`: an approver who names it approves exactly
    /// the grants reviewed.
    pub sha256: String,
}

/// SHA-256 (hex) of grants in their canonical form: what `gatehouse grants
/// pending` and `GET /admin/approvals` show, and a decision may name.
pub fn digest(grants: &Value) -> String {
    use sha2::{Digest, Sha256};
    let bytes = super::canonical::to_vec(grants).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// Every pending and rejected row of the grants table's `rows`, with what
/// each adds to the approved grants.
pub fn states(rows: &BTreeMap<String, Vec<u8>>) -> Result<Vec<ApprovalState>, UnreadableRow> {
    let mut out = Vec::new();
    for key in rows.keys() {
        let Some((which @ (Row::Pending | Row::Rejected), plugin)) = Row::parse(key) else { continue };
        let Some(grants) = row(rows, which, plugin)? else { continue };
        let growth = growth(plugin, approved(rows, plugin)?.as_ref(), &grants);
        let sha256 = digest(&grants);
        out.push(ApprovalState { plugin: plugin.to_string(), row: which, grants, growth, sha256 });
    }
    Ok(out)
}

/// The changes from `approved` (`None`: nothing approved, a new plugin)
/// to `next` that grow the grants; empty when `next` needs no approval.
pub fn growth(plugin: &str, approved: Option<&Value>, next: &Value) -> Vec<GrantChange> {
    diff_grants(plugin, approved, Some(next)).into_iter().filter(grows).collect()
}

/// The changes from `loaded` to `next` that may take something away: what
/// a held plugin's loaded version cannot keep serving with. This errs the
/// other way from [`grows`]: only a change that clearly widens (something
/// added that grants, a larger number, duration or rate) is left out, so
/// any other change unloads the loaded version rather than keep what the
/// policy may have taken away. The component's hash and the manifest
/// (`requested.*`) grant nothing.
pub fn narrowing(plugin: &str, loaded: &Value, next: &Value) -> Vec<GrantChange> {
    diff_grants(plugin, Some(loaded), Some(next))
        .into_iter()
        .filter(|change| change.item != "component.sha256" && !change.item.starts_with("requested"))
        .filter(|change| !widens(change))
        .collect()
}

/// Whether a change clearly only widens the grants. A removal does only
/// when what goes is a restriction (a denied header): removing anything
/// else may take something away (an injected credential, a switch that
/// falls back to a narrower default).
fn widens(change: &GrantChange) -> bool {
    let item = change.item.as_str();
    match (&change.before, &change.after) {
        (_, None) => item_restricts(item),
        // What narrows when it goes grants when it comes (`narrowing`
        // never sees the whole plugin or the manifest).
        (None, Some(_)) => removal_narrows(item),
        (Some(before), Some(after)) => match compare(before, after) {
            Some(order) => order.is_ge(),
            None => in_granting(item) && value_narrows(after, before),
        },
    }
}

/// What a value grants, where its size orders it (larger granting more):
/// a number, a duration (`500ms`), or a rate (`10/s`, `300/m`), which is a
/// token bucket whose burst is its count, so both its count and its
/// per-second rate grant. The grants are the typed policy serialized, so
/// these are its own forms; anything else, and anything not finite, has
/// no size, and its change waits.
fn magnitude(value: &Value) -> Option<(u8, [f64; 2])> {
    let size = match value {
        Value::Number(n) => n.as_f64().map(|n| (0, [n, n])),
        Value::String(text) => match text.split_once('/') {
            Some((count, unit)) => {
                let per = humantime::parse_duration(&format!("1{}", unit.trim())).ok()?.as_secs_f64();
                let count: f64 = count.trim().parse().ok()?;
                // `1<unit>` is never zero long; were it, the rate would
                // not be finite and have no size (below).
                Some((1, [count, count / per]))
            }
            None => humantime::parse_duration(text.trim()).ok().map(|d| (2, [d.as_secs_f64(); 2])),
        },
        _ => None,
    };
    size.filter(|(_, size)| size.iter().all(|s| s.is_finite()))
}

/// How `after` compares with `before` in what it grants, when both have a
/// size of the same kind and every part of it moves the same way (a rate
/// whose burst grows while its per-second rate shrinks has no order).
fn compare(before: &Value, after: &Value) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let ((kind_before, before), (kind_after, after)) = (magnitude(before)?, magnitude(after)?);
    if kind_before != kind_after {
        return None;
    }
    let orders: Vec<std::cmp::Ordering> =
        before.iter().zip(&after).map(|(b, a)| a.partial_cmp(b)).collect::<Option<_>>()?;
    match (orders.contains(&Greater), orders.contains(&Less)) {
        (true, true) => None,
        (true, false) => Some(Greater),
        (false, true) => Some(Less),
        (false, false) => Some(Equal),
    }
}

/// Whether `after` grants less than `before` where both are one grant's
/// forms (`true`: all of it; `false`: none; a list: those columns). Two
/// lists are never compared here: the diff compares them element by
/// element.
fn value_narrows(before: &Value, after: &Value) -> bool {
    matches!(
        (before, after),
        (Value::Bool(true), Value::Bool(false) | Value::Array(_)) | (Value::Array(_), Value::Bool(false))
    )
}

/// Whether `item` is inside a [`GRANTING`] list or map.
fn in_granting(item: &str) -> bool {
    let segments: Vec<&str> = item.split('.').collect();
    GRANTING.iter().any(|pattern| {
        segments.len() >= pattern.len() && pattern.iter().zip(&segments).all(|(p, s)| *p == "*" || p == s)
    })
}

/// Lists and maps whose elements each grant something (an origin, a
/// method, a bucket, a table and its columns, a function): removing one
/// narrows. `*` stands for any one segment (a database alias).
const GRANTING: &[&[&str]] = &[
    &["http", "allow"],
    &["http", "methods"],
    &["http", "allow_headers"],
    &["http", "body_methods"],
    &["kv", "buckets"],
    &["sql", "*", "statements"],
    &["sql", "*", "functions"],
    &["sql", "*", "table_functions"],
    &["sql", "*", "tables"],
];

/// Whether removing `item` narrows what the plugin may do: the plugin
/// itself, a whole section or database alias, an element of a
/// [`GRANTING`] list or map, or anything the manifest no longer asks for.
/// Every other removal may widen and waits: an element of
/// `http.deny_headers` or `http.inject` (the plugin could then set that
/// header itself), a setting that falls back to a door's default such as
/// `sql.<alias>.transaction_control`, and any field added later.
pub fn removal_narrows(item: &str) -> bool {
    let segments: Vec<&str> = item.split('.').collect();
    match segments.as_slice() {
        [""] | ["requested", ..] | ["http" | "kv" | "sql"] | ["sql", _] => true,
        _ => in_granting(item),
    }
}

/// Whether one change grows the grants: see the module's documentation.
pub fn grows(change: &GrantChange) -> bool {
    if change.item == "component.sha256" {
        return false;
    }
    match (&change.before, &change.after) {
        (_, None) => !removal_narrows(&change.item),
        (Some(before), Some(after)) => match compare(before, after) {
            Some(order) => order.is_gt(),
            // Sizes without an order fall here too: neither is a grant's
            // form, so they grow.
            None => !(in_granting(&change.item) && value_narrows(before, after)),
        },
        (None, Some(_)) => !item_restricts(&change.item),
    }
}

/// Whether `item` restricts what the plugin may do, so that adding to it
/// narrows: the headers it may never send (a list of names, so the diff
/// names each one added or removed by the list).
fn item_restricts(item: &str) -> bool {
    item == "http.deny_headers"
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grown(before: Option<Value>, after: Value) -> Vec<String> {
        growth("p", before.as_ref(), &after).into_iter().map(|c| c.item).collect::<Vec<_>>()
    }

    #[test]
    fn what_grows_and_what_does_not() {
        let base = json!({
            "component": {"sha256": "aa"},
            "http": {
                "allow": ["https://a.example:443"],
                "rate": "10/s",
                "timeout": "5s",
                "deny_headers": ["x-internal-user"],
                "inject": [{"header": "authorization", "secret": "api", "prefix": "Bearer "}],
            },
            "kv": {"quota": {"max_keys": 10}, "buckets": {"cache": "immediate"}},
            "sql": {"app": {"transaction_control": false, "tables": {"orders": {"select": true}}}},
            "limits": {"memory": 100},
            "requested": null,
        });
        assert_eq!(grown(None, base.clone()), vec![""], "a new plugin grows as a whole");
        assert!(grown(Some(base.clone()), base.clone()).is_empty());
        let cases: &[(&str, Value, &[&str])] = &[
            ("an upgrade alone", json!({"component": {"sha256": "bb"}}), &[]),
            (
                "an origin added",
                json!({"http": {"allow": ["https://a.example:443", "https://b.example:443"]}}),
                &["http.allow"],
            ),
            ("an origin removed", json!({"http": {"allow": []}}), &[]),
            ("a denied header no longer denied", json!({"http": {"deny_headers": []}}), &["http.deny_headers"]),
            ("a header denied", json!({"http": {"deny_headers": ["x-internal-user", "x-secret"]}}), &[]),
            ("an injected header removed", json!({"http": {"inject": []}}), &["http.inject"]),
            ("a bucket removed", json!({"kv": {"buckets": {"cache": null}}}), &[]),
            (
                "transaction control back to the door's default",
                json!({"sql": {"app": {"transaction_control": null}}}),
                &["sql.app.transaction_control"],
            ),
            ("a table removed", json!({"sql": {"app": {"tables": {"orders": null}}}}), &[]),
            ("a column grant narrowed", json!({"sql": {"app": {"tables": {"orders": {"select": null}}}}}), &[]),
            ("a database alias removed", json!({"sql": {"app": null}}), &[]),
            ("a quota raised", json!({"kv": {"quota": {"max_keys": 11}}}), &["kv.quota.max_keys"]),
            ("a quota lowered", json!({"kv": {"quota": {"max_keys": 9}}}), &[]),
            ("a rate lowered", json!({"http": {"rate": "5/s"}}), &[]),
            ("a rate lowered in other units", json!({"http": {"rate": "6/m"}}), &[]),
            ("a rate raised", json!({"http": {"rate": "1000/m"}}), &["http.rate"]),
            ("a rate's burst raised, its pace lowered", json!({"http": {"rate": "300/h"}}), &["http.rate"]),
            ("a duration shortened", json!({"http": {"timeout": "500ms"}}), &[]),
            ("a duration lengthened", json!({"http": {"timeout": "1m"}}), &["http.timeout"]),
            ("a rate where a duration was", json!({"http": {"timeout": "1/s"}}), &["http.timeout"]),
            ("a rate of no size", json!({"http": {"rate": "NaN/s"}}), &["http.rate"]),
            ("a table grant cut to columns", json!({"sql": {"app": {"tables": {"orders": {"select": ["id"]}}}}}), &[]),
            ("a statement kind withdrawn", json!({"sql": {"app": {"tables": {"orders": {"select": false}}}}}), &[]),
            (
                "a statement kind granted",
                json!({"sql": {"app": {"tables": {"orders": {"insert": true}}}}}),
                &["sql.app.tables.orders.insert"],
            ),
            ("a section withdrawn", json!({"kv": null}), &[]),
            ("a database granted", json!({"sql": {"reports": {"tables": ["t"]}}}), &["sql.reports"]),
            ("a section granted", json!({"other": {"x": 1}}), &["other"]),
            (
                "the manifest asks for more",
                json!({"requested": {"http": {"allow": ["https://b.example:443"]}}}),
                &["requested"],
            ),
        ];
        for (what, patch, expected) in cases {
            let mut next = base.clone();
            merge(&mut next, patch);
            assert_eq!(grown(Some(base.clone()), next), *expected, "{what}");
        }
    }

    /// `patch`'s fields replace `target`'s, recursively into objects.
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(target), Value::Object(patch)) => {
                for (key, value) in patch {
                    match target.get_mut(key) {
                        Some(existing) if value.is_object() && existing.is_object() => merge(existing, value),
                        _ => {
                            target.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            (target, patch) => *target = patch.clone(),
        }
    }

    #[test]
    fn narrowing_is_what_is_taken_away_and_nothing_else() {
        let loaded = json!({
            "component": {"sha256": "aa"},
            "http": {
                "allow": ["https://a.example:443", "https://b.example:443"],
                "rate": "10/s",
                "deny_headers": ["x-internal-user"],
                "inject": [{"header": "authorization", "secret": "api"}],
            },
            "kv": {"quota": {"max_keys": 10}},
            "sql": {"app": {"transaction_control": true, "tables": {"orders": {"select": true, "insert": false}}}},
            "stdio": "inherit",
            "requested": {"http": {"allow": ["https://a.example:443"]}},
        });
        let narrowed = |patch: Value| {
            let mut next = loaded.clone();
            merge(&mut next, &patch);
            narrowing("p", &loaded, &next).into_iter().map(|c| c.item).collect::<Vec<_>>()
        };
        assert!(narrowed(json!({})).is_empty());
        assert_eq!(narrowed(json!({"http": {"allow": ["https://b.example:443"]}})), ["http.allow"]);
        assert_eq!(narrowed(json!({"kv": {"quota": {"max_keys": 9}}})), ["kv.quota.max_keys"]);
        assert_eq!(narrowed(json!({"kv": null})), ["kv"]);
        assert_eq!(narrowed(json!({"http": {"rate": "5/s"}})), ["http.rate"]);
        assert_eq!(narrowed(json!({"http": {"deny_headers": ["x-secret"]}})), ["http.deny_headers"]);
        assert_eq!(
            narrowed(json!({"sql": {"app": {"tables": {"orders": {"select": ["id"]}}}}})),
            ["sql.app.tables.orders.select"]
        );
        // What is not clearly a widening counts as taking away.
        assert_eq!(narrowed(json!({"stdio": "discard"})), ["stdio"]);
        assert_eq!(narrowed(json!({"http": {"rate": "300/m"}})), ["http.rate"], "a burst raised, a pace lowered");
        // A removal widens only when a restriction goes.
        assert_eq!(narrowed(json!({"http": {"inject": null}})), ["http.inject"]);
        assert_eq!(narrowed(json!({"sql": {"app": {"transaction_control": null}}})), ["sql.app.transaction_control"]);
        assert!(narrowed(json!({"http": {"deny_headers": null}})).is_empty());
        for (what, patch) in [
            ("an upgrade", json!({"component": {"sha256": "bb"}})),
            ("the manifest asking for less", json!({"requested": null})),
            ("a quota raised", json!({"kv": {"quota": {"max_keys": 11}}})),
            ("a rate raised", json!({"http": {"rate": "20/s"}})),
            ("a statement kind granted", json!({"sql": {"app": {"tables": {"orders": {"insert": true}}}}})),
            ("a database granted", json!({"sql": {"reports": {"tables": {}}}})),
            (
                "an origin added",
                json!({"http": {"allow": ["https://a.example:443", "https://b.example:443", "https://c.example:443"]}}),
            ),
        ] {
            assert!(narrowed(patch).is_empty(), "{what}");
        }
    }

    #[test]
    fn approval_rows_never_collide_with_plugins() {
        assert_eq!(Row::Pending.key("fetch"), "pending:fetch");
        for row in [Row::Approved, Row::Pending, Row::Rejected] {
            assert_eq!(Row::parse(&row.key("a:b")), Some((row, "a:b")));
        }
        assert_eq!(Row::parse("fetch"), None);
        assert_eq!(Row::parse("other:fetch"), None);
        assert!(is_plugin_row("fetch"));
        for row in [Row::Approved, Row::Pending, Row::Rejected] {
            assert!(!is_plugin_row(&row.key("fetch")));
        }
    }
}
