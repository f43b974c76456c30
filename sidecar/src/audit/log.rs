//! [`AuditLog`]: appends batches of entries durably, each batch sealed by
//! a signed checkpoint in the same transaction, and answers proofs from
//! the stored nodes.

use std::io::Write;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::checkpoint::{Checkpoint, CheckpointError};
use super::entry::{self, Entry, EntryError, NewEntry};
use super::export;
use super::merkle::{self, Hash, NodeReader as _, ProofError};
use super::note::{NoteSigner, NoteVerifier};
use super::store::{self, CHECKPOINTS, ENTRIES, NODES, StoreError, StoredNodes, store_error};
use super::verify::{self, Summary, VerifyError};

/// Most entries in one batch (each at most 64 KiB).
pub const MAX_BATCH: usize = 1024;

/// Why an append, a proof or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The storage failed; nothing of the batch was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry cannot be recorded.
    #[error("entry {index} of the batch: {source}")]
    Entry {
        /// Its position in the batch.
        index: usize,
        /// Why.
        source: EntryError,
    },
    /// More than [`MAX_BATCH`] entries.
    #[error("a batch of {0} entries; at most {MAX_BATCH}")]
    BatchTooLarge(usize),
    /// No signing key was given.
    #[error("the audit log needs at least one signing key")]
    NoKey,
    /// The new checkpoint would not be consistent with the last one the
    /// log signed, so the log refuses to sign it (the store was changed
    /// behind its back, or is damaged). Nothing was written.
    #[error("refusing to sign: {0}")]
    Inconsistent(String),
    /// Signing or reading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A proof could not be made.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// Writing an export failed.
    #[error("cannot write the export: {0}")]
    Export(#[from] std::io::Error),
}

/// What an append made: the entries' sequence numbers and the checkpoint
/// that covers them, already durable and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the batch's first entry.
    pub first: u64,
    /// The tree size after it.
    pub size: u64,
    /// The signed checkpoint of that size.
    pub checkpoint: String,
}

/// An inclusion proof of one entry against a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The entry's sequence number (its leaf index).
    pub seq: u64,
    /// The entry's canonical bytes.
    pub entry: Vec<u8>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: String,
    /// Its tree size.
    pub size: u64,
    /// The RFC 6962 audit path, leaf side first.
    pub path: Vec<Hash>,
}

/// A consistency proof between two signed checkpoints of this log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub old: u64,
    /// The newer signed checkpoint (the latest).
    pub checkpoint: String,
    /// Its tree size.
    pub size: u64,
    /// The RFC 6962 consistency proof.
    pub path: Vec<Hash>,
}

/// The audit log over its redb store. Appends from several threads are
/// serialised by redb's single writer.
pub struct AuditLog {
    db: Database,
    origin: String,
    signers: Vec<NoteSigner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("origin", &self.origin).field("signers", &self.signers).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. `origin` names the log in
    /// its checkpoints; every checkpoint is signed by every key in
    /// `signers` (more than one during a key rotation).
    pub fn open(path: &Path, origin: &str, signers: Vec<NoteSigner>) -> Result<AuditLog, AuditError> {
        if signers.is_empty() {
            return Err(AuditError::NoKey);
        }
        if origin.is_empty() || origin.contains('\n') || origin.chars().any(char::is_control) {
            return Err(AuditError::Checkpoint(CheckpointError::Malformed("the origin must be one line of text")));
        }
        Ok(AuditLog { db: store::open(path)?, origin: origin.to_string(), signers })
    }

