//! What a plugin says about itself (`info()`) is guest text that ends up on
//! every log line and in the API, so it is checked once, at load, instead
//! of being escaped everywhere it is shown.

use crate::PluginInfo;
use crate::guest_text::{self, escaped};

/// Longest `name` and `version`.
pub const MAX_NAME: usize = 64;
/// Longest `description`, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;

/// Refuses an `info()` answer that could not be printed as it is:
/// `name` and `version` must be 1-64 of ASCII letters, digits and
/// `.-_+~`; the description at most 1 KiB with no control characters.
pub(super) fn validate(info: &PluginInfo) -> Result<(), String> {
    for (field, value) in [("name", &info.name), ("version", &info.version)] {
        let valid = !value.is_empty()
            && value.len() <= MAX_NAME
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_+~".contains(&b));
        if !valid {
            return Err(format!(
                "info() returned an invalid {field} \"{}\": use 1 to {MAX_NAME} ASCII letters, digits or `.-_+~`",
                escaped(value, guest_text::SHORT)
            ));
        }
    }
    if info.description.len() > MAX_DESCRIPTION || !guest_text::is_plain(&info.description, MAX_DESCRIPTION) {
        return Err(format!(
            "info() returned an invalid description \"{}\": at most {MAX_DESCRIPTION} bytes, no control characters",
            escaped(&info.description, guest_text::SHORT)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: &str, description: &str) -> PluginInfo {
        PluginInfo { name: name.into(), version: version.into(), description: description.into() }
    }

    #[test]
    fn accepts_ordinary_answers() {
        assert!(validate(&info("doc-enricher", "1.2.3-beta.1+build.5", "Adds tags. ünïcode is fine")).is_ok());
    }

    #[test]
    fn refuses_answers_that_could_forge_or_flood_a_log() {
        let forged = "1.0\nINFO plugin loaded plugin=admin";
        let cases = [
            info("x", forged, ""),
            info("x", &"9".repeat(1 << 20), ""),
            info("", "1.0", ""),
            info("a b", "1.0", ""),
            info("x", "1.0", "line\nbreak"),
            info("x", "1.0", "\u{1b}[31mred"),
            info("x", "1.0", &"d".repeat(MAX_DESCRIPTION + 1)),
        ];
        for case in cases {
            let error = validate(&case).unwrap_err();
            assert!(!error.contains('\n') && !error.contains('\u{1b}'), "{error}");
            assert!(error.len() < 400, "{}", error.len());
        }
    }
}
