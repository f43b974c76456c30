//! Verification of a whole log from its entries and checkpoints, as an
//! auditor does without trusting the sidecar: recompute every leaf hash,
//! the chain and the tree, check every checkpoint's signature and root,
//! and, with a checkpoint the auditor kept, that the log extends it.
//!
//! The first problem is reported as a location (an entry, a checkpoint,
//! or the held checkpoint) and a stable code. docs/audit-log.md
//! ("Verification") specifies the same algorithm, and
//! `tools/verify_audit.py` implements it independently; the tests check
//! both name the same location and code for every tampering they try.
//!
//! Which entry is named: among the candidates below, the one at the
//! smallest position, ties broken in this order.
//! 1. The first entry that fails a local check: `malformed` (not the
//!    canonical encoding of an entry), `sequence` (its `seq` is not its
//!    position), or a broken link (its `prev` is not the leaf hash of the
//!    entry before it). A link broken between `i - 1` and `i` blames
//!    entry `i` (`prev-mismatch`) when a checkpoint of size exactly `i`
//!    vouches for entry `i - 1`, or when entry `i`'s own hash also breaks
//!    the next link, or when `i` is 0; otherwise it blames entry `i - 1`
//!    (`hash-mismatch`: its bytes are not what entry `i` recorded).
//! 2. `root-mismatch`: the first checkpoint whose root differs from the
//!    recomputed one; named is the first entry after the checkpoint
//!    before it (the first entry no good checkpoint vouches for).
//! 3. `unsigned`: entries past the last checkpoint's size, named from
//!    that size on.
//! 4. `truncated`: the last checkpoint, or the held one, counts more
//!    entries than there are; named is the first missing one.

use std::fmt;

use super::checkpoint::{Checkpoint, CheckpointError};
use super::entry::EntryError;
use super::merkle::{self, Hash, Tree};
use super::note::{NoteError, NoteVerifier};
use super::scan::{Scanned, scan};

/// Where the first problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The entry with this sequence number (its position in the log).
    Entry(u64),
    /// The checkpoint of this tree size.
    Checkpoint(u64),
    /// The checkpoint at this position (0-based) of the list, when its
    /// size cannot be read.
    CheckpointAt(usize),
    /// The checkpoint the auditor held.
    Held,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Entry(seq) => write!(f, "entry {seq}"),
            Location::Checkpoint(size) => write!(f, "checkpoint {size}"),
            Location::CheckpointAt(index) => write!(f, "checkpoint #{index}"),
            Location::Held => write!(f, "held checkpoint"),
        }
    }
}

/// What is wrong there. [`Problem::code`] is the stable name both
/// verifiers print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Not the canonical encoding of a valid entry.
    Malformed,
    /// Its `seq` is not its position (entries removed, reordered or inserted).
    Sequence,
    /// Its `prev` is not the leaf hash of the entry before it.
    PrevMismatch,
    /// Its bytes are not what the next entry recorded as its hash.
    HashMismatch,
    /// A signed checkpoint's root is not the root of the entries.
    RootMismatch,
    /// Entries no checkpoint covers.
    Unsigned,
    /// Fewer entries than a checkpoint counts.
    Truncated,
    /// A checkpoint that is not a signed note of a checkpoint.
    CheckpointMalformed,
    /// No trusted key signed the checkpoint.
    Untrusted,
    /// A trusted key's signature does not verify.
    BadSignature,
    /// Checkpoints not in increasing size order.
    CheckpointOrder,
    /// A checkpoint of another log (another origin).
    Origin,
    /// The held checkpoint's tree is not a prefix of the log's.
    Fork,
}

impl Problem {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Problem::Malformed => "malformed",
            Problem::Sequence => "sequence",
            Problem::PrevMismatch => "prev-mismatch",
            Problem::HashMismatch => "hash-mismatch",
            Problem::RootMismatch => "root-mismatch",
            Problem::Unsigned => "unsigned",
            Problem::Truncated => "truncated",
            Problem::CheckpointMalformed => "checkpoint-malformed",
            Problem::Untrusted => "untrusted",
            Problem::BadSignature => "bad-signature",
            Problem::CheckpointOrder => "checkpoint-order",
            Problem::Origin => "origin",
            Problem::Fork => "fork",
        }
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {}: {detail}", problem.code())]
pub struct VerifyError {
    /// Where.
    pub at: Location,
    /// What.
    pub problem: Problem,
    /// Why, for a person (quotes nothing from the entries).
    pub detail: String,
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries.
    pub size: u64,
    /// The root of all of them.
    pub root: Hash,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// Names of the trusted keys that signed the latest checkpoint.
    pub signed_by: Vec<String>,
    /// The size of the held checkpoint the log was shown to extend.
    pub held: Option<u64>,
}

