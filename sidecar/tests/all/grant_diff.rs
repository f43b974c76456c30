//! The grant diff on real policy files: each pair of directories gives
//! exactly the changes listed, and a reload with no change gives none.

use gatehouse::policy::PolicySet;
use gatehouse::policy::grant_diff::{GrantChange, diff_sets};
use serde_json::{Value, json};

use crate::common::{Policies, guest};

/// Loads `files` (name, text after the `[plugin]` table) as one directory.
fn load(files: &[(&str, &str, &str)]) -> PolicySet {
    let policies = Policies::new();
    for (name, guest_name, rest) in files {
        let component = guest(guest_name).display().to_string();
        policies
            .write(&format!("{name}.toml"), &format!("[plugin]\nname = \"{name}\"\ncomponent = {component:?}\n{rest}"));
    }
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    load.set
}

fn shown(changes: Vec<GrantChange>) -> Vec<(String, String, Option<Value>, Option<Value>)> {
    changes.into_iter().map(|c| (c.plugin, c.item, c.before, c.after)).collect()
}

const HTTP: &str = "[http]\nallow = [\"https://api.example.com\", \"https://*.cdn.example.com\"]\n";

#[test]
fn an_unchanged_directory_has_no_change() {
    let set = || load(&[("a", "echo", HTTP), ("b", "echo", "[kv]\nmax_keys = 10\n")]);
    assert_eq!(diff_sets(&set(), &set()), vec![]);
}

#[test]
fn an_origin_added_and_one_removed_are_two_changes_in_normal_form() {
    let before = load(&[("a", "echo", HTTP)]);
    let after =
        load(&[("a", "echo", "[http]\nallow = [\"https://*.cdn.example.com\", \"https://API.example.com:8443\"]\n")]);
    assert_eq!(
        shown(diff_sets(&before, &after)),
        vec![
            ("a".into(), "http.allow".into(), Some(json!("https://api.example.com:443")), None),
            ("a".into(), "http.allow".into(), None, Some(json!("https://api.example.com:8443"))),
        ]
    );
}

#[test]
fn a_quota_and_a_limit_changed_name_their_items_and_values() {
    let before = load(&[("b", "echo", "[limits]\ntimeout = \"2s\"\n[kv]\nmax_keys = 10\n")]);
    let after = load(&[("b", "echo", "[limits]\ntimeout = \"1500ms\"\n[kv]\nmax_keys = 20\n")]);
    assert_eq!(
        shown(diff_sets(&before, &after)),
        vec![
            ("b".into(), "kv.quota.max_keys".into(), Some(json!(10)), Some(json!(20))),
            ("b".into(), "limits.timeout".into(), Some(json!("2s")), Some(json!("1s 500ms"))),
        ]
    );
}

#[test]
fn a_section_granted_is_one_change_with_the_whole_section() {
    let before = load(&[("a", "echo", "")]);
    let after = load(&[("a", "echo", "[kv]\n")]);
    let changes = diff_sets(&before, &after);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!((changes[0].item.as_str(), &changes[0].before), ("kv", &None));
    let granted = changes[0].after.as_ref().unwrap();
    assert!(granted["quota"]["max_keys"].is_u64() && granted["buckets"]["default"] == json!("immediate"), "{granted}");
}

#[test]
fn plugins_added_and_removed_carry_their_whole_policy_and_a_new_component_its_hash() {
    let before = load(&[("a", "echo", ""), ("gone", "echo", "")]);
    let after = load(&[("a", "noop", ""), ("new", "echo", HTTP)]);
    let changes = diff_sets(&before, &after);
    let items: Vec<(&str, &str)> = changes.iter().map(|c| (c.plugin.as_str(), c.item.as_str())).collect();
    assert_eq!(items, vec![("a", "component.sha256"), ("gone", ""), ("new", "")]);
    let hash = |name: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(guest(name)).unwrap()));
    assert_eq!(changes[0].before, Some(json!(hash("echo"))));
    assert_eq!(changes[0].after, Some(json!(hash("noop"))));
    assert!(changes[1].after.is_none() && changes[1].before.as_ref().unwrap()["limits"]["concurrency"] == json!(16));
    let new = changes[2].after.as_ref().unwrap();
    assert_eq!(new["http"]["allow"], json!(["https://api.example.com:443", "https://*.cdn.example.com:443"]));
    assert!(new.get("file").is_none(), "where a policy came from is not a grant: {new}");
}

#[test]
fn a_table_removed_from_an_sql_grant_is_one_change() {
    let sql = |tables: &str| format!("[sql.main]\nstatements = [\"select\", \"insert\"]\n[sql.main.tables]\n{tables}");
    let before = load(&[("a", "echo", &sql("products = \"select\"\norders = [\"select\", \"insert\"]\n"))]);
    let after = load(&[("a", "echo", &sql("products = \"select\"\n"))]);
    let changes = shown(diff_sets(&before, &after));
    assert_eq!(
        changes,
        vec![(
            "a".into(),
            "sql.main.tables.orders".into(),
            Some(json!({"select": true, "insert": true, "update": false, "delete": false})),
            None
        )]
    );
    // A column added to a restricted grant names the column.
    let narrow = load(&[("a", "echo", &sql("products = { select = [\"id\"] }\n"))]);
    let wider = load(&[("a", "echo", &sql("products = { select = [\"id\", \"name\"] }\n"))]);
    assert_eq!(
        shown(diff_sets(&narrow, &wider)),
        vec![("a".into(), "sql.main.tables.products.select".into(), None, Some(json!("name")))]
    );
}
