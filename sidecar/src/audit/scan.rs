//! A one-pass check that bytes are the canonical encoding of a valid
//! entry, without building a JSON value: what `verify` runs on every
//! entry. [`super::entry::Entry::decode`] (parse, check, re-encode,
//! compare) defines the same set of accepted bytes and is ten times
//! slower; a property test holds the two to the same verdict.
//!
//! Canonical entries have their members in one fixed order (keys sorted),
//! so the scan walks a template and checks each value's canonical form
//! in place: no whitespace, only the escapes canonical JSON writes,
//! integers without leading zeros or signs on zero, keys of nested
//! objects strictly increasing, nesting at most [`MAX_DEPTH`].

use super::canonical::MAX_DEPTH;
use super::entry::{EntryError, INLINE_MAX, MAX_ACTOR, MAX_ENTRY, MAX_ITEM, MAX_KIND, MAX_PLUGIN, valid_time};
use super::merkle::Hash;

/// What `verify` needs of a valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// `seq`.
    pub seq: u64,
    /// `prev`.
    pub prev: Hash,
}

struct Bad;

fn bad<T>() -> Result<T, Bad> {
    Err(Bad)
}

/// A scanned string: its raw span (escapes included) and its decoded length.
struct Str {
    start: usize,
    end: usize,
    decoded_len: usize,
    escaped: bool,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn lit(&mut self, text: &[u8]) -> Result<(), Bad> {
        if self.b[self.i..].starts_with(text) {
            self.i += text.len();
            Ok(())
        } else {
            bad()
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn string(&mut self) -> Result<Str, Bad> {
        self.lit(b"\"")?;
        let start = self.i;
        // Most strings hold no escape: find the closing quote with SIMD,
        // then check the span in passes the compiler vectorises.
        let quote_or_escape = memchr::memchr2(b'"', b'\\', &self.b[start..]).ok_or(Bad)?;
        let span = &self.b[start..start + quote_or_escape];
        if self.b[start + quote_or_escape] == b'"' {
            // One vectorised pass: a control byte is refused, and only text
            // beyond ASCII needs the UTF-8 check.
            let (control, beyond_ascii) =
                span.iter().fold((false, false), |(control, high), &c| (control | (c < 0x20), high | (c >= 0x80)));
            if control || (beyond_ascii && std::str::from_utf8(span).is_err()) {
                return bad();
            }
            self.i = start + quote_or_escape + 1;
            return Ok(Str { start, end: start + quote_or_escape, decoded_len: span.len(), escaped: false });
        }
        let mut decoded_len = 0;
        let mut escaped = false;
        loop {
            // Plain bytes in one sweep: each counts as itself.
            let plain = self.b[self.i..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let plain = plain.ok_or(Bad)?;
            self.i += plain;
            decoded_len += plain;
            let c = self.b[self.i];
            match c {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r') => self.i += 2,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6).ok_or(Bad)?;
                            let lower = |d: u8| d.is_ascii_digit() || (b'a'..=b'f').contains(&d);
                            if hex[0] != b'0' || hex[1] != b'0' || !hex[2..].iter().all(|d| lower(*d)) {
                                return bad();
                            }
                            let v = u8::from_str_radix(std::str::from_utf8(&hex[2..]).map_err(|_| Bad)?, 16)
                                .map_err(|_| Bad)?;
                            if v >= 0x20 || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return bad();
                            }
                            self.i += 6;
                        }
                        _ => return bad(),
                    }
                }
                0..0x20 => return bad(),
                _ => self.i += 1,
            }
            decoded_len += 1;
        }
        let end = self.i;
        self.i += 1;
        // Escapes are ASCII, so the raw span is UTF-8 iff the text is; each
        // escape decodes to one byte, every other byte to itself.
        std::str::from_utf8(&self.b[start..end]).map_err(|_| Bad)?;
        Ok(Str { start, end, decoded_len, escaped })
    }

    /// The decoded bytes of a string (allocates only when escaped).
    fn decoded(&self, s: &Str) -> std::borrow::Cow<'a, [u8]> {
        let raw = &self.b[s.start..s.end];
        if !s.escaped {
            return raw.into();
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' {
                let (byte, len) = match raw[i + 1] {
                    b'b' => (0x08, 2),
                    b't' => (b'\t', 2),
                    b'n' => (b'\n', 2),
                    b'f' => (0x0c, 2),
                    b'r' => (b'\r', 2),
                    b'u' => (
                        u8::from_str_radix(std::str::from_utf8(&raw[i + 4..i + 6]).unwrap_or("zz"), 16).unwrap_or(0),
                        6,
                    ),
                    other => (other, 2),
                };
                out.push(byte);
                i += len;
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        out.into()
    }

    /// An integer in canonical form within i64/u64; returns it as u64 when
    /// it is non-negative.
    fn integer(&mut self) -> Result<Option<u64>, Bad> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let digits = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let text = &self.b[digits..self.i];
        if text.is_empty() || (text[0] == b'0' && (text.len() > 1 || negative)) {
            return bad();
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return bad();
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| Bad)?;
        if negative {
            text.parse::<i64>().map_err(|_| Bad)?;
            Ok(None)
        } else {
            text.parse::<u64>().map(Some).map_err(|_| Bad)
        }
    }

    /// Any canonical value at `depth`.
    fn value(&mut self, depth: usize) -> Result<(), Bad> {
        if depth > MAX_DEPTH {
            return bad();
        }
        match self.peek() {
            Some(b'n') => self.lit(b"null"),
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.integer().map(drop),
            Some(b'[') => {
                self.i += 1;
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return bad(),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                let mut last: Option<std::borrow::Cow<'a, [u8]>> = None;
                loop {
                    let key = self.string()?;
                    let key = self.decoded(&key);
                    if last.as_ref().is_some_and(|l| *l >= key) {
                        return bad();
                    }
                    last = Some(key);
                    self.lit(b":")?;
                    self.value(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return bad(),
                    }
                }
            }
            _ => bad(),
        }
    }

    /// A SHA-256 hash: a string of exactly 64 lowercase hex digits (no
    /// escape can be one, so none is looked for).
    fn hash(&mut self) -> Result<Hash, Bad> {
        let Some([b'"', hex @ .., b'"']) = self.b.get(self.i..self.i + 66) else { return bad() };
        // Branch-free: each digit's value, or 0x10 for anything else.
        const NIBBLE: [u8; 256] = {
            let mut table = [0x10u8; 256];
            let mut d = 0;
            while d < 16 {
                table[b"0123456789abcdef"[d] as usize] = d as u8;
                d += 1;
            }
            table
        };
        let mut out = [0u8; 32];
        let mut invalid = 0u8;
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let (high, low) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
            invalid |= high | low;
            *byte = (high << 4) | (low & 0x0f);
        }
        if invalid & 0x10 != 0 {
            return bad();
        }
        self.i += 66;
        Ok(out)
    }

    /// `null`, `{"sha256":…,"size":…}` or `{"value":…}` at depth 2.
    fn recorded(&mut self) -> Result<(), Bad> {
        if self.peek() == Some(b'n') {
            return self.lit(b"null");
        }
        if self.lit(b"{\"sha256\":").is_ok() {
            self.hash()?;
            self.lit(b",\"size\":")?;
            if self.integer()?.is_none_or(|size| size <= INLINE_MAX as u64) {
                return bad();
            }
        } else {
            self.lit(b"{\"value\":")?;
            let start = self.i;
            self.value(3)?;
            if self.i - start > INLINE_MAX {
                return bad();
            }
        }
        self.lit(b"}")
    }

    fn text(&mut self, max: usize, min: usize) -> Result<Str, Bad> {
        let s = self.string()?;
        if s.decoded_len < min || s.decoded_len > max {
            return bad();
        }
        Ok(s)
    }

    fn entry(&mut self) -> Result<Scanned, Bad> {
        self.lit(b"{\"actor\":")?;
        self.text(MAX_ACTOR, 1)?;
        self.lit(b",\"change\":{\"after\":")?;
        self.recorded()?;
        self.lit(b",\"before\":")?;
        self.recorded()?;
        self.lit(b",\"item\":")?;
        self.text(MAX_ITEM, 0)?;
        self.lit(b",\"kind\":")?;
        let kind = self.text(MAX_KIND, 1)?;
        let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c);
        if !self.b[kind.start..kind.end].iter().all(ok) {
            return bad();
        }
        self.lit(b"},\"plugin\":")?;
        if self.lit(b"null").is_err() {
            self.text(MAX_PLUGIN, 1)?;
        }
        self.lit(b",\"prev\":")?;
        let prev = self.hash()?;
        self.lit(b",\"seq\":")?;
        let seq = self.integer()?.ok_or(Bad)?;
        self.lit(b",\"time\":")?;
        let time = self.string()?;
        let time = std::str::from_utf8(&self.b[time.start..time.end]).map_err(|_| Bad)?;
        if !valid_time(time) {
            return bad();
        }
        self.lit(b",\"v\":1}")?;
        if self.i != self.b.len() {
            return bad();
        }
        Ok(Scanned { seq, prev })
    }
}