fn fail<T>(at: Location, problem: Problem, detail: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError { at, problem, detail: detail.into() })
}

/// Opens one checkpoint note with the trusted keys.
fn open(
    note: &str,
    trusted: &[NoteVerifier],
    at: impl Fn(Option<u64>) -> Location,
) -> Result<(Checkpoint, Vec<String>), VerifyError> {
    let peeked = Checkpoint::peek(note).map_err(|e| VerifyError {
        at: at(None),
        problem: Problem::CheckpointMalformed,
        detail: e.to_string(),
    })?;
    let at = at(Some(peeked.size));
    match super::note::open(note, trusted) {
        Ok((_, by)) => Ok((peeked, by.iter().map(|k| k.name().to_string()).collect())),
        Err(NoteError::Untrusted) => fail(at, Problem::Untrusted, "no trusted key signed it"),
        Err(NoteError::BadSignature(name)) => {
            fail(at, Problem::BadSignature, format!("the signature of {name} does not verify"))
        }
        Err(e) => fail(at, Problem::CheckpointMalformed, CheckpointError::from(e).to_string()),
    }
}

/// The checkpoints a verify was given, opened.
struct Opened {
    /// In order, each signed by a trusted key, one log, sizes increasing.
    checkpoints: Vec<Checkpoint>,
    /// The trusted keys that signed the last one.
    signed_by: Vec<String>,
    /// The auditor's own checkpoint, when given.
    held: Option<Checkpoint>,
}

fn open_checkpoints(
    checkpoints: &[impl AsRef<str>],
    trusted: &[NoteVerifier],
    held: Option<&str>,
) -> Result<Opened, VerifyError> {
    let mut opened: Vec<Checkpoint> = Vec::with_capacity(checkpoints.len());
    let mut signed_by = Vec::new();
    for (index, note) in checkpoints.iter().enumerate() {
        let (cp, by) =
            open(note.as_ref(), trusted, |size| size.map_or(Location::CheckpointAt(index), Location::Checkpoint))?;
        if opened.first().is_some_and(|first| first.origin != cp.origin) {
            return fail(Location::Checkpoint(cp.size), Problem::Origin, "another log's checkpoint");
        }
        if opened.last().is_some_and(|prev| prev.size >= cp.size) {
            return fail(
                Location::Checkpoint(cp.size),
                Problem::CheckpointOrder,
                "not larger than the checkpoint before it",
            );
        }
        signed_by = by;
        opened.push(cp);
    }
    let held = match held {
        Some(note) => {
            let (cp, _) = open(note, trusted, |_| Location::Held)?;
            if opened.first().is_some_and(|first| first.origin != cp.origin) {
                return fail(Location::Held, Problem::Origin, "the held checkpoint is another log's");
            }
            Some(cp)
        }
        None => None,
    };
    Ok(Opened { checkpoints: opened, signed_by, held })
}

