//! C2SP tlog-checkpoint: the note text `origin\nsize\nbase64(root)\n`
//! (optional extension lines after it), signed as a signed-note.
//!
//! The origin names the log (e.g. `gatehouse.example/audit`); a verifier
//! pins it so a checkpoint of another log is never taken for this one's.
//!
//! One extension line of Gatehouse's own, `gatehouse-grants <64 hex>`:
//! the digest of the grants in force the batch left (see
//! [`super::store::grants_digest`]). They are kept beside the tree, not in
//! it, and the sidecar compares the next load with them: signing their
//! digest means an edit made to them while the sidecar is stopped is
//! found at the next append instead of hiding a change from the log.
//! Standard verifiers skip extension lines.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::merkle::Hash;
use super::note::{self, NoteError, NoteSigner, NoteVerifier};

/// The signed statement "the log `origin` has `size` entries and root `root`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name.
    pub origin: String,
    /// Entries in the tree.
    pub size: u64,
    /// The RFC 6962 root of those entries.
    pub root: Hash,
    /// The digest of the grants in force after the batch (absent in
    /// checkpoints signed before the line existed).
    pub grants: Option<Hash>,
}

/// The extension line's name.
const GRANTS_LINE: &str = "gatehouse-grants ";

/// A checkpoint that cannot be read or trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note around it.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The text is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
}

impl Checkpoint {
    /// The note text.
    pub fn to_text(&self) -> String {
        let grants = self.grants.map(|d| format!("{GRANTS_LINE}{}\n", hex::encode(d))).unwrap_or_default();
        format!("{}\n{}\n{}\n{grants}", self.origin, self.size, B64.encode(self.root))
    }

    /// Reads a note text. Extension lines other than the grants digest are
    /// accepted and ignored.
    pub fn from_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = text.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(CheckpointError::Malformed("fewer than three lines"));
        };
        if origin.is_empty() {
            return Err(CheckpointError::Malformed("empty origin"));
        }
        let canonical_size =
            !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) && (size == "0" || !size.starts_with('0'));
        let size = size
            .parse()
            .ok()
            .filter(|_| canonical_size)
            .ok_or(CheckpointError::Malformed("the size is not a decimal number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Malformed("the root is not base64 of 32 bytes"))?;
        let mut grants = None;
        for line in lines.filter_map(|l| l.strip_prefix(GRANTS_LINE)) {
            let digest: Hash = hex::decode(line)
                .ok()
                .and_then(|d| d.try_into().ok())
                .filter(|_| grants.is_none())
                .ok_or(CheckpointError::Malformed("the grants digest is not one line of 64 hex digits"))?;
            grants = Some(digest);
        }
        Ok(Checkpoint { origin: origin.to_string(), size, root, grants })
    }

    /// Signs it with every key: the signed note.
    pub fn sign(&self, signers: &[&NoteSigner]) -> Result<String, CheckpointError> {
        Ok(note::sign(&self.to_text(), signers)?)
    }

    /// Opens a signed checkpoint: signed by a trusted key, well formed.
    pub fn open(signed: &str, trusted: &[NoteVerifier]) -> Result<Checkpoint, CheckpointError> {
        let (text, _) = note::open(signed, trusted)?;
        Checkpoint::from_text(&text)
    }

    /// Reads a signed checkpoint without checking signatures (to say which
    /// checkpoint a bad signature is on).
    pub fn peek(signed: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::from_text(&note::parse(signed)?.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_is_strict() {
        let cp = Checkpoint { origin: "gatehouse.example/audit".into(), size: 12, root: [5; 32], grants: None };
        let text = cp.to_text();
        assert_eq!(text, format!("gatehouse.example/audit\n12\n{}\n", B64.encode([5u8; 32])));
        assert_eq!(Checkpoint::from_text(&text).unwrap(), cp);
        assert_eq!(Checkpoint::from_text(&format!("{text}ext line\n")).unwrap(), cp);
        for bad in ["o\n012\nAAAA\n", "o\n-1\nAAAA\n", "\n1\nBQUF\n", "o\n1\nnot base64\n", "o\n1\n"] {
            assert!(Checkpoint::from_text(bad).is_err(), "{bad:?}");
        }
        let with_grants = Checkpoint { grants: Some([0xab; 32]), ..cp.clone() };
        let text = with_grants.to_text();
        assert!(text.ends_with(&format!("\ngatehouse-grants {}\n", "ab".repeat(32))), "{text}");
        assert_eq!(Checkpoint::from_text(&text).unwrap(), with_grants);
        let twice = format!("{text}gatehouse-grants {}\n", "ab".repeat(32));
        for bad in [twice, text.replace("abab\n", "ab\n"), text.replace("gatehouse-grants ab", "gatehouse-grants zz")] {
            assert!(Checkpoint::from_text(&bad).is_err(), "{bad:?}");
        }
        let key = NoteSigner::from_seed("gatehouse.example/audit", [4; 32]).unwrap();
        let signed = cp.sign(&[&key]).unwrap();
        assert_eq!(Checkpoint::open(&signed, &[key.verifier()]).unwrap(), cp);
        assert_eq!(Checkpoint::peek(&signed).unwrap(), cp);
    }
}
