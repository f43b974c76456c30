//! Audit entries and their canonical encoding: the bytes that are hashed
//! into the chain and the tree, and exported one per line.
//!
//! An entry is one canonical-JSON object (see [`super::canonical`]):
//!
//! ```text
//! {"actor":"admin:ops","change":{"after":{"value":["https://a.example"]},"before":null,
//!  "item":"http.allow","kind":"changed"},"plugin":"doc-enricher","prev":"<64 hex>",
//!  "seq":7,"time":"2026-12-02T03:16:18.123456Z","v":1}
//! ```
//! (one line; wrapped here). `before`/`after` are `null` (absent), `{"value": V}`,
//! or, when the canonical form of V is longer than [`INLINE_MAX`] bytes,
//! `{"sha256": "<hex of SHA-256(canonical V)>", "size": <its length>}`, so
//! every entry stays far below [`MAX_ENTRY`] whatever a policy holds.
//! `prev` is the RFC 6962 leaf hash of entry `seq - 1`, all zeros for
//! entry 0. Why JSON and not a binary form: an auditor reimplements it
//! with Python's standard library in a few lines, and the exported log
//! is readable as it is.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::canonical::{self, CanonicalError};
use super::merkle::Hash;

/// The encoding's version, the `v` field.
pub const VERSION: u64 = 1;
/// Longest canonical before/after value kept inline; longer ones are
/// recorded as their SHA-256 and size.
pub const INLINE_MAX: usize = 16 * 1024;
/// Longest encoded entry. The field limits keep every entry well below it
/// (two inline values plus every other field escaped at worst is ~45 KiB);
/// it is checked again on encode and before a decoder reads anything.
pub const MAX_ENTRY: usize = 64 * 1024;
/// Longest actor name, in bytes.
pub const MAX_ACTOR: usize = 256;
/// Longest plugin name, in bytes.
pub const MAX_PLUGIN: usize = 128;
/// Longest change kind (`a-z 0-9 . _ -`).
pub const MAX_KIND: usize = 64;
/// Longest change item (which grant changed, e.g. `http.allow`), in bytes.
pub const MAX_ITEM: usize = 1024;

/// A change as the caller describes it, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened, e.g. `added`, `removed`, `changed`, `approved`.
    pub kind: String,
    /// What it happened to, e.g. `http.allow` or `kv.max_bytes`.
    pub item: String,
    /// The value before (absent for an addition).
    pub before: Option<Value>,
    /// The value after (absent for a removal).
    pub after: Option<Value>,
}

/// What a caller appends: the log adds the sequence, time and chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    /// Who made the change: an admin token's name, or a policy file and
    /// its content hash.
    pub actor: String,
    /// The plugin whose grants changed, if one.
    pub plugin: Option<String>,
    /// The change.
    pub change: Change,
}

/// A before/after value as recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// The value itself (canonical form at most [`INLINE_MAX`] bytes).
    Value(Value),
    /// A longer value, by the SHA-256 and length of its canonical form.
    Digest {
        /// SHA-256 of the canonical form.
        sha256: Hash,
        /// Length of the canonical form.
        size: u64,
    },
}

impl Recorded {
    /// Records `value`: inline, or by hash when long.
    pub fn of(value: &Value) -> Result<Recorded, EntryError> {
        let bytes = canonical::to_vec(value)?;
        Ok(if bytes.len() > INLINE_MAX {
            Recorded::Digest { sha256: Sha256::digest(&bytes).into(), size: bytes.len() as u64 }
        } else {
            Recorded::Value(value.clone())
        })
    }

    fn to_json(&self) -> Value {
        match self {
            Recorded::Value(v) => json!({ "value": v }),
            Recorded::Digest { sha256, size } => json!({ "sha256": hex::encode(sha256), "size": size }),
        }
    }
}

