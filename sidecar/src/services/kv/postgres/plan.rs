//! The pure half of a group-commit batch: given what the database holds
//! for the keys a batch touches and its plugin's usage (read under the
//! usage-row lock), decide each write in order, against the state and the
//! usage the writes before it left, and sum up what the batch as a whole
//! changes. No I/O here, so the order and quota rules are unit-tested
//! without a database; [`super::PostgresBackend`] runs the statements.
//!
//! A refused write changes nothing in the state, so its neighbours are
//! decided as if it had never been queued, and it issues no statement.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::super::backend::{Usage, check_new_key, check_value, parse_counter};
use super::super::error::{KvError, QuotaKind};
use super::super::policy::Quota;
use crate::guest_text;

/// The longest stored value an increment reads: a counter is an optional
/// `-` and at most 20 digits (see [`parse_counter`]); a longer value is not
/// one, and is not read.
pub(super) const COUNTER_READ: u64 = 21;

/// One write, as the batch applies it.
#[derive(Debug)]
pub(super) enum Op {
    Set {
        key: String,
        value: Vec<u8>,
    },
    /// `expected: None`: the key must be absent.
    Cas {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Increment {
        key: String,
        delta: i64,
    },
    SetMany(Vec<(String, Vec<u8>)>),
    DeleteMany(Vec<String>),
}

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    Unit,
    Bool(bool),
    Int(i64),
    Count(u64),
}

/// A queued write of one plugin: its bucket (name), the quota it was
/// called under and the operation.
#[derive(Debug)]
pub(super) struct Write {
    pub bucket: String,
    pub quota: Quota,
    pub op: Op,
}

impl Write {
    /// The keys the write touches, with how many bytes of a stored value
    /// it needs to see (0: only whether the key exists and its length).
    pub fn reads(&self) -> Vec<(&str, u64)> {
        match &self.op {
            Op::Set { key, .. } | Op::Delete { key } => vec![(key, 0)],
            Op::Cas { key, expected, .. } => vec![(key, expected.as_ref().map_or(0, |e| e.len() as u64))],
            Op::Increment { key, .. } => vec![(key, COUNTER_READ)],
            Op::SetMany(items) => items.iter().map(|(k, _)| (k.as_str(), 0)).collect(),
            Op::DeleteMany(keys) => keys.iter().map(|k| (k.as_str(), 0)).collect(),
        }
    }
}

/// A stored key as the batch read it: its value's length, and the value
/// itself when it is at most the length some write of the batch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub len: u64,
    pub value: Option<Vec<u8>>,
}

/// `(bucket, key)`.
pub(super) type Slot = (String, String);

/// A key's state while the batch is decided: `None` = absent.
type Entry<'r> = Option<(u64, Option<Cow<'r, [u8]>>)>;

/// What a batch decided.
#[derive(Debug)]
pub(super) struct Outcome<'r> {
    /// One answer per write, in order.
    pub answers: Vec<Result<Answer, KvError>>,
    /// The final value of every key some accepted write changed (`None`:
    /// deleted). Values are borrowed from the writes (a counter's is made
    /// here), so the batch copies no guest value before sending it.
    pub changes: BTreeMap<Slot, Option<Cow<'r, [u8]>>>,
    /// Net change of (keys, bytes) per bucket, zero entries left out.
    pub buckets: BTreeMap<String, (i64, i64)>,
    /// Net change of the plugin's (keys, bytes).
    pub plugin: (i64, i64),
}

