//! The export: JSON Lines an auditor reads with any tool.
//!
//! Each entry is one line holding exactly its canonical bytes (the bytes
//! that are hashed: a verifier hashes the line without its newline).
//! After the last entry a checkpoint covers, one line
//! `{"checkpoint":"<the signed note>"}` (canonical JSON, the note's
//! newlines escaped). A line is a checkpoint line iff it is a JSON object
//! whose only key is `checkpoint`; every other line is an entry.

use std::io::{BufRead, Write};

use serde_json::Value;

use super::canonical;
use super::entry::MAX_ENTRY;
use super::note::MAX_NOTE;

/// Longest line read: an entry, or a note escaped (at most 6 bytes each).
pub const MAX_LINE: usize = if MAX_ENTRY > MAX_NOTE * 6 + 32 { MAX_ENTRY } else { MAX_NOTE * 6 + 32 };

/// Writes entries and checkpoints, each checkpoint after the entries it
/// covers.
pub fn write(out: &mut impl Write, entries: &[Vec<u8>], checkpoints: &[String]) -> std::io::Result<()> {
    let mut pending = checkpoints.iter().peekable();
    let emit = |out: &mut dyn Write, note: &String| -> std::io::Result<()> {
        let mut line = Vec::with_capacity(note.len() + 20);
        line.extend_from_slice(b"{\"checkpoint\":");
        canonical::string(note, &mut line);
        line.extend_from_slice(b"}\n");
        out.write_all(&line)
    };
    for (seq, entry) in entries.iter().enumerate() {
        while let Some(note) = pending.next_if(|n| size_of(n).is_some_and(|s| s <= seq as u64)) {
            emit(out, note)?;
        }
        out.write_all(entry)?;
        out.write_all(b"\n")?;
    }
    for note in pending {
        emit(out, note)?;
    }
    out.flush()
}

fn size_of(note: &str) -> Option<u64> {
    super::checkpoint::Checkpoint::peek(note).ok().map(|c| c.size)
}

/// An export read back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Export {
    /// Entry lines, in order, without their newlines.
    pub entries: Vec<Vec<u8>>,
    /// Signed checkpoint notes, in order.
    pub checkpoints: Vec<String>,
}

/// An export that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading failed.
    #[error("cannot read the export: {0}")]
    Io(#[from] std::io::Error),
    /// A line is longer than [`MAX_LINE`] (counted from 1).
    #[error("line {0} is longer than {MAX_LINE} bytes")]
    LineTooLong(usize),
}

/// Reads an export. Lines are only classified here; `verify` judges them.
pub fn read<R: BufRead>(input: &mut R) -> Result<Export, ExportError> {
    let mut export = Export::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        number += 1;
        let read = <&mut R as std::io::Read>::take(&mut *input, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(export);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_LINE {
            return Err(ExportError::LineTooLong(number));
        }
        match checkpoint_line(&line) {
            Some(note) => export.checkpoints.push(note),
            None => export.entries.push(line.clone()),
        }
    }
}

fn checkpoint_line(line: &[u8]) -> Option<String> {
    if !line.starts_with(b"{\"checkpoint\":") {
        return None;
    }
    let Value::Object(map) = serde_json::from_slice(line).ok()? else { return None };
    match (map.len(), map.get("checkpoint")) {
        (1, Some(Value::String(note))) => Some(note.clone()),
        _ => None,
    }
}
