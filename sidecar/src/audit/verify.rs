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
    let (opened, (tree, scanned)) = std::thread::scope(|scope| {
        let opening = scope.spawn(|| open_checkpoints(checkpoints, trusted, held));
        let hashed = hash_and_scan(entries);
        (opening.join().expect("opening a note never panics"), hashed)
    });
    let Opened { checkpoints: opened, signed_by, held } = opened?;

    // Entries: the tree, and the first local problem.
    let n = entries.len() as u64;
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

/// Tree levels each thread builds above its part's leaves. Parts start at
/// multiples of `2^LOCAL_LEVELS` entries, so every node a part has up to
/// that level is the whole tree's node.
const LOCAL_LEVELS: usize = 12;

/// Each entry's scan, and the tree of their leaf hashes. Both are per
/// entry (and per aligned subtree) until the tree's top, so the entries
/// are split over the machine's cores, each part writing its leaf hashes
/// and lower levels straight into the tree's vectors and keeping its
/// scans (nothing is copied after the threads: on this VM, gathering
/// 100,000 entries' results cost a sixth of a verify).
fn hash_and_scan<E: AsRef<[u8]> + Sync>(entries: &[E]) -> (Tree, Scans) {
    fn each<E: AsRef<[u8]>>(part: &[E], mut levels: Vec<&mut [Hash]>) -> Vec<Result<Scanned, EntryError>> {
        let mut scanned = Vec::with_capacity(part.len());
        for (bytes, leaf) in part.iter().zip(levels[0].iter_mut()) {
            *leaf = merkle::leaf_hash(bytes.as_ref());
            scanned.push(scan(bytes.as_ref()));
        }
        for level in 1..levels.len() {
            let (below, above) = levels.split_at_mut(level);
            for (node, pair) in above[0].iter_mut().zip(below[level - 1].chunks_exact(2)) {
                *node = merkle::node_hash(&pair[0], &pair[1]);
            }
        }
        scanned
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(entries.len() / ENTRIES_PER_THREAD).max(1);
    let chunk = entries.len().div_ceil(threads).next_multiple_of(1 << LOCAL_LEVELS).max(1 << LOCAL_LEVELS);
    let mut levels: Vec<Vec<Hash>> = (0..=LOCAL_LEVELS).map(|l| vec![[0; 32]; entries.len() >> l]).collect();
    // Each part's share of every level: parts start at multiples of
    // 2^LOCAL_LEVELS, so at level l a part of n entries has n >> l nodes.
    let mut shares: Vec<Vec<&mut [Hash]>> = entries.chunks(chunk).map(|_| Vec::new()).collect();
    for (l, level) in levels.iter_mut().enumerate() {
        let mut rest = level.as_mut_slice();
        for (share, part) in shares.iter_mut().zip(entries.chunks(chunk)) {
            let (mine, after) = rest.split_at_mut(part.len() >> l);
            share.push(mine);
            rest = after;
        }
    }
    let parts: Vec<Vec<Result<Scanned, EntryError>>> = std::thread::scope(|scope| {
        let mut work = entries.chunks(chunk).zip(shares);
        let first = work.next();
        let others: Vec<_> = work.map(|(part, share)| scope.spawn(move || each(part, share))).collect();
        let mut done: Vec<_> = first.into_iter().map(|(part, share)| each(part, share)).collect();
        done.extend(others.into_iter().map(|other| other.join().expect("a scan never panics")));
        done
    });
    (Tree::from_lower_levels(levels), Scans { parts, chunk })
}

/// The entries' scans, in the parts [`hash_and_scan`] made of them.
struct Scans {
    parts: Vec<Vec<Result<Scanned, EntryError>>>,
    chunk: usize,
}

impl Scans {
    fn get(&self, i: usize) -> Option<&Result<Scanned, EntryError>> {
        self.parts.get(i / self.chunk)?.get(i % self.chunk)
    }

    fn iter(&self) -> impl Iterator<Item = &Result<Scanned, EntryError>> {
        self.parts.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::merkle::NodeReader as _;
    use super::*;

    /// The split over threads changes nothing: the same tree (every level,
    /// every node) and the same scans in the same order as one pass, for
    /// sizes around the parts' alignment (one part, two, an unaligned last
    /// part) and whatever the machine's cores.
    #[test]
    fn the_parts_give_the_tree_and_scans_of_one_pass() {
        for n in [0usize, 1, 4095, 4096, 8191, 8192, 12_289, 20_000] {
            let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("entry {i}").into_bytes()).collect();
            let (tree, scanned) = hash_and_scan(&entries);
            let one_pass = Tree::from_leaves(entries.iter().map(|e| merkle::leaf_hash(e)).collect());
            assert_eq!(tree.size(), n as u64);
            for size in [n as u64, (n as u64).saturating_sub(1), n as u64 / 3] {
                assert_eq!(merkle::root(&tree, size).unwrap(), merkle::root(&one_pass, size).unwrap(), "n {n}");
            }
            for level in 0..16u8 {
                for index in [0, 1, (n >> level) as u64 / 2, ((n >> level) as u64).saturating_sub(1)] {
                    assert_eq!(tree.node(level, index).ok(), one_pass.node(level, index).ok(), "n {n} {level} {index}");
                }
            }
            let one_pass_scans: Vec<_> = entries.iter().map(|e| scan(e)).collect();
            assert_eq!(scanned.iter().cloned().collect::<Vec<_>>(), one_pass_scans, "n {n}");
            for i in [0, n / 2, n.saturating_sub(1), n] {
                assert_eq!(scanned.get(i), one_pass_scans.get(i), "n {n} entry {i}");
            }
        }
    }
}
