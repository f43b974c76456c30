//! Values as they cross the door: parameters in, rows out.
//!
//! Six kinds travel natively: null, bool, s64, f64, text and blob. Other
//! database types are carried as text in a fixed, documented form:
//! PostgreSQL `numeric` as its exact decimal digits, `date` as
//! `YYYY-MM-DD`, `timestamp` as `YYYY-MM-DD HH:MM:SS[.ffffff]` and
//! `timestamptz` the same in UTC with `+00`, `uuid` in its hyphenated form,
//! `json`/`jsonb` as their text; `int2`/`int4` and `float4` widen to s64
//! and f64. A column of any other type (arrays, intervals, ...) is refused
//! with `invalid-input`, naming the type: cast it in the statement
//! (`tags::text`). SQLite values keep the storage class they have
//! (`NUMERIC` columns hold integers or reals). On PostgreSQL a text
//! parameter is typed `text`: cast it for other types (`$1::uuid`).

use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

use super::error::SqlError;

/// One value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// Text (UTF-8).
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// What the value counts against `max_result_bytes`: its bytes, 8 for
    /// a number, 1 for a null or a bool.
    pub fn size(&self) -> u64 {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 8,
            Value::Text(text) => text.len() as u64,
            Value::Blob(bytes) => bytes.len() as u64,
        }
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The database's name of its type (`INT8`, `TEXT`; SQLite: the
    /// declared type, or `NULL` for an expression).
    pub type_name: String,
}

/// A query's result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// The columns, in order.
    pub columns: Vec<Column>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// The columns of a row.
pub fn columns_of<R: sqlx::Row>(row: &R) -> Vec<Column> {
    row.columns()
        .iter()
        .map(|c| Column { name: c.name().to_string(), type_name: c.type_info().name().to_string() })
        .collect()
}

fn unsupported(type_name: &str, column: usize) -> SqlError {
    SqlError::InvalidInput(format!(
        "column {} is of type {}, which the door does not carry: cast it in the statement (for example to text)",
        column + 1,
        crate::guest_text::escape(type_name, crate::guest_text::SHORT)
    ))
}

fn decode_error(e: impl std::fmt::Display) -> SqlError {
    SqlError::InvalidInput(format!(
        "a value cannot be read: {}",
        crate::guest_text::escape(&e.to_string(), crate::guest_text::SHORT)
    ))
}

/// The values of a PostgreSQL row, by column type (binary format), or
/// `None` once the sizes ([`Value::size`]) of those it builds pass
/// `budget`. A value's size is known before it is made: a binary `numeric`
/// of a few bytes is thousands of digits as text, and a row of them must
/// be refused, not built. Nulls build nothing: the caller counts them
/// with the rest when it counts the whole row.
pub fn postgres_values(row: &PgRow, budget: u64) -> Result<Option<Vec<Value>>, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    let mut size = 0u64;
    for i in 0..row.len() {
        let raw = row.try_get_raw(i).map_err(decode_error)?;
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        let info = raw.type_info();
        let type_name = info.name();
        if raw.format() != PgValueFormat::Binary {
            return Err(unsupported(type_name, i));
        }
        let bytes = raw.as_bytes().map_err(decode_error)?;
        size += pg_value_size(type_name, bytes);
        if size > budget {
            return Ok(None);
        }
        values.push(pg_value(type_name, bytes).ok_or_else(|| unsupported(type_name, i))?);
    }
    Ok(Some(values))
}

/// The size of the value [`pg_value`] makes of `bytes`, without making
/// it: the text length for a `numeric`, otherwise a bound (the binary
/// forms of the other types are at most a few bytes shorter than theirs).
fn pg_value_size(type_name: &str, bytes: &[u8]) -> u64 {
    let len = bytes.len() as u64;
    match type_name {
        "NUMERIC" => numeric_len(bytes).unwrap_or(len),
        "UUID" => 36,
        // Years of up to 7 digits (any i32 of days), ` BC`, `+00`.
        "DATE" | "TIMESTAMP" | "TIMESTAMPTZ" => 40,
        "BOOL" => 1,
        "INT2" | "INT4" | "OID" | "INT8" | "FLOAT4" | "FLOAT8" => 8,
        "JSONB" => len.saturating_sub(1),
        _ => len,
    }
}

/// The length of [`numeric`]'s text for `bytes`, from its header alone.
fn numeric_len(bytes: &[u8]) -> Option<u64> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*bytes.get(2 * i)?, *bytes.get(2 * i + 1)?])) };
    let count = word(0)?;
    let weight = i64::from(word(1)? as i16);
    let scale = u64::from(word(3)?);
    Some(match word(2)? {
        0xC000 => 3,
        0xD000 => 8,
        0xF000 => 9,
        sign => {
            let first = if count == 0 { 0 } else { word(4)? };
            let integer = if weight < 0 { 1 } else { (first.max(1).ilog10() + 1) as u64 + 4 * weight as u64 };
            u64::from(sign == 0x4000) + integer + if scale > 0 { 1 + scale } else { 0 }
        }
    })
}