    /// The keys that check this log's checkpoints.
    pub fn verifiers(&self) -> Vec<NoteVerifier> {
        self.signers.iter().map(NoteSigner::verifier).collect()
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Appends `batch` and signs a checkpoint covering it, in one durable
    /// transaction; returns only once both are on disk. An empty batch
    /// writes and signs nothing. Before signing, the log checks that the
    /// stored tree still matches the last checkpoint it signed and that
    /// the new tree extends it (RFC 6962 consistency); otherwise it
    /// refuses with [`AuditError::Inconsistent`] and writes nothing.
    pub fn append(&self, batch: &[NewEntry]) -> Result<Appended, AuditError> {
        if batch.len() > MAX_BATCH {
            return Err(AuditError::BatchTooLarge(batch.len()));
        }
        for (index, new) in batch.iter().enumerate() {
            entry::check_new(new).map_err(|source| AuditError::Entry { index, source })?;
        }
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(Durability::Immediate).map_err(store_error)?;
        let appended = {
            let mut entries = txn.open_table(ENTRIES).map_err(store_error)?;
            let mut nodes = txn.open_table(NODES).map_err(store_error)?;
            let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(store_error)?;
            let old_size = store::size(&entries)?;
            let last = checkpoints.last().map_err(store_error)?.map(|(k, v)| (k.value(), v.value().to_string()));
            let old_root = self.check_last(old_size, last.as_ref().map(|(s, n)| (*s, n.as_str())), &entries, &nodes)?;
            if batch.is_empty() {
                let checkpoint = last.map(|(_, note)| note).unwrap_or_default();
                return Ok(Appended { first: old_size, size: old_size, checkpoint });
            }
            let time = entry::now();
            let mut prev = if old_size == 0 { [0; 32] } else { StoredNodes(&nodes).node(0, old_size - 1)? };
            for (index, new) in batch.iter().enumerate() {
                let seq = old_size + index as u64;
                let bytes = Entry::record(seq, time.clone(), prev, new)
                    .and_then(|e| e.encode())
                    .map_err(|source| AuditError::Entry { index, source })?;
                let leaf = merkle::leaf_hash(&bytes);
                entries.insert(seq, bytes.as_slice()).map_err(store_error)?;
                let completed = merkle::completed_nodes(seq, leaf, |level, i| StoredNodes(&nodes).node(level, i))?;
                for (level, i, hash) in completed {
                    nodes.insert((level, i), hash.as_slice()).map_err(store_error)?;
                }
                prev = leaf;
            }
            let size = old_size + batch.len() as u64;
            let root = merkle::root(&StoredNodes(&nodes), size)?;
            let proof = merkle::consistency_proof(&StoredNodes(&nodes), old_size, size)?;
            merkle::verify_consistency(old_size, size, &old_root, &root, &proof).map_err(|_| {
                AuditError::Inconsistent(format!(
                    "the tree of size {size} does not extend the signed one of size {old_size}"
                ))
            })?;
            let signers: Vec<&NoteSigner> = self.signers.iter().collect();
            let checkpoint = Checkpoint { origin: self.origin.clone(), size, root }.sign(&signers)?;
            checkpoints.insert(size, checkpoint.as_str()).map_err(store_error)?;
            Appended { first: old_size, size, checkpoint }
        };
        txn.commit().map_err(store_error)?;
        Ok(appended)
    }

    /// Checks the stored state against the last signed checkpoint and
    /// returns its root: the store holds exactly the entries it covers, it
    /// is this log's and one of our keys signed it, the stored nodes still
    /// give its root, and the last entry still has its leaf hash (the next
    /// entry's `prev`). Costs O(log n) node reads and one entry hash.
    fn check_last(
        &self,
        size: u64,
        last: Option<(u64, &str)>,
        entries: &impl ReadableTable<u64, &'static [u8]>,
        nodes: &impl ReadableTable<(u8, u64), &'static [u8]>,
    ) -> Result<Hash, AuditError> {
        let Some((signed_size, note)) = last else {
            if size != 0 {
                return Err(AuditError::Inconsistent(format!(
                    "the store holds {size} entries but no signed checkpoint"
                )));
            }
            return Ok(merkle::empty_root());
        };
        let checkpoint = Checkpoint::open(note, &self.verifiers()).map_err(|e| {
            AuditError::Inconsistent(format!("the last checkpoint does not open with the log's keys: {e}"))
        })?;
        if checkpoint.origin != self.origin || checkpoint.size != signed_size {
            return Err(AuditError::Inconsistent("the last checkpoint is not this log's".into()));
        }
        if checkpoint.size != size {
            return Err(AuditError::Inconsistent(format!(
                "the store holds {size} entries but the last signed checkpoint covers {}",
                checkpoint.size
            )));
        }
        let root = merkle::root(&StoredNodes(nodes), size)?;
        if root != checkpoint.root {
            return Err(AuditError::Inconsistent(format!(
                "the stored tree of size {size} no longer has the signed root"
            )));
        }
        let Some(last) = size.checked_sub(1) else { return Ok(root) };
        let last_entry = entries.get(last).map_err(store_error)?.map(|v| merkle::leaf_hash(v.value()));
        if last_entry != Some(StoredNodes(nodes).node(0, last)?) {
            return Err(AuditError::Inconsistent(format!("entry {last} is not the one the tree holds")));
        }
        Ok(root)
    }

    /// Entries in the log.
    pub fn size(&self) -> Result<u64, AuditError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        Ok(store::size(&txn.open_table(ENTRIES).map_err(store_error)?)?)
    }

