//! Policy problems, each pinned to a file and (where known) a line.

use std::fmt;
use std::path::PathBuf;

/// One problem with one policy file. The whole file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The policy file (or directory) at fault.
    pub file: PathBuf,
    /// 1-based line of the offending value, when it can be located.
    pub line: Option<usize>,
    /// What is wrong, written for the person who maintains the file.
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// 1-based line number of a byte offset in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}