/// One binary PostgreSQL value of type `type_name`; `None` for a type the
/// door does not carry (or bytes that do not fit the type).
fn pg_value(type_name: &str, bytes: &[u8]) -> Option<Value> {
    let be = |n: usize| -> Option<[u8; 8]> {
        let mut out = [0u8; 8];
        (bytes.len() == n).then(|| out[8 - n..].copy_from_slice(bytes))?;
        Some(out)
    };
    let signed = |n: usize| -> Option<i64> {
        let raw = be(n)?;
        let shift = 64 - 8 * n as u32;
        Some(i64::from_be_bytes(raw) << shift >> shift)
    };
    Some(match type_name {
        "BOOL" => Value::Bool(*bytes.first()? != 0),
        "INT2" => Value::Int(signed(2)?),
        "INT4" | "OID" => Value::Int(signed(4)?),
        "INT8" => Value::Int(signed(8)?),
        "FLOAT4" => Value::Float(f64::from(f32::from_bits(u32::try_from(signed(4)? & 0xffff_ffff).ok()?))),
        "FLOAT8" => Value::Float(f64::from_bits(u64::from_be_bytes(be(8)?))),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "JSON" | "CITEXT" => {
            Value::Text(String::from_utf8(bytes.to_vec()).ok()?)
        }
        "JSONB" => match bytes.split_first()? {
            (1, text) => Value::Text(String::from_utf8(text.to_vec()).ok()?),
            _ => return None,
        },
        "BYTEA" => Value::Blob(bytes.to_vec()),
        "UUID" if bytes.len() == 16 => {
            let hex = hex::encode(bytes);
            Value::Text(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
        }
        "NUMERIC" => Value::Text(numeric(bytes)?),
        "DATE" => Value::Text(date(signed(4)?)?),
        "TIMESTAMP" => Value::Text(timestamp(signed(8)?, "")?),
        "TIMESTAMPTZ" => Value::Text(timestamp(signed(8)?, "+00")?),
        _ => return None,
    })
}

/// PostgreSQL's binary `numeric`: digit count, weight (of the first
/// base-10000 digit), sign, display scale, then the digits.
fn numeric(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*bytes.get(2 * i)?, *bytes.get(2 * i + 1)?])) };
    let count = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let scale = usize::from(word(3)?);
    if bytes.len() != 8 + 2 * count {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..count).map(|i| word(4 + i)).collect::<Option<_>>()?;
    // Any weight PostgreSQL sends (131,072 digits before the point at
    // most) is written: the caller charged the text's length first. A
    // display scale past PostgreSQL's own largest (its `NUMERIC_DSCALE_MAX`)
    // is not one it sends.
    if digits.iter().any(|d| *d > 9999) || scale > 0x3FFF {
        return None;
    }
    let digit =
        |position: i32| -> u16 { usize::try_from(position).ok().and_then(|p| digits.get(p)).copied().unwrap_or(0) };
    use std::fmt::Write as _;
    let mut out = String::with_capacity(usize::try_from(numeric_len(bytes)?).ok()? + 3);
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for w in 0..=weight {
            let d = digit(w);
            let _ = if w == 0 { write!(out, "{d}") } else { write!(out, "{d:04}") };
        }
    }
    if scale > 0 {
        out.push('.');
        let start = out.len();
        let groups = i32::try_from(scale.div_ceil(4)).ok()?;
        for w in weight + 1..=weight + groups {
            let _ = write!(out, "{:04}", digit(w));
        }
        out.truncate(start + scale);
    }
    Some(out)
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (proleptic Gregorian).
/// As PostgreSQL writes it (`DateStyle` ISO): a year before 1 AD as
/// `YYYY-MM-DD BC` (year 0 is 1 BC), a year past 9999 with its digits,
/// and the sentinels `infinity` and `-infinity`.
fn date(days: i64) -> Option<String> {
    match days {
        0x7FFF_FFFF => Some("infinity".into()),
        -0x8000_0000 => Some("-infinity".into()),
        days => {
            let (day, bc) = calendar(days)?;
            Some(format!("{day}{bc}"))
        }
    }
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (proleptic Gregorian), and the
/// ` BC` that follows the whole value for years before 1 AD.
fn calendar(days: i64) -> Option<(String, &'static str)> {
    let (y, m, d) = civil(days.checked_add(10957)?);
    Some(if y > 0 { (format!("{y:04}-{m:02}-{d:02}"), "") } else { (format!("{:04}-{m:02}-{d:02}", 1 - y), " BC") })
}

/// Microseconds since 2000-01-01 00:00 as `YYYY-MM-DD HH:MM:SS[.ffffff]`,
/// then `zone` (`+00` for `timestamptz`, which sqlx reads in UTC), as
/// PostgreSQL writes it (see [`date`]; the sentinels are `i64::MAX`/`MIN`).
fn timestamp(micros: i64, zone: &str) -> Option<String> {
    match micros {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    let (h, m, s, us) = (rest / 3_600_000_000, rest / 60_000_000 % 60, rest / 1_000_000 % 60, rest % 1_000_000);
    let (day, bc) = calendar(days)?;
    // Always six digits of a fraction (the door's documented form, where
    // PostgreSQL drops trailing zeros).
    let fraction = if us == 0 { String::new() } else { format!(".{us:06}") };
    Some(format!("{day} {h:02}:{m:02}:{s:02}{fraction}{zone}{bc}"))
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(count: u16, weight: i16, sign: u16, scale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [count, weight as u16, sign, scale].iter().chain(digits) {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_are_exact_decimal_text() {
        assert_eq!(numeric(&num(2, 0, 0, 2, &[12, 5000])).unwrap(), "12.50");
        assert_eq!(numeric(&num(1, -1, 0x4000, 3, &[500])).unwrap(), "-0.050");
        assert_eq!(numeric(&num(2, 1, 0, 0, &[1, 2])).unwrap(), "10002");
        assert_eq!(numeric(&num(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric(&num(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric(&num(2, 0, 0, 0, &[1])).is_none(), "short");
        assert_eq!(numeric(&num(2, -1, 0, 8, &[1234, 5678])).unwrap(), "0.12345678");
        assert_eq!(numeric(&num(2, 0, 0, 5, &[9999, 9999])).unwrap(), "9999.99990");
        assert!(numeric(&num(1, 0, 0, 0, &[10000])).is_none(), "digit out of range");
        assert_eq!(numeric(&num(0, 0, 0, 0x3FFF, &[])).unwrap().len(), 2 + 0x3FFF, "PostgreSQL's largest scale");
        assert!(numeric(&num(0, 0, 0, 0x4000, &[])).is_none(), "a scale PostgreSQL never sends");
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(date(0).unwrap(), "2000-01-01");
        assert_eq!(date(-1).unwrap(), "1999-12-31");
        assert_eq!(date(9555).unwrap(), "2026-02-28");
        assert_eq!(timestamp(0, "").unwrap(), "2000-01-01 00:00:00");
        assert_eq!(timestamp(-1, "").unwrap(), "1999-12-31 23:59:59.999999");
        assert_eq!(timestamp(86_400_000_000 + 3_723_000_001, "+00").unwrap(), "2000-01-02 01:02:03.000001+00");
        assert_eq!(
            (timestamp(i64::MAX, ""), timestamp(i64::MIN, "+00")),
            (Some("infinity".into()), Some("-infinity".into()))
        );
        assert_eq!((date(0x7FFF_FFFF), date(-0x8000_0000)), (Some("infinity".into()), Some("-infinity".into())));
        // 0001-01-01 is day -730119; the day before is in 1 BC (year 0).
        assert_eq!(date(-730_119).unwrap(), "0001-01-01");
        assert_eq!(date(-730_120).unwrap(), "0001-12-31 BC");
        assert_eq!(timestamp(-730_120 * 86_400_000_000, "+00").unwrap(), "0001-12-31 00:00:00+00 BC");
        assert_eq!(date(2_921_940).unwrap(), "10000-01-01");
        assert!(date(i64::MAX).is_none());
    }

    /// Each day is the day after the one before, by the Gregorian rules
    /// written plainly, from 1970-01-01 back past year 0 and forward past
    /// 2400 (centuries, the 400th years, the ends of eras).
    #[test]
    fn each_day_follows_the_one_before() {
        let leap = |y: i64| y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0);
        let month_days = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let next = |(y, m, d): (i64, u32, u32)| match (d == month_days(y, m), m) {
            (false, _) => (y, m, d + 1),
            (true, 12) => (y + 1, 1, 1),
            (true, _) => (y, m + 1, 1),
        };
        let previous = |(y, m, d): (i64, u32, u32)| match (d, m) {
            (1, 1) => (y - 1, 12, 31),
            (1, _) => (y, m - 1, month_days(y, m - 1)),
            _ => (y, m, d - 1),
        };
        assert_eq!(civil(0), (1970, 1, 1));
        let mut day = civil(0);
        for days in 1..=200_000 {
            day = next(day);
            assert_eq!(civil(days), day, "{days}");
        }
        let mut day = civil(0);
        for days in (-800_000..0).rev() {
            day = previous(day);
            assert_eq!(civil(days), day, "{days}");
        }
    }

    #[test]
    fn binary_values_by_type() {
        assert_eq!(pg_value("INT2", &(-2i16).to_be_bytes()), Some(Value::Int(-2)));
        assert_eq!(pg_value("INT4", &(-70000i32).to_be_bytes()), Some(Value::Int(-70000)));
        assert_eq!(pg_value("INT8", &i64::MIN.to_be_bytes()), Some(Value::Int(i64::MIN)));
        assert_eq!(pg_value("FLOAT4", &1.5f32.to_be_bytes()), Some(Value::Float(1.5)));
        assert_eq!(pg_value("FLOAT8", &(-0.25f64).to_be_bytes()), Some(Value::Float(-0.25)));
        assert_eq!(pg_value("JSONB", b"\x01{}"), Some(Value::Text("{}".into())));
        assert_eq!(pg_value("UUID", &[0x12; 16]), Some(Value::Text("12121212-1212-1212-1212-121212121212".into())));
        assert_eq!(
            (pg_value("BOOL", &[1]), pg_value("BOOL", &[0])),
            (Some(Value::Bool(true)), Some(Value::Bool(false)))
        );
        for text_type in ["TEXT", "VARCHAR", "BPCHAR", "NAME", "CHAR", "JSON", "CITEXT"] {
            assert_eq!(pg_value(text_type, "é".as_bytes()), Some(Value::Text("é".into())), "{text_type}");
        }
        assert_eq!(pg_value("BYTEA", &[0, 0xff]), Some(Value::Blob(vec![0, 0xff])));
        assert_eq!(pg_value("NUMERIC", &num(2, 0, 0, 2, &[12, 5000])), Some(Value::Text("12.50".into())));
        assert_eq!(pg_value("DATE", &(-1i32).to_be_bytes()), Some(Value::Text("1999-12-31".into())));
        let second = 1_000_000i64.to_be_bytes();
        assert_eq!(pg_value("TIMESTAMP", &second), Some(Value::Text("2000-01-01 00:00:01".into())));
        assert_eq!(pg_value("TIMESTAMPTZ", &second), Some(Value::Text("2000-01-01 00:00:01+00".into())));
        assert_eq!(pg_value("INT4", &[0, 1]), None, "wrong width");
        assert_eq!(pg_value("INTERVAL", &[0; 16]), None);
        assert_eq!(pg_value("TEXT", &[0xff]), None, "not UTF-8");
    }

    proptest::proptest! {
        /// The size a value is charged before it is made is never less
        /// than the size of what is made, so a row past the budget is
        /// refused unbuilt; and exactly that size but for dates and
        /// timestamps (a bound), so one within the budget is never refused.
        #[test]
        fn a_value_is_charged_at_least_what_it_becomes(
            weight in -40i16..40,
            negative: bool,
            scale in 0u16..200,
            digits in proptest::collection::vec(0u16..10000, 0..20),
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..17),
            text in "\\PC{0,8}",
        ) {
            // Random bytes are seldom JSONB's (a version byte, then UTF-8).
            let jsonb = [&[1u8][..], text.as_bytes()].concat();
            proptest::prop_assert_eq!(pg_value_size("JSONB", &jsonb), pg_value("JSONB", &jsonb).unwrap().size());
            let sign = if negative { 0x4000 } else { 0 };
            let bytes = num(digits.len() as u16, weight, sign, scale, &digits);
            if let Some(text) = numeric(&bytes) {
                proptest::prop_assert_eq!(numeric_len(&bytes), Some(text.len() as u64));
            }
            for sign in [0xC000, 0xD000, 0xF000] {
                let special = num(0, 0, sign, 0, &[]);
                proptest::prop_assert_eq!(numeric_len(&special), Some(numeric(&special).unwrap().len() as u64));
            }
            for type_name in ["INT2", "INT4", "INT8", "FLOAT4", "FLOAT8", "BOOL", "UUID", "DATE", "TIMESTAMP",
                              "TIMESTAMPTZ", "TEXT", "BYTEA", "JSONB", "JSON", "NAME"] {
                if let Some(value) = pg_value(type_name, &raw) {
                    let charged = pg_value_size(type_name, &raw);
                    if type_name.starts_with("DATE") || type_name.starts_with("TIMESTAMP") {
                        proptest::prop_assert!(charged >= value.size(), "{}", type_name);
                    } else {
                        proptest::prop_assert_eq!(charged, value.size(), "{}", type_name);
                    }
                }
            }
        }
    }
}
