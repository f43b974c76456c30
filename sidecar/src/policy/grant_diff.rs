//! The exact difference between the grants in force and the grants a load
//! would put in force, as a list of [`GrantChange`]s: what the audit log
//! records before a change takes effect.
//!
//! The diff is generic: it compares the policies' serialized form
//! ([`PluginPolicy`] implements `Serialize`), so a section added to the
//! policy later is diffed without new code here. What a change names:
//!
//! - a plugin added or removed: one change, `item` = `""`, with the whole
//!   policy after or before;
//! - a section granted or withdrawn (`[http]`, `[kv]`, ...): one change for
//!   the section, with its whole value;
//! - a value changed inside a section: one change per leaf, its `item` a
//!   dotted path (`kv.quota.max_keys`, `limits.timeout`);
//! - a list of plain values (`http.allow`, `http.methods`): one change per
//!   element added or removed, as sets (order is not a grant);
//! - the component's bytes: `component.sha256`.
//!
//! Where a policy came from (its file, the component's path) is not a grant
//! and is not compared: the audit entry names the file as the actor.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{PluginPolicy, PolicySet};

/// One change of one plugin's grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantChange {
    /// The plugin whose grants change.
    pub plugin: String,
    /// What changes: a dotted path into the policy (`http.allow`,
    /// `kv.quota.max_keys`), or `""` for the whole plugin.
    pub item: String,
    /// The value in force before; `None` when the item is added.
    pub before: Option<Value>,
    /// The value in force after; `None` when the item is removed.
    pub after: Option<Value>,
}

impl GrantChange {
    /// `added` (no value before), `removed` (none after) or `changed`.
    pub fn kind(&self) -> &'static str {
        match (&self.before, &self.after) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        }
    }
}

/// Every change from `before` to `after`, by plugin, then item; empty when
/// the two grant the same.
pub fn diff_sets(before: &PolicySet, after: &PolicySet) -> Vec<GrantChange> {
    let mut names: Vec<&String> = before.plugins.keys().chain(after.plugins.keys()).collect();
    names.sort();
    names.dedup();
    names.into_iter().flat_map(|name| diff_plugin(name, before.plugins.get(name), after.plugins.get(name))).collect()
}

/// The changes of one plugin's grants (`None`: no policy in force).
pub fn diff_plugin(name: &str, before: Option<&PluginPolicy>, after: Option<&PluginPolicy>) -> Vec<GrantChange> {
    diff_grants(name, before.map(grants).as_ref(), after.map(grants).as_ref())
}

/// [`diff_plugin`] on grants already in their serialized form
/// ([`grants`]), such as the grants in force the audit log keeps.
pub fn diff_grants(name: &str, before: Option<&Value>, after: Option<&Value>) -> Vec<GrantChange> {
    let mut changes = Vec::new();
    match (before, after) {
        (Some(before), Some(after)) => diff_value(name, String::new(), before, after, &mut changes),
        (before, after) if before != after => changes.push(GrantChange {
            plugin: name.to_string(),
            item: String::new(),
            before: before.cloned(),
            after: after.cloned(),
        }),
        _ => {}
    }
    changes
}

/// A policy as the value its grants serialize to, without where it came
/// from: what [`diff_grants`] compares.
pub fn grants(policy: &PluginPolicy) -> Value {
    serde_json::to_value(policy).expect("a policy's grants are JSON values")
}

fn diff_value(plugin: &str, item: String, before: &Value, after: &Value, out: &mut Vec<GrantChange>) {
    if before == after {
        return;
    }
    let change = |item: String, before: Option<&Value>, after: Option<&Value>| GrantChange {
        plugin: plugin.to_string(),
        item,
        before: before.cloned(),
        after: after.cloned(),
    };
    match (before, after) {
        (Value::Object(before), Value::Object(after)) => {
            let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if item.is_empty() { key.clone() } else { format!("{item}.{key}") };
                match (before.get(key), after.get(key)) {
                    (Some(b), Some(a)) if !b.is_null() && !a.is_null() => diff_value(plugin, path, b, a, out),
                    (b, a) => {
                        let (b, a) = (b.filter(|v| !v.is_null()), a.filter(|v| !v.is_null()));
                        if b != a {
                            out.push(change(path, b, a));
                        }
                    }
                }
            }
        }
        (Value::Array(before), Value::Array(after)) => {
            let before = as_set(before);
            let after = as_set(after);
            for (key, value) in &before {
                if !after.contains_key(key) {
                    out.push(change(item.clone(), Some(value), None));
                }
            }
            for (key, value) in &after {
                if !before.contains_key(key) {
                    out.push(change(item.clone(), None, Some(value)));
                }
            }
        }
        (before, after) => out.push(change(item, Some(before), Some(after))),
    }
}

/// A list's elements by their canonical text: the policy's lists are sets
/// (allowed origins, methods, injected headers), so order is no change.
fn as_set(values: &[Value]) -> BTreeMap<String, &Value> {
    values.iter().map(|v| (v.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn changes(before: Value, after: Value) -> Vec<(String, Option<Value>, Option<Value>)> {
        let mut out = Vec::new();
        diff_value("p", String::new(), &before, &after, &mut out);
        out.into_iter().map(|c| (c.item, c.before, c.after)).collect()
    }

    /// A plugin with no policy before and none after has no change.
    #[test]
    fn no_policy_before_or_after_is_no_change() {
        assert!(diff_grants("p", None, None).is_empty());
        assert_eq!(diff_grants("p", None, Some(&json!({"kv": null}))).len(), 1);
    }

    #[test]
    fn equal_values_have_no_change() {
        let value = json!({"http": {"allow": ["https://a.example:443"], "rate": "20/s"}, "kv": null});
        assert_eq!(changes(value.clone(), value), vec![]);
    }

    #[test]
    fn a_changed_leaf_is_named_by_its_path() {
        assert_eq!(
            changes(
                json!({"kv": {"quota": {"max_keys": 10, "max_bytes": 5}}}),
                json!({"kv": {"quota": {"max_keys": 20, "max_bytes": 5}}})
            ),
            vec![("kv.quota.max_keys".into(), Some(json!(10)), Some(json!(20)))]
        );
    }

    #[test]
    fn a_section_granted_or_withdrawn_is_one_change_with_its_value() {
        let section = json!({"rate": "10/s"});
        assert_eq!(
            changes(json!({"kv": null}), json!({"kv": section})),
            vec![("kv".into(), None, Some(section.clone()))]
        );
        assert_eq!(changes(json!({"kv": section}), json!({})), vec![("kv".into(), Some(section), None)]);
    }

    #[test]
    fn lists_are_sets_of_elements() {
        let before = json!({"allow": ["https://a.example:443", "https://b.example:443"]});
        let after = json!({"allow": ["https://c.example:443", "https://a.example:443"]});
        assert_eq!(
            changes(before, after),
            vec![
                ("allow".into(), Some(json!("https://b.example:443")), None),
                ("allow".into(), None, Some(json!("https://c.example:443"))),
            ]
        );
        let reordered = (json!({"m": ["GET", "POST"]}), json!({"m": ["POST", "GET"]}));
        assert_eq!(changes(reordered.0, reordered.1), vec![]);
    }

    #[test]
    fn a_changed_type_is_one_change() {
        assert_eq!(changes(json!({"a": 1}), json!({"a": [1]})), vec![("a".into(), Some(json!(1)), Some(json!([1])))]);
    }
}