/// Decides `writes` in order against `stored` (every key they touch that
/// exists) and the plugin's `usage`.
pub(super) fn plan<'r>(writes: &[&'r Write], usage: Usage, stored: BTreeMap<Slot, Stored>) -> Outcome<'r> {
    let mut state: BTreeMap<Slot, Entry<'r>> =
        stored.into_iter().map(|(slot, s)| (slot, Some((s.len, s.value.map(Cow::Owned))))).collect();
    let mut usage = usage;
    let mut changed: BTreeSet<Slot> = BTreeSet::new();
    let mut buckets: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut plugin = (0i64, 0i64);
    let mut answers = Vec::with_capacity(writes.len());
    for write in writes {
        let answer = decide(write, &state, &mut usage).map(|(changes, answer, delta)| {
            let bucket = buckets.entry(write.bucket.clone()).or_default();
            bucket.0 += delta.0;
            bucket.1 += delta.1;
            plugin.0 += delta.0;
            plugin.1 += delta.1;
            for (key, new) in changes {
                let slot = (write.bucket.clone(), key.to_string());
                changed.insert(slot.clone());
                state.insert(slot, new.map(|v| (v.len() as u64, Some(v))));
            }
            answer
        });
        answers.push(answer);
    }
    let changes = changed
        .into_iter()
        .map(|slot| {
            let value = state.get(&slot).cloned().flatten().map(|(_, v)| v.expect("a written value is known"));
            (slot, value)
        })
        .collect();
    buckets.retain(|_, delta| *delta != (0, 0));
    Outcome { answers, changes, buckets, plugin }
}

/// A planned change of one write: the key and its new value.
type Change<'r> = (&'r str, Option<Cow<'r, [u8]>>);

