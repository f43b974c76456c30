//! Canonical JSON: the one byte form of a JSON value that the log hashes,
//! chosen so an auditor's Python reproduces it with
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
//!
//! Rules (docs/audit-log.md, "Canonical JSON"): object keys sorted by
//! their UTF-8 bytes (= Unicode code points), no whitespace, integers in
//! plain decimal, no floats at all (their text forms differ between
//! languages), strings in UTF-8 with only `"`, `\` and U+0000–U+001F
//! escaped: `\b \t \n \f \r` by name, the rest as `\u00xx` (lowercase hex).

use serde_json::Value;

/// A value the canonical form cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Floats have no agreed text form.
    #[error("a number that is not an integer ({0})")]
    Float(String),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Deepest nesting accepted (Python's own recursion limit is far above).
pub const MAX_DEPTH: usize = 64;

/// Appends the canonical form of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    write_at(value, out, 0)
}

/// The canonical form of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write_at(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
    if depth > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_at(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(key, out);
                out.push(b':');
                write_at(&map[key], out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A JSON string, escaped as the module docs say.
pub fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0..0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_compact_and_escaped() {
        let v = json!({"b": [1, -2, true, null], "a": "x\"\\\n\u{1}\u{7f}é\u{2028}", "ä": {}, "Z": 18446744073709551615u64});
        let text = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"Z\":18446744073709551615,\"a\":\"x\\\"\\\\\\n\\u0001\u{7f}é\u{2028}\",\"b\":[1,-2,true,null],\"ä\":{}}"
        );
    }

    #[test]
    fn floats_and_deep_nesting_are_refused() {
        assert!(matches!(to_vec(&json!({"a": 1.5})), Err(CanonicalError::Float(_))));
        let mut v = json!(1);
        for _ in 0..=MAX_DEPTH {
            v = json!([v]);
        }
        assert_eq!(to_vec(&v), Err(CanonicalError::TooDeep));
    }
}