/// Verifies a log: `entries` (canonical bytes, in order), `checkpoints`
/// (signed notes, in order), the keys the auditor trusts, and optionally
/// a signed checkpoint the auditor kept from before.
pub fn verify(
    entries: &[impl AsRef<[u8]> + Sync],
    checkpoints: &[impl AsRef<str> + Sync],
    trusted: &[NoteVerifier],
    held: Option<&str>,
) -> Result<Summary, VerifyError> {
    // The signatures are checked beside the entries' hashing.
    let (opened, (leaves, scanned)) = std::thread::scope(|scope| {
        let opening = scope.spawn(|| open_checkpoints(checkpoints, trusted, held));
        let hashed = hash_and_scan(entries);
        (opening.join().expect("opening a note never panics"), hashed)
    });
    let Opened { checkpoints: opened, signed_by, held } = opened?;

    // Entries: the tree, and the first local problem.
    let n = entries.len() as u64;
    let tree = Tree::from_leaves(leaves);
    let leaf = |i: usize| tree.leaf(i as u64).expect("a leaf per entry");
    let root_matches = |cp: &Checkpoint| cp.size <= n && merkle::root(&tree, cp.size).ok() == Some(cp.root);
    let mut candidates: Vec<(u64, Problem, String)> = Vec::new();
    for (i, entry) in scanned.iter().enumerate() {
        let seq = i as u64;
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                candidates.push((seq, Problem::Malformed, e.to_string()));
                break;
            }
        };
        if entry.seq != seq {
            candidates.push((seq, Problem::Sequence, format!("at position {seq} but says seq {}", entry.seq)));
            break;
        }
        let expected = if i == 0 { [0; 32] } else { leaf(i - 1) };
        if entry.prev != expected {
            let vouched = i > 0 && opened.iter().any(|cp| cp.size == seq && root_matches(cp));
            let next_broken =
                scanned.get(i + 1).and_then(|next| next.as_ref().ok()).is_some_and(|next| next.prev != leaf(i));
            if i == 0 || vouched || next_broken {
                candidates.push((
                    seq,
                    Problem::PrevMismatch,
                    "its prev is not the leaf hash of the entry before it".into(),
                ));
            } else {
                candidates.push((
                    seq - 1,
                    Problem::HashMismatch,
                    format!("its leaf hash is not the prev entry {seq} recorded: it was changed"),
                ));
            }
            break;
        }
    }
    let mut before = 0;
    for cp in opened.iter().filter(|cp| cp.size <= n) {
        if !root_matches(cp) {
            candidates.push((
                before,
                Problem::RootMismatch,
                format!("entries {before}..{} do not have the root of the signed checkpoint {}", cp.size - 1, cp.size),
            ));
            break;
        }
        before = cp.size;
    }
    match opened.last() {
        None if n > 0 => candidates.push((0, Problem::Unsigned, "no checkpoint covers any entry".into())),
        Some(last) if last.size < n => candidates.push((
            last.size,
            Problem::Unsigned,
            format!("the last checkpoint covers {} entries of {n}", last.size),
        )),
        Some(last) if last.size > n => {
            candidates.push((n, Problem::Truncated, format!("{n} entries, the last checkpoint counts {}", last.size)))
        }
        _ => {}
    }
    if let Some(held) = held.as_ref().filter(|h| h.size > n) {
        candidates.push((n, Problem::Truncated, format!("{n} entries, the held checkpoint counts {}", held.size)));
    }
    // Smallest position first; at a tie the earlier kind (pushed first).
    if let Some((seq, problem, detail)) =
        candidates.into_iter().enumerate().min_by_key(|(order, c)| (c.0, *order)).map(|(_, c)| c)
    {
        return fail(Location::Entry(seq), problem, detail);
    }

    let root = merkle::root(&tree, n).expect("an in-memory tree has every node");
    if let Some(held) = &held {
        // What an auditor without the entries does: a consistency proof
        // from the held tree to the log's.
        let proof = merkle::consistency_proof(&tree, held.size, n).expect("held.size <= n");
        if merkle::verify_consistency(held.size, n, &held.root, &root, &proof).is_err() {
            return fail(
                Location::Held,
                Problem::Fork,
                format!("the log's first {} entries are not the ones the held checkpoint signed", held.size),
            );
        }
    }
    Ok(Summary { size: n, root, checkpoints: opened.len(), signed_by, held: held.map(|h| h.size) })
}

/// Entries per thread below which [`hash_and_scan`] stays on one thread
/// (a thread costs tens of microseconds; an entry about one).
const ENTRIES_PER_THREAD: usize = 4096;

/// Each entry's leaf hash and scan. Both are per entry and independent
/// until the tree, so the entries are split over the machine's cores:
/// with two, verify runs near the speed of hashing alone.
fn hash_and_scan<E: AsRef<[u8]> + Sync>(entries: &[E]) -> (Vec<Hash>, Vec<Result<Scanned, EntryError>>) {
    fn each<E: AsRef<[u8]>>(part: &[E]) -> Vec<(Hash, Result<Scanned, EntryError>)> {
        part.iter().map(|bytes| (merkle::leaf_hash(bytes.as_ref()), scan(bytes.as_ref()))).collect()
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(entries.len() / ENTRIES_PER_THREAD).max(1);
    let chunk = entries.len().div_ceil(threads).max(1);
    let mut parts = entries.chunks(chunk);
    let first = parts.next().unwrap_or_default();
    let done: Vec<Vec<_>> = std::thread::scope(|scope| {
        let others: Vec<_> = parts.map(|part| scope.spawn(move || each(part))).collect();
        let mut done = vec![each(first)];
        done.extend(others.into_iter().map(|other| other.join().expect("a scan never panics")));
        done
    });
    done.into_iter().flatten().unzip()
}
