//! Human-readable sizes and durations for policy and config files.
//!
//! Sizes accept what `bytesize` parses (`"64 MiB"`, `"512 KiB"`, `"1 GB"`)
//! or a bare integer number of bytes; durations accept what `humantime`
//! parses (`"500ms"`, `"2s"`, `"1m 30s"`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Rounded for reading, with the exact count when rounding hides it (so
/// "4 GiB + 1 byte is out of range" never reads "4.0 GiB ... 4 GiB").
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = bytesize::ByteSize(self.0).display().iec().to_string();
        match shown.parse::<bytesize::ByteSize>() {
            Ok(read_back) if read_back.0 == self.0 => f.write_str(&shown),
            _ => write!(f, "{shown} ({} bytes)", self.0),
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse::<bytesize::ByteSize>()
            .map(|size| ByteSize(size.as_u64()))
            .map_err(|_| format!("invalid size `{text}` (write it like \"64 MiB\", \"512 KiB\" or a number of bytes)"))
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64 MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(bytes))
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
                u64::try_from(bytes)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {bytes}: sizes cannot be negative")))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Writes a duration as `humantime` spells it (`"1s"`, `"1m 30s"`), the
/// way policies write it.
pub fn serialize_duration<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&HumanDuration(*duration))
}

/// A span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(text).map(HumanDuration).map_err(|e| {
                    E::custom(format!("invalid duration `{text}`: {e} (write it like \"500ms\" or \"2s\")"))
                })
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        let cases =
            [("64 MiB", 64 << 20), ("512 KiB", 512 << 10), ("1 GB", 1_000_000_000), ("4096", 4096), ("1.5 KiB", 1536)];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn sizes_are_shown_rounded_with_the_exact_count_when_rounding_hides_it() {
        assert_eq!(ByteSize(4 << 30).to_string(), "4.0 GiB");
        assert_eq!(ByteSize((4 << 30) + 1).to_string(), "4.0 GiB (4294967297 bytes)");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
    }

    #[test]
    fn bad_sizes_are_refused_with_the_text() {
        for text in ["", "lots", "64 XB", "-1 MiB"] {
            let err = text.parse::<ByteSize>().unwrap_err();
            assert!(err.contains(&format!("`{text}`")), "{err}");
        }
    }
}
