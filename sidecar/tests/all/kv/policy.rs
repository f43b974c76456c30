//! `[kv]` in a policy file: defaults, every field, and refusals with
//! file and line.

use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{Bucket, KvError};

use crate::common::{Policies, guest};

fn with_kv(kv: &str) -> String {
    format!("[plugin]\nname = \"echo\"\ncomponent = {:?}\n\n[kv]\n{kv}\n", guest("echo").display().to_string())
}

#[test]
fn kv_section_defaults_are_the_documented_values() {
    let policies = Policies::new();
    policies.write("echo.toml", &with_kv(""));
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let echo = &load.set.plugins["echo"];
    assert!(echo.grants("kv"));
    let kv = echo.kv.as_ref().unwrap();
    // The values policies/README.md documents.
    assert_eq!(kv.quota, Quota { max_keys: 10_000, max_bytes: 10 << 20, max_key: 256, max_value: 64 << 10 });
    assert_eq!(kv.rate.to_string(), "500/s");
    assert_eq!(kv.buckets.len(), 1);
    assert_eq!(kv.buckets["default"], Durability::Immediate);
}

#[test]
fn no_kv_section_grants_no_storage() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "");
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    assert!(!load.set.plugins["echo"].grants("kv"));
    assert!(load.set.plugins["echo"].kv.is_none());
}

#[test]
fn every_kv_field_is_read() {
    let policies = Policies::new();
    policies.write(
        "echo.toml",
        &with_kv(
            "max_keys = 500\nmax_bytes = \"1 MiB\"\nmax_key = \"128 B\"\nmax_value = \"4 KiB\"\nrate = \"50/s\"\n\
             buckets = [\"cache\", \"sessions\"]\nrelaxed = [\"cache\"]",
        ),
    );
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let kv = load.set.plugins["echo"].kv.clone().unwrap();
    assert_eq!(kv.quota, Quota { max_keys: 500, max_bytes: 1 << 20, max_key: 128, max_value: 4 << 10 });
    assert_eq!(kv.rate.to_string(), "50/s");
    assert_eq!(kv.bucket("cache").unwrap(), ("cache", Durability::Relaxed));
    assert_eq!(kv.bucket("sessions").unwrap(), ("sessions", Durability::Immediate));
    assert_eq!(kv.bucket("").unwrap(), ("default", Durability::Immediate));
    assert!(kv.bucket("other").is_err());
    // What a door opens: the grant decides the bucket and its durability.
    let cache = Bucket::open("echo", &kv, "cache").unwrap();
    assert_eq!((cache.namespace.plugin(), cache.namespace.bucket()), ("echo", "cache"));
    assert_eq!(cache.durability, Durability::Relaxed);
    assert_eq!(cache.quota, kv.quota);
    assert_eq!(Bucket::open("echo", &kv, "").unwrap().namespace.bucket(), "default");
    for refused in ["other", "Cache", "../cache", "cache\n"] {
        match Bucket::open("echo", &kv, refused) {
            Err(KvError::Denied(message)) => assert!(!message.contains('\n'), "{message}"),
            other => panic!("{refused:?}: {other:?}"),
        }
    }
}

#[test]
fn kv_problems_are_all_reported_with_their_lines() {
    let policies = Policies::new();
    // Lines: 5 [kv], 6 max_keys, 7 max_key, 8 max_value, 9 rate, 10 buckets, 11 relaxed.
    policies.write(
        "echo.toml",
        &with_kv(
            "max_keys = 0\nmax_key = \"5 KiB\"\nmax_value = \"17 MiB\"\nrate = \"fast\"\n\
             buckets = [\"Cache\", \"default\"]\nrelaxed = [\"nope\"]",
        ),
    );
    let load = policies.load();
    assert!(load.set.plugins.is_empty());
    let found: Vec<(Option<usize>, String)> = load.errors.iter().map(|e| (e.line, e.reason.clone())).collect();
    let expect: &[(usize, &str)] = &[
        (6, "max_keys 0 is out of range"),
        (7, "max_key 5120 is out of range"),
        (8, "max_value 17825792 is out of range"),
        (9, "invalid rate `fast`"),
        (10, "invalid bucket name `Cache`"),
        (10, "`default` is always granted"),
        (11, "relaxed bucket `nope` is not granted"),
    ];
    assert_eq!(found.len(), expect.len(), "{found:?}");
    for (line, reason) in expect {
        assert!(found.iter().any(|(l, r)| *l == Some(*line) && r.contains(reason)), "{line} {reason}: {found:?}");
    }
}

#[test]
fn unknown_kv_fields_and_negative_sizes_are_refused() {
    for (kv, reason) in [
        ("max_keyz = 5", "unknown field `max_keyz`"),
        ("max_bytes = -1", "cannot be negative"),
        ("max_keys = -1", "negative"),
        ("buckets = \"cache\"", "invalid type"),
    ] {
        let policies = Policies::new();
        policies.write("echo.toml", &with_kv(kv));
        let load = policies.load();
        assert_eq!(load.errors.len(), 1, "{kv}: {:?}", load.errors);
        assert!(load.errors[0].reason.contains(reason), "{kv}: {:?}", load.errors);
        assert!(load.errors[0].line.is_some(), "{kv}");
    }
}
