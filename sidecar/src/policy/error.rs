//! Policy problems, each pinned to a file and (where known) a line.

use std::fmt;
use std::path::PathBuf;

use crate::guest_text::{LINE, MESSAGE, escaped};

/// One problem with one policy file. The whole file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The policy file (or directory) at fault.
    pub file: PathBuf,
    /// 1-based line of the offending value, when it can be located.
    pub line: Option<usize>,
    /// What is wrong, written for the person who maintains the file.
    pub reason: String,
    /// The plugin the file names, when it got far enough to name a valid
    /// one: a refusal then belongs to that plugin (served by an earlier
    /// version, or answered `unavailable`), not to an anonymous file.
    pub plugin: Option<String>,
}

/// File names and TOML keys are written by whoever can add a policy file,
/// so both are escaped: a problem stays one line in the log and in
/// `policy check` output, whatever the file is called or contains.
impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.to_string_lossy();
        let file = escaped(&file, LINE);
        let reason = escaped(&self.reason, MESSAGE);
        match self.line {
            Some(line) => write!(f, "{file}:{line}: {reason}"),
            None => write!(f, "{file}: {reason}"),
        }
    }
}

/// A path as it may appear in a log line or on a terminal.
pub fn shown(path: &std::path::Path) -> String {
    crate::guest_text::escape(&path.to_string_lossy(), LINE)
}

/// 1-based line number of a byte offset in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}