    /// The latest signed checkpoint (`None` before the first append).
    pub fn checkpoint(&self) -> Result<Option<String>, AuditError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(CHECKPOINTS).map_err(store_error)?;
        Ok(table.last().map_err(store_error)?.map(|(_, v)| v.value().to_string()))
    }

    /// The canonical bytes of entry `seq`.
    pub fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(ENTRIES).map_err(store_error)?;
        Ok(table.get(seq).map_err(store_error)?.map(|v| v.value().to_vec()))
    }

    /// Proves that entry `seq` is in the tree of the latest checkpoint.
    pub fn prove(&self, seq: u64) -> Result<InclusionProof, AuditError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let entries = txn.open_table(ENTRIES).map_err(store_error)?;
        let nodes = txn.open_table(NODES).map_err(store_error)?;
        let (size, checkpoint) = latest(&txn.open_table(CHECKPOINTS).map_err(store_error)?)?;
        let path = merkle::inclusion_proof(&StoredNodes(&nodes), seq, size)?;
        let entry = entries.get(seq).map_err(store_error)?.map(|v| v.value().to_vec());
        let entry = entry.ok_or(ProofError::OutOfRange(format!("entry {seq} is missing")))?;
        Ok(InclusionProof { seq, entry, checkpoint, size, path })
    }

    /// Proves that the tree of size `old` is a prefix of the latest one.
    pub fn consistency(&self, old: u64) -> Result<ConsistencyProof, AuditError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let nodes = txn.open_table(NODES).map_err(store_error)?;
        let (size, checkpoint) = latest(&txn.open_table(CHECKPOINTS).map_err(store_error)?)?;
        let path = merkle::consistency_proof(&StoredNodes(&nodes), old, size)?;
        Ok(ConsistencyProof { old, checkpoint, size, path })
    }

    /// Writes the whole log as JSON Lines (see [`export`]).
    pub fn export(&self, out: &mut impl Write) -> Result<(), AuditError> {
        let (entries, checkpoints) = store::read_all(&self.db)?;
        export::write(out, &entries, &checkpoints)?;
        Ok(())
    }

    /// Verifies the stored log as an auditor would an export, with
    /// `trusted` keys and optionally a checkpoint the auditor held.
    pub fn verify(
        &self,
        trusted: &[NoteVerifier],
        held: Option<&str>,
    ) -> Result<Result<Summary, VerifyError>, AuditError> {
        let (entries, checkpoints) = store::read_all(&self.db)?;
        Ok(verify::verify(&entries, &checkpoints, trusted, held))
    }
}

fn latest(table: &impl ReadableTable<u64, &'static str>) -> Result<(u64, String), AuditError> {
    let last = table.last().map_err(store_error)?;
    last.map(|(k, v)| (k.value(), v.value().to_string()))
        .ok_or_else(|| AuditError::Proof(ProofError::OutOfRange("the log has no checkpoint yet".into())))
}