/// Checks that `bytes` are the canonical encoding of a valid entry and
/// returns its `seq` and `prev`. Accepts exactly what
/// [`super::entry::Entry::decode`] accepts.
pub fn scan(bytes: &[u8]) -> Result<Scanned, EntryError> {
    if bytes.len() > MAX_ENTRY {
        return Err(EntryError::TooLong(bytes.len()));
    }
    Scanner { b: bytes, i: 0 }
        .entry()
        .map_err(|Bad| EntryError::Malformed("not the canonical encoding of an entry".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::{Change, Entry, NewEntry};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            "[a-z\"\\\\\u{1}\n\u{7f}é]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\\u{2}é]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn entry_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u64>(),
            "[a-z:\n\"\\\\]{1,8}",
            proptest::option::of("[a-z-]{1,8}"),
            "[a-z.]{1,8}",
            "[a-z.\u{1}]{0,8}",
            proptest::option::of(json_value()),
            proptest::option::of(json_value()),
            any::<[u8; 32]>(),
        )
            .prop_map(|(seq, actor, plugin, kind, item, before, after, prev)| {
                let new = NewEntry { actor, plugin, change: Change { kind, item, before, after } };
                Entry::record(seq, "2026-12-02T03:16:18.5Z".into(), prev, &new).unwrap().encode().unwrap()
            })
    }

    proptest! {
        /// The scan and the full decode agree on valid entries and on the
        /// same entries with one byte changed, inserted or removed.
        #[test]
        fn scan_agrees_with_decode(bytes in entry_bytes(), at in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0..3u8) {
            let entry = Entry::decode(&bytes).unwrap();
            prop_assert_eq!(scan(&bytes).unwrap(), Scanned { seq: entry.seq, prev: entry.prev });
            let mut mutated = bytes.clone();
            let i = at.index(mutated.len());
            match how {
                0 => mutated[i] = byte,
                1 => mutated.insert(i, byte),
                _ => { mutated.remove(i); }
            }
            let full = Entry::decode(&mutated).map(|e| Scanned { seq: e.seq, prev: e.prev });
            prop_assert_eq!(scan(&mutated).ok(), full.ok(), "{:?}", String::from_utf8_lossy(&mutated));
        }
    }

    #[test]
    fn non_canonical_forms_are_refused() {
        let e = Entry::record(
            1,
            "2026-12-02T03:16:18Z".into(),
            [1; 32],
            &NewEntry {
                actor: "a".into(),
                plugin: None,
                change: Change {
                    kind: "k".into(),
                    item: String::new(),
                    before: Some(json!({"b": 1, "a": [true, "x"]})),
                    after: None,
                },
            },
        )
        .unwrap();
        let good = String::from_utf8(e.encode().unwrap()).unwrap();
        assert!(scan(good.as_bytes()).is_ok());
        for bad in [
            good.replace("{\"a\":", "{\"a\" :"),
            good.replace("\"a\":[true,\"x\"],\"b\":1", "\"b\":1,\"a\":[true,\"x\"]"),
            good.replace("\"b\":1", "\"b\":1.0"),
            good.replace("\"b\":1", "\"b\":01"),
            good.replace("\"b\":1", "\"b\":-0"),
            good.replace("\"x\"", "\"\\u0078\""),
            good.replace("\"x\"", "\"\\/\""),
            good.replace("\"b\":1", "\"a\":1"),
            format!("{good} "),
        ] {
            assert!(scan(bad.as_bytes()).is_err(), "{bad}");
            assert!(Entry::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