/// A change as recorded in an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedChange {
    /// See [`Change::kind`].
    pub kind: String,
    /// See [`Change::item`].
    pub item: String,
    /// See [`Change::before`].
    pub before: Option<Recorded>,
    /// See [`Change::after`].
    pub after: Option<Recorded>,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its position: 0 for the first entry, and its leaf index in the tree.
    pub seq: u64,
    /// When it was appended, RFC 3339 in UTC (`…Z`).
    pub time: String,
    /// See [`NewEntry::actor`].
    pub actor: String,
    /// See [`NewEntry::plugin`].
    pub plugin: Option<String>,
    /// What changed.
    pub change: RecordedChange,
    /// The RFC 6962 leaf hash of entry `seq - 1` (zeros for entry 0).
    pub prev: Hash,
}

/// An entry that cannot be recorded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A value has no canonical form.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// A field breaks its rule (the message names it).
    #[error("{0}")]
    Field(String),
    /// The bytes are not an entry.
    #[error("not an entry: {0}")]
    Malformed(String),
    /// The bytes are an entry but not in its canonical form.
    #[error("not in canonical form")]
    NotCanonical,
    /// Longer than [`MAX_ENTRY`].
    #[error("{0} bytes, more than the {MAX_ENTRY} an entry may have")]
    TooLong(usize),
}

fn field(msg: String) -> EntryError {
    EntryError::Field(msg)
}

/// Checks the fields a caller controls. Messages quote nothing the
/// caller sent: lengths and rules only.
pub fn check_new(entry: &NewEntry) -> Result<(), EntryError> {
    check_text("actor", &entry.actor, MAX_ACTOR)?;
    if let Some(plugin) = &entry.plugin {
        check_text("plugin", plugin, MAX_PLUGIN)?;
    }
    check_kind(&entry.change.kind)?;
    if entry.change.item.len() > MAX_ITEM {
        return Err(field(format!("item: {} bytes, at most {MAX_ITEM}", entry.change.item.len())));
    }
    Ok(())
}

fn check_text(name: &str, text: &str, max: usize) -> Result<(), EntryError> {
    if text.is_empty() || text.len() > max {
        return Err(field(format!("{name}: {} bytes, must be 1 to {max}", text.len())));
    }
    Ok(())
}

fn check_kind(kind: &str) -> Result<(), EntryError> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_KIND
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(field(format!("kind: must be 1 to {MAX_KIND} of a-z 0-9 . _ -"))) }
}

/// Whether `time` has the one accepted shape, `YYYY-MM-DDTHH:MM:SS[.f]Z`
/// (1 to 9 fraction digits), and is a real UTC time: year from 1970,
/// a day of that month, hour 0–23, minute and second 0–59 (the log never
/// writes a leap second).
pub fn valid_time(time: &str) -> bool {
    let b = time.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && (22..=30).contains(&b.len()) && digits(20..b.len() - 1)));
    if !shape {
        return false;
    }
    let num = |r: std::ops::Range<usize>| time[r].parse::<u32>().unwrap_or(u32::MAX);
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1970 && (1..=days).contains(&day) && num(11..13) <= 23 && num(14..16) <= 59 && num(17..19) <= 59
}

impl Entry {
    /// Builds entry `seq` from what a caller appends.
    pub fn record(seq: u64, time: String, prev: Hash, new: &NewEntry) -> Result<Entry, EntryError> {
        check_new(new)?;
        let recorded = |v: &Option<Value>| v.as_ref().map(Recorded::of).transpose();
        Ok(Entry {
            seq,
            time,
            actor: new.actor.clone(),
            plugin: new.plugin.clone(),
            change: RecordedChange {
                kind: new.change.kind.clone(),
                item: new.change.item.clone(),
                before: recorded(&new.change.before)?,
                after: recorded(&new.change.after)?,
            },
            prev,
        })
    }

    fn to_json(&self) -> Value {
        let recorded = |r: &Option<Recorded>| r.as_ref().map_or(Value::Null, Recorded::to_json);
        json!({
            "v": VERSION,
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "plugin": self.plugin,
            "change": {
                "kind": self.change.kind,
                "item": self.change.item,
                "before": recorded(&self.change.before),
                "after": recorded(&self.change.after),
            },
            "prev": hex::encode(self.prev),
        })
    }