/// One write: its changes, its answer and what it does to (keys, bytes),
/// or its refusal. On success `usage` has been moved by the write.
#[allow(clippy::type_complexity)]
fn decide<'r>(
    write: &'r Write,
    state: &BTreeMap<Slot, Entry<'r>>,
    usage: &mut Usage,
) -> Result<(Vec<Change<'r>>, Answer, (i64, i64)), KvError> {
    let look = |key: &str| state.get(&(write.bucket.clone(), key.to_string())).and_then(|e| e.as_ref());
    let (changes, answer): (Vec<Change<'r>>, Answer) = match &write.op {
        Op::Set { key, value } => (vec![(key.as_str(), Some(Cow::Borrowed(value.as_slice())))], Answer::Unit),
        Op::Cas { key, expected, new } => {
            let matches = match (look(key), expected) {
                (None, None) => true,
                (Some((len, value)), Some(expected)) => {
                    *len == expected.len() as u64
                        && match value {
                            Some(value) => value.as_ref() == expected.as_slice(),
                            None => return Err(KvError::Internal("a value to compare was not read".into())),
                        }
                }
                _ => false,
            };
            if !matches {
                return Ok((Vec::new(), Answer::Bool(false), (0, 0)));
            }
            (vec![(key.as_str(), Some(Cow::Borrowed(new.as_slice())))], Answer::Bool(true))
        }
        Op::Delete { key } => (vec![(key.as_str(), None)], Answer::Bool(look(key).is_some())),
        Op::Increment { key, delta } => {
            let now = match look(key) {
                None => 0,
                Some((_, value)) => value.as_deref().and_then(parse_counter).ok_or_else(|| {
                    KvError::Conflict(format!(
                        "the value of `{}` is not a decimal integer",
                        guest_text::escaped(key, guest_text::SHORT)
                    ))
                })?,
            };
            let next = now
                .checked_add(*delta)
                .ok_or_else(|| KvError::Conflict(format!("{now} + {delta} overflows a signed 64-bit integer")))?;
            let value = next.to_string().into_bytes();
            check_value(&write.quota, &value)?;
            (vec![(key.as_str(), Some(Cow::Owned(value)))], Answer::Int(next))
        }
        Op::SetMany(items) => {
            // A repeated key: the last value wins.
            let last: BTreeMap<&str, &[u8]> = items.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            (last.into_iter().map(|(k, v)| (k, Some(Cow::Borrowed(v)))).collect(), Answer::Unit)
        }
        Op::DeleteMany(keys) => {
            let unique: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
            let existing = unique.iter().filter(|k| look(k).is_some()).count() as u64;
            (unique.into_iter().map(|k| (k, None)).collect(), Answer::Count(existing))
        }
    };

    // What the changes do to usage (keys are unique within one write),
    // checked before anything is applied. The same rules as the redb
    // writer: a change that does not grow a count always passes.
    let mut delta = (0i64, 0i64);
    for (key, new) in &changes {
        match (look(key).map(|(len, _)| *len), new) {
            (None, Some(value)) => {
                check_new_key(&write.quota, key.as_bytes())?;
                delta.0 += 1;
                delta.1 += (key.len() + value.len()) as i64;
            }
            (Some(old), Some(value)) => delta.1 += value.len() as i64 - old as i64,
            (Some(old), None) => {
                delta.0 -= 1;
                delta.1 -= key.len() as i64 + old as i64;
            }
            (None, None) => {}
        }
    }
    let quota = &write.quota;
    let after = |now: u64, delta: i64| now.saturating_add_signed(delta);
    if delta.0 > 0 && after(usage.keys, delta.0) > quota.max_keys {
        return Err(KvError::QuotaExceeded {
            quota: QuotaKind::Keys,
            usage: usage.keys,
            needed: after(usage.keys, delta.0),
            limit: quota.max_keys,
        });
    }
    if delta.1 > 0 && after(usage.bytes, delta.1) > quota.max_bytes {
        return Err(KvError::QuotaExceeded {
            quota: QuotaKind::Bytes,
            usage: usage.bytes,
            needed: after(usage.bytes, delta.1),
            limit: quota.max_bytes,
        });
    }
    *usage = Usage { keys: after(usage.keys, delta.0), bytes: after(usage.bytes, delta.1) };
    // A delete of an absent key changes nothing and writes nothing.
    let changes = changes.into_iter().filter(|(key, new)| new.is_some() || look(key).is_some()).collect();
    Ok((changes, answer, delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(bucket: &str, max_keys: u64, op: Op) -> Write {
        Write { bucket: bucket.into(), quota: Quota { max_keys, ..Quota::default() }, op }
    }

    fn set(key: &str, value: &[u8]) -> Op {
        Op::Set { key: key.into(), value: value.to_vec() }
    }

    fn stored(entries: &[(&str, &str, &[u8])]) -> BTreeMap<Slot, Stored> {
        entries
            .iter()
            .map(|(b, k, v)| ((b.to_string(), k.to_string()), Stored { len: v.len() as u64, value: Some(v.to_vec()) }))
            .collect()
    }

    /// Attacks: the write that would take the last key races two others in
    /// one batch; a refused write between accepted ones; a delete making
    /// room for a later write of the same batch; an increment of text and
    /// of a value too long to have been read.
    #[test]
    fn each_write_is_decided_in_order_against_what_the_batch_left() {
        let writes = [
            write("default", 4, set("a", b"1")),                                 // new: 3 keys
            write("default", 4, set("b", b"1")),                                 // new: 4 keys
            write("default", 4, set("c", b"1")),                                 // refused: 5 > 4
            write("default", 4, Op::Increment { key: "text".into(), delta: 1 }), // conflict
            write("default", 4, Op::Delete { key: "text".into() }),              // 3 keys
            write("cache", 4, set("c", b"22")),                                  // 4 keys again
            write("default", 4, Op::Increment { key: "a".into(), delta: 41 }),   // reads the batch's "1"
            write("default", 4, Op::Cas { key: "b".into(), expected: Some(b"1".to_vec()), new: b"x".to_vec() }),
            write("default", 4, Op::Cas { key: "b".into(), expected: Some(b"1".to_vec()), new: b"y".to_vec() }),
            write("default", 4, Op::Increment { key: "long".into(), delta: 1 }),
        ];
        let refs: Vec<&Write> = writes.iter().collect();
        let mut before = stored(&[("default", "text", b"abc")]);
        // A value longer than any write wanted: its length only.
        before.insert(("default".into(), "long".into()), Stored { len: 100, value: None });
        let usage = Usage { keys: 2, bytes: 4 + 7 + 100 };
        let outcome = plan(&refs, usage, before);
        let kinds: Vec<String> = outcome
            .answers
            .iter()
            .map(|a| match a {
                Ok(answer) => format!("{answer:?}"),
                Err(KvError::QuotaExceeded { quota, .. }) => format!("quota {quota}"),
                Err(KvError::Conflict(_)) => "conflict".into(),
                Err(e) => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Unit",
                "Unit",
                "quota max_keys",
                "conflict",
                "Bool(true)",
                "Unit",
                "Int(42)",
                "Bool(true)",
                "Bool(false)",
                "conflict"
            ]
        );
        let changes: Vec<(&str, &str, Option<&[u8]>)> =
            outcome.changes.iter().map(|((b, k), v)| (b.as_str(), k.as_str(), v.as_deref())).collect();
        assert_eq!(
            changes,
            [
                ("cache", "c", Some(&b"22"[..])),
                ("default", "a", Some(&b"42"[..])),
                ("default", "b", Some(&b"x"[..])),
                ("default", "text", None)
            ]
        );
        // default: +a(1+2) +b(1+1) -text(4+3); cache: +c(1+2).
        assert_eq!(outcome.buckets.get("default"), Some(&(1, 3 + 2 - 7)));
        assert_eq!(outcome.buckets.get("cache"), Some(&(1, 3)));
        assert_eq!(outcome.plugin, (2, 3 + 2 - 7 + 3));
    }

    #[test]
    fn a_batch_of_refusals_and_no_ops_changes_nothing() {
        let writes = [
            write("default", 1, set("new", b"v")),
            write("default", 1, Op::Delete { key: "absent".into() }),
            write("default", 1, Op::Cas { key: "k".into(), expected: None, new: b"v".to_vec() }),
            write("default", 1, Op::DeleteMany(vec!["x".into(), "x".into()])),
        ];
        let refs: Vec<&Write> = writes.iter().collect();
        let outcome = plan(&refs, Usage { keys: 1, bytes: 2 }, stored(&[("default", "k", b"v")]));
        assert!(matches!(outcome.answers[0], Err(KvError::QuotaExceeded { quota: QuotaKind::Keys, .. })));
        assert_eq!(outcome.answers[1], Ok(Answer::Bool(false)));
        assert_eq!(outcome.answers[2], Ok(Answer::Bool(false)));
        assert_eq!(outcome.answers[3], Ok(Answer::Count(0)));
        assert!(outcome.changes.is_empty());
        assert!(outcome.buckets.is_empty());
        assert_eq!(outcome.plugin, (0, 0));
    }

    #[test]
    fn bytes_are_checked_against_the_running_usage_and_a_set_many_is_whole() {
        let quota = Quota { max_keys: 100, max_bytes: 10, ..Quota::default() };
        let w = |op| Write { bucket: "default".into(), quota, op };
        let writes = [
            w(Op::SetMany(vec![("a".into(), b"1234".to_vec()), ("a".into(), b"1".to_vec())])), // 2 bytes
            w(Op::SetMany(vec![("b".into(), b"1234".to_vec()), ("c".into(), b"1234".to_vec())])), // 12: refused
            w(set("b", b"1234567")),                                                           // 8: exactly 10
            w(set("b", b"12345678")),                                                          // 11: refused
        ];
        let refs: Vec<&Write> = writes.iter().collect();
        let outcome = plan(&refs, Usage::default(), BTreeMap::new());
        assert_eq!(outcome.answers[0], Ok(Answer::Unit));
        assert_eq!(
            outcome.answers[1],
            Err(KvError::QuotaExceeded { quota: QuotaKind::Bytes, usage: 2, needed: 12, limit: 10 })
        );
        assert_eq!(outcome.answers[2], Ok(Answer::Unit));
        assert!(outcome.answers[3].is_err());
        assert_eq!(outcome.plugin, (2, 10));
        assert!(!outcome.changes.contains_key(&("default".to_string(), "c".to_string())));
    }
}
