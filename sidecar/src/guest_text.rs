//! Text a guest controls, made safe to print: the one place that escapes and
//! size-bounds URLs, methods, header names, log messages and fields,
//! captured stdio, plugin names and versions, and error messages quoting
//! any of them, before they reach a log line, an error message or a
//! terminal.
//!
//! Why escaping and not just stripping: a log line must show what the guest
//! sent, yet never let it start a new line (`\n`, `\r`, U+2028), recolour
//! or move the terminal cursor (ESC, C1 controls), or reorder what a reader
//! sees (bidirectional overrides). Every such character is written as a
//! visible escape (`\n`, `\u{1b}`, `\u{202e}`), and so is the backslash
//! itself, so an escaped string cannot be mistaken for one the guest wrote
//! with literal backslashes.
//!
//! Why bounding the *output*: escaping can make a string ten times longer
//! (`\u{10ffff}`), so the limit counts escaped bytes. Past it, the rest is
//! replaced by a marker saying how many input bytes were left out.

use std::fmt;

/// For short identifiers: HTTP methods, header names, keys.
pub const SHORT: usize = 128;
/// For URLs and other values quoted in one-line messages.
pub const LINE: usize = 512;
/// For log messages and error messages a guest writes.
pub const MESSAGE: usize = 4096;

/// Displays `text` escaped and cut after `max` escaped bytes. Allocates
/// nothing: use it directly as a `tracing` field (`url = %escaped(..)`),
/// whose value is then only computed when the event is enabled.
pub fn escaped(text: &str, max: usize) -> Escaped<'_> {
    Escaped { text, max, unseen: 0 }
}

/// [`escaped`], rendered into a `String`.
pub fn escape(text: &str, max: usize) -> String {
    escaped(text, max).to_string()
}

/// Lossily decodes guest bytes (invalid UTF-8 becomes U+FFFD), then escapes.
pub fn escape_bytes(bytes: &[u8], max: usize) -> String {
    // Decoding more than can be shown is wasted work: each shown byte
    // needs at least one input byte.
    let shown = &bytes[..bytes.len().min(max.saturating_add(4))];
    let text = String::from_utf8_lossy(shown);
    Escaped { text: &text, max, unseen: bytes.len() - shown.len() }.to_string()
}

/// Whether `text` would be printed unchanged by [`escaped`] (nothing to
/// escape, not too long).
pub fn is_plain(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(needs_escape)
}

/// See [`escaped`].
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a str,
    max: usize,
    /// Input bytes after `text` that were never decoded.
    unseen: usize,
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        let mut buf = [0u8; 16];
        for (at, c) in self.text.char_indices() {
            let piece: &str = if needs_escape(c) {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let _ = match c {
                    '\n' => std::io::Write::write_all(&mut cursor, b"\\n"),
                    '\r' => std::io::Write::write_all(&mut cursor, b"\\r"),
                    '\t' => std::io::Write::write_all(&mut cursor, b"\\t"),
                    '\\' => std::io::Write::write_all(&mut cursor, b"\\\\"),
                    c => std::io::Write::write_fmt(&mut cursor, format_args!("\\u{{{:x}}}", c as u32)),
                };
                let len = cursor.position() as usize;
                std::str::from_utf8(&buf[..len]).unwrap_or("?")
            } else {
                c.encode_utf8(&mut buf)
            };
            if written + piece.len() > self.max {
                return write!(f, "…[{} more bytes]", self.text.len() - at + self.unseen);
            }
            f.write_str(piece)?;
            written += piece.len();
        }
        // Bytes left `unseen` are always told in the loop: decoding never
        // shrinks text, so the `max + 4` bytes `escape_bytes` decodes print
        // past `max`.
        Ok(())
    }
}

/// Quoted, with `"` escaped too: the form for a `key=value` log field, so
/// that guest text with spaces or `=` cannot pass for fields of its own.
impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.to_string().replace('"', "\\\""))
    }
}

/// Characters that could break a line, drive a terminal or hide text:
/// ASCII and C1 controls, the backslash (so escapes stay unambiguous),
/// Unicode line and paragraph separators, bidirectional controls,
/// zero-width characters and the byte-order mark.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{61c}')
        || matches!(c, '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_or_hide_a_line() {
        let cases = [
            ("plain text, ünïcode", "plain text, ünïcode"),
            ("a\nERROR forged", "a\\nERROR forged"),
            ("a\r\nb", "a\\r\\nb"),
            ("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            ("c1 \u{9b}31m", "c1 \\u{9b}31m"),
            ("back\\slash", "back\\\\slash"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("bidi \u{202e}txt.exe", "bidi \\u{202e}txt.exe"),
            ("zw\u{200b}j\u{feff}", "zw\\u{200b}j\\u{feff}"),
            ("arabic letter mark \u{61c}", "arabic letter mark \\u{61c}"),
            ("nul\0", "nul\\u{0}"),
            ("tab\t", "tab\\t"),
        ];
        for (input, expected) in cases {
            assert_eq!(escape(input, 1000), expected, "{input:?}");
            assert_eq!(is_plain(input, 1000), input == expected, "{input:?}");
        }
    }

    #[test]
    fn the_debug_form_is_one_quoted_field() {
        let forged = "GET url=http://ok/ kind=success plugin=\"other\"";
        let field = format!("{:?}", escaped(forged, 1000));
        assert_eq!(field, "\"GET url=http://ok/ kind=success plugin=\\\"other\\\"\"");
    }

    #[test]
    fn output_is_bounded_and_says_what_was_cut() {
        assert_eq!(escape("hello", 5), "hello");
        assert_eq!(escape("hello world", 5), "hello…[6 more bytes]");
        // An escape is never split: it does not fit, so it is cut whole.
        assert_eq!(escape("ab\ncd", 3), "ab…[3 more bytes]");
        // A multi-byte character is never split either.
        assert_eq!(escape("éé", 3), "é…[2 more bytes]");
        // Worst case expansion still respects the bound.
        let hostile = "\u{1b}".repeat(100_000);
        let out = escape(&hostile, LINE);
        assert!(out.len() <= LINE + 32, "{}", out.len());
        assert!(out.ends_with("more bytes]"));
        assert!(!out.contains('\u{1b}'));
    }

    #[test]
    fn bytes_are_decoded_lossily_and_bounded() {
        assert_eq!(escape_bytes(b"ok\xff\n", 100), "ok\u{fffd}\\n");
        let big = vec![b'y'; 1 << 20];
        let out = escape_bytes(&big, 10);
        assert!(out.starts_with("yyyyyyyyyy…["), "{out}");
        assert!(out.len() < 64, "{out}");
        assert!(out.contains(&format!("{} more bytes", (1 << 20) - 10)), "{out}");
    }

    proptest::proptest! {
        #[test]
        fn never_emits_a_line_break_or_control_and_stays_bounded(text in ".{0,300}", max in 0usize..200) {
            let out = escape(&text, max);
            let breaks = out.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}');
            proptest::prop_assert!(!breaks, "{:?}", out);
            proptest::prop_assert!(out.len() <= max + 32);
        }
    }
}