    /// The canonical bytes: what is hashed, stored and exported.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let bytes = canonical::to_vec(&self.to_json())?;
        if bytes.len() > MAX_ENTRY {
            return Err(EntryError::TooLong(bytes.len()));
        }
        Ok(bytes)
    }

    /// Reads an entry from its bytes, which must be its canonical
    /// encoding exactly (so that one entry has one hash).
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY {
            return Err(EntryError::TooLong(bytes.len()));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let entry = from_json(&value)?;
        if entry.encode()? != bytes {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }
}

fn malformed(msg: &str) -> EntryError {
    EntryError::Malformed(msg.to_string())
}

fn object<'a>(value: &'a Value, what: &str, keys: &[&str]) -> Result<&'a Map<String, Value>, EntryError> {
    let map = value.as_object().ok_or_else(|| malformed(&format!("{what} is not an object")))?;
    if map.len() != keys.len() || !keys.iter().all(|k| map.contains_key(*k)) {
        return Err(malformed(&format!("{what} must have exactly the fields {}", keys.join(", "))));
    }
    Ok(map)
}

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, EntryError> {
    map[key].as_str().ok_or_else(|| malformed(&format!("{key} is not a string")))
}

fn hash(text: &str, what: &str) -> Result<Hash, EntryError> {
    let ok = text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let bytes = hex::decode(text)
        .ok()
        .filter(|_| ok)
        .ok_or_else(|| malformed(&format!("{what} is not 64 lowercase hex digits")))?;
    Ok(bytes.try_into().expect("64 hex digits are 32 bytes"))
}

fn from_json(value: &Value) -> Result<Entry, EntryError> {
    let map = object(value, "the entry", &["v", "seq", "time", "actor", "plugin", "change", "prev"])?;
    if map["v"].as_u64() != Some(VERSION) {
        return Err(malformed("v is not 1"));
    }
    let seq = map["seq"].as_u64().ok_or_else(|| malformed("seq is not an unsigned integer"))?;
    let time = text(map, "time")?;
    if !valid_time(time) {
        return Err(malformed("time is not an RFC 3339 UTC time"));
    }
    let actor = text(map, "actor")?;
    check_text("actor", actor, MAX_ACTOR)?;
    let plugin = match &map["plugin"] {
        Value::Null => None,
        Value::String(p) => {
            check_text("plugin", p, MAX_PLUGIN)?;
            Some(p.clone())
        }
        _ => return Err(malformed("plugin is neither a string nor null")),
    };
    let change = object(&map["change"], "change", &["kind", "item", "before", "after"])?;
    let kind = text(change, "kind")?;
    check_kind(kind)?;
    let item = text(change, "item")?;
    if item.len() > MAX_ITEM {
        return Err(malformed("item is too long"));
    }
    Ok(Entry {
        seq,
        time: time.to_string(),
        actor: actor.to_string(),
        plugin,
        change: RecordedChange {
            kind: kind.to_string(),
            item: item.to_string(),
            before: recorded_from(&change["before"], "before")?,
            after: recorded_from(&change["after"], "after")?,
        },
        prev: hash(text(map, "prev")?, "prev")?,
    })
}

fn recorded_from(value: &Value, what: &str) -> Result<Option<Recorded>, EntryError> {
    let Some(map) = value.as_object() else {
        return if value.is_null() {
            Ok(None)
        } else {
            Err(malformed(&format!("{what} is neither an object nor null")))
        };
    };
    if map.contains_key("value") {
        let map = object(value, what, &["value"])?;
        let inline = canonical::to_vec(&map["value"])?;
        if inline.len() > INLINE_MAX {
            return Err(malformed(&format!("{what} is inline but longer than {INLINE_MAX} bytes")));
        }
        return Ok(Some(Recorded::Value(map["value"].clone())));
    }
    let map = object(value, what, &["sha256", "size"])?;
    let size = map["size"].as_u64().filter(|s| *s > INLINE_MAX as u64);
    let size = size.ok_or_else(|| malformed(&format!("{what}.size is not an integer above {INLINE_MAX}")))?;
    Ok(Some(Recorded::Digest { sha256: hash(text(map, "sha256")?, what)?, size }))
}

