//! [`AuditLog`]: appends batches of entries durably, each batch sealed by
//! a signed checkpoint in the same transaction, and answers proofs from
//! the stored nodes.

use std::io::Write;
use std::path::Path;

use std::collections::BTreeMap;

use redb::{Database, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable};

use super::checkpoint::{Checkpoint, CheckpointError};
use super::entry::{self, Entry, EntryError, NewEntry};
use super::export;
use super::merkle::{self, Hash, NodeReader as _, ProofError};
use super::note::{NoteSigner, NoteVerifier};
use super::store::{self, CHECKPOINTS, ENTRIES, GRANTS, NODES, StoreError, StoredNodes, store_error};
use super::verify::{self, Summary, VerifyError};

/// Most entries in one batch (each at most 64 KiB).
pub const MAX_BATCH: usize = 1024;

/// Why an append, a proof or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The storage failed; nothing of the batch was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process has the file open (`gatehouse audit …` reading it).
    #[error("{0} is open in another process")]
    Locked(String),
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
        let db = store::open(path).map_err(|e| match e {
            store::ReadOpenError::Locked(shown) => AuditError::Locked(shown),
            store::ReadOpenError::Store(e) => AuditError::Store(e),
            other => AuditError::Store(StoreError(other.to_string())),
        })?;
        Ok(AuditLog { db, origin: origin.to_string(), signers })
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
        self.append_with_state(batch, &[])
    }

    /// [`AuditLog::append`], also setting rows of the grants in force
    /// (`plugin -> Some(bytes)`, or `None` to remove it) in the same
    /// transaction, so that the entries and the state they describe are
    /// durable together or not at all. With an empty batch nothing is
    /// written, state included.
    pub fn append_with_state(
        &self,
        batch: &[NewEntry],
        state: &[(String, Option<Vec<u8>>)],
    ) -> Result<Appended, AuditError> {
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
            let mut grants = txn.open_table(GRANTS).map_err(store_error)?;
            let old_size = store::size(&entries)?;
            let last = checkpoints.last().map_err(store_error)?.map(|(k, v)| (k.value(), v.value().to_string()));
            let old_root =
                self.check_last(old_size, last.as_ref().map(|(s, n)| (*s, n.as_str())), &entries, &nodes, &grants)?;
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
            for (plugin, row) in state {
                match row {
                    Some(bytes) => grants.insert(plugin.as_str(), bytes.as_slice()).map_err(store_error)?,
                    None => grants.remove(plugin.as_str()).map_err(store_error)?,
                };
            }
            let digest = store::stored_grants_digest(&grants)?;
            let signers: Vec<&NoteSigner> = self.signers.iter().collect();
            let checkpoint =
                Checkpoint { origin: self.origin.clone(), size, root, grants: Some(digest) }.sign(&signers)?;
            checkpoints.insert(size, checkpoint.as_str()).map_err(store_error)?;
            Appended { first: old_size, size, checkpoint }
        };
        txn.commit().map_err(store_error)?;
        Ok(appended)
    }

    /// Checks the stored state against the last signed checkpoint and
    /// returns its root: the store holds exactly the entries it covers, it
    /// is this log's and one of our keys signed it, the stored nodes still
    /// give its root, the last entry still has its leaf hash (the next
    /// entry's `prev`), and the grants in force are the ones it signed.
    /// Costs O(log n) node reads, one entry hash and a hash of the grants.
    fn check_last(
        &self,
        size: u64,
        last: Option<(u64, &str)>,
        entries: &impl ReadableTable<u64, &'static [u8]>,
        nodes: &impl ReadableTable<(u8, u64), &'static [u8]>,
        grants: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Hash, AuditError> {
        let Some((signed_size, note)) = last else {
            if size != 0 {
                return Err(AuditError::Inconsistent(format!(
                    "the store holds {size} entries but no signed checkpoint"
                )));
            }
            if !grants.is_empty().map_err(store_error)? {
                return Err(AuditError::Inconsistent(
                    "the store records grants in force but no checkpoint signed them".into(),
                ));
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
        if let Some(signed) = checkpoint.grants
            && signed != store::stored_grants_digest(grants)?
        {
            return Err(AuditError::Inconsistent(
                "the grants in force stored beside the log are not the ones the last checkpoint signed \
                 (edited outside the sidecar?): restore the store from a backup"
                    .into(),
            ));
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
        read_size(&self.db)
    }

    /// The latest signed checkpoint (`None` before the first append).
    pub fn checkpoint(&self) -> Result<Option<String>, AuditError> {
        read_checkpoint(&self.db)
    }

    /// The canonical bytes of entry `seq`.
    pub fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        read_entry(&self.db, seq)
    }

    /// The grants in force as the entries left them, by plugin.
    pub fn grants(&self) -> Result<BTreeMap<String, Vec<u8>>, AuditError> {
        read_grants(&self.db)
    }

    /// Proves that entry `seq` is in the tree of the latest checkpoint.
    pub fn prove(&self, seq: u64) -> Result<InclusionProof, AuditError> {
        read_prove(&self.db, seq)
    }

    /// Proves that the tree of size `old` is a prefix of the latest one.
    pub fn consistency(&self, old: u64) -> Result<ConsistencyProof, AuditError> {
        read_consistency(&self.db, old)
    }

    /// Writes the whole log as JSON Lines (see [`export`]).
    pub fn export(&self, out: &mut impl Write) -> Result<(), AuditError> {
        read_export(&self.db, out)
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

/// The log's file opened for reading only (see [`store::open_read_only`]):
/// what `gatehouse audit …` and the admin API read through, while no
/// process appends. Hold it briefly: an append waits for it.
pub struct AuditReader {
    db: ReadOnlyDatabase,
}

impl AuditReader {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<AuditReader, store::ReadOpenError> {
        Ok(AuditReader { db: store::open_read_only(path)? })
    }

    /// Entries in the log.
    pub fn size(&self) -> Result<u64, AuditError> {
        read_size(&self.db)
    }

    /// The latest signed checkpoint (`None` before the first append).
    pub fn checkpoint(&self) -> Result<Option<String>, AuditError> {
        read_checkpoint(&self.db)
    }

    /// The canonical bytes of entry `seq`.
    pub fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        read_entry(&self.db, seq)
    }

    /// Up to `limit` entries from sequence number `from` on, in order.
    pub fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(ENTRIES).map_err(store_error)?;
        let mut out = Vec::new();
        for row in table.range(from..).map_err(store_error)?.take(limit) {
            let (seq, bytes) = row.map_err(store_error)?;
            out.push((seq.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }

    /// The grants in force as the entries left them, by plugin.
    pub fn grants(&self) -> Result<BTreeMap<String, Vec<u8>>, AuditError> {
        read_grants(&self.db)
    }

    /// Entries and checkpoints, as a verifier reads them.
    pub fn read_all(&self) -> Result<(Vec<Vec<u8>>, Vec<String>), AuditError> {
        Ok(store::read_all(&self.db)?)
    }

    /// Proves that entry `seq` is in the tree of the latest checkpoint.
    pub fn prove(&self, seq: u64) -> Result<InclusionProof, AuditError> {
        read_prove(&self.db, seq)
    }

    /// Proves that the tree of size `old` is a prefix of the latest one.
    pub fn consistency(&self, old: u64) -> Result<ConsistencyProof, AuditError> {
        read_consistency(&self.db, old)
    }
}

fn read_size(db: &impl ReadableDatabase) -> Result<u64, AuditError> {
    let txn = db.begin_read().map_err(store_error)?;
    Ok(store::size(&txn.open_table(ENTRIES).map_err(store_error)?)?)
}

fn read_checkpoint(db: &impl ReadableDatabase) -> Result<Option<String>, AuditError> {
    let txn = db.begin_read().map_err(store_error)?;
    let table = txn.open_table(CHECKPOINTS).map_err(store_error)?;
    Ok(table.last().map_err(store_error)?.map(|(_, v)| v.value().to_string()))
}

fn read_entry(db: &impl ReadableDatabase, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
    let txn = db.begin_read().map_err(store_error)?;
    let table = txn.open_table(ENTRIES).map_err(store_error)?;
    Ok(table.get(seq).map_err(store_error)?.map(|v| v.value().to_vec()))
}

fn read_grants(db: &impl ReadableDatabase) -> Result<BTreeMap<String, Vec<u8>>, AuditError> {
    let txn = db.begin_read().map_err(store_error)?;
    // A log written before the table existed has no grants recorded.
    let table = match txn.open_table(GRANTS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(store_error(e).into()),
    };
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(store_error)? {
        let (plugin, bytes) = row.map_err(store_error)?;
        out.insert(plugin.value().to_string(), bytes.value().to_vec());
    }
    Ok(out)
}

fn read_prove(db: &impl ReadableDatabase, seq: u64) -> Result<InclusionProof, AuditError> {
    let txn = db.begin_read().map_err(store_error)?;
    let entries = txn.open_table(ENTRIES).map_err(store_error)?;
    let nodes = txn.open_table(NODES).map_err(store_error)?;
    let (size, checkpoint) = latest(&txn.open_table(CHECKPOINTS).map_err(store_error)?)?;
    let path = merkle::inclusion_proof(&StoredNodes(&nodes), seq, size)?;
    let entry = entries.get(seq).map_err(store_error)?.map(|v| v.value().to_vec());
    let entry = entry.ok_or(ProofError::OutOfRange(format!("entry {seq} is missing")))?;
    Ok(InclusionProof { seq, entry, checkpoint, size, path })
}

fn read_consistency(db: &impl ReadableDatabase, old: u64) -> Result<ConsistencyProof, AuditError> {
    let txn = db.begin_read().map_err(store_error)?;
    let nodes = txn.open_table(NODES).map_err(store_error)?;
    let (size, checkpoint) = latest(&txn.open_table(CHECKPOINTS).map_err(store_error)?)?;
    let path = merkle::consistency_proof(&StoredNodes(&nodes), old, size)?;
    Ok(ConsistencyProof { old, checkpoint, size, path })
}

fn read_export(db: &impl ReadableDatabase, out: &mut impl Write) -> Result<(), AuditError> {
    let (entries, checkpoints) = store::read_all(db)?;
    export::write(out, &entries, &checkpoints)?;
    Ok(())
}

fn latest(table: &impl ReadableTable<u64, &'static str>) -> Result<(u64, String), AuditError> {
    let last = table.last().map_err(store_error)?;
    last.map(|(k, v)| (k.value(), v.value().to_string()))
        .ok_or_else(|| AuditError::Proof(ProofError::OutOfRange("the log has no checkpoint yet".into())))
}