/// The current time in the entries' form (microseconds, UTC).
pub fn now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewEntry {
        NewEntry {
            actor: "admin:ops".into(),
            plugin: Some("doc-enricher".into()),
            change: Change {
                kind: "changed".into(),
                item: "http.allow".into(),
                before: Some(json!(["https://a.example"])),
                after: Some(json!(["https://a.example", "https://b.example"])),
            },
        }
    }

    #[test]
    fn encodes_canonically_and_round_trips() {
        let entry = Entry::record(3, "2026-12-02T03:16:18.123456Z".into(), [7; 32], &sample()).unwrap();
        let bytes = entry.encode().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"actor\":\"admin:ops\",\"change\":{{\"after\":{{\"value\":[\"https://a.example\",\"https://b.example\"]}},\
                 \"before\":{{\"value\":[\"https://a.example\"]}},\"item\":\"http.allow\",\"kind\":\"changed\"}},\
                 \"plugin\":\"doc-enricher\",\"prev\":\"{}\",\"seq\":3,\"time\":\"2026-12-02T03:16:18.123456Z\",\"v\":1}}",
                "07".repeat(32)
            )
        );
        assert_eq!(Entry::decode(&bytes).unwrap(), entry);
        // The same entry with whitespace, or keys in another order, is refused.
        let spaced = text.replacen(",", ", ", 1);
        assert_eq!(Entry::decode(spaced.as_bytes()), Err(EntryError::NotCanonical));
        let reordered = serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
        if reordered != bytes {
            assert_eq!(Entry::decode(&reordered), Err(EntryError::NotCanonical));
        }
    }

    #[test]
    fn large_values_are_recorded_by_hash_and_entries_stay_bounded() {
        let mut new = sample();
        let big = json!("x".repeat(INLINE_MAX));
        new.change.after = Some(big.clone());
        new.change.before = Some(json!("\u{1}".repeat(INLINE_MAX / 6 - 2)));
        new.actor = "\u{1}".repeat(MAX_ACTOR);
        new.change.item = "\u{1}".repeat(MAX_ITEM);
        let entry = Entry::record(0, now(), [0; 32], &new).unwrap();
        let canonical = canonical::to_vec(&big).unwrap();
        assert_eq!(
            entry.change.after,
            Some(Recorded::Digest { sha256: Sha256::digest(&canonical).into(), size: canonical.len() as u64 })
        );
        assert!(matches!(entry.change.before, Some(Recorded::Value(_))));
        let bytes = entry.encode().unwrap();
        assert!(bytes.len() < MAX_ENTRY, "{}", bytes.len());
        assert_eq!(Entry::decode(&bytes).unwrap(), entry);
    }

    #[test]
    fn fields_are_checked() {
        let mut bad = sample();
        bad.change.kind = "Changed!".into();
        assert!(check_new(&bad).is_err());
        let mut bad = sample();
        bad.actor = String::new();
        assert!(check_new(&bad).is_err());
        let mut bad = sample();
        bad.plugin = Some("p".repeat(MAX_PLUGIN + 1));
        assert!(check_new(&bad).is_err());
        let mut bad = sample();
        bad.change.before = Some(json!(0.5));
        assert!(Entry::record(0, now(), [0; 32], &bad).is_err());
        for (time, ok) in [
            ("2026-12-02T03:16:18Z", true),
            ("2026-12-02T03:16:18.1Z", true),
            ("2026-12-02T03:16:18.123456789Z", true),
            ("2026-12-02T03:16:18.Z", false),
            ("2026-12-02T03:16:18+00:00", false),
            ("2026-13-02T03:16:18Z", false),
            ("2026-12-02 03:16:18Z", false),
            ("2028-02-29T00:00:00Z", true),
            ("2026-02-29T00:00:00Z", false),
            ("2026-12-02T24:00:00Z", false),
            ("2026-12-02T23:59:60Z", false),
            ("1969-12-31T23:59:59Z", false),
        ] {
            assert_eq!(valid_time(time), ok, "{time}");
        }
        assert!(valid_time(&now()));
        assert!(matches!(Entry::decode(&vec![b' '; MAX_ENTRY + 1]), Err(EntryError::TooLong(_))));
    }
}
