//! [`AuditLog`]: appends batches of entries durably, each batch sealed by
//! a signed checkpoint in the same transaction, and answers proofs from
//! the stored nodes. The same code runs over the embedded store (redb)
//! and the shared one (PostgreSQL), through [`super::tables`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadOnlyDatabase};

use super::checkpoint::{Checkpoint, CheckpointError};
use super::entry::{self, Entry, EntryError, NewEntry};
use super::export;
use super::merkle::{self, Hash, NodeReader as _, ProofError};
use super::note::{NoteSigner, NoteVerifier};
use super::postgres::PgStore;
use super::store::{self, StoreError, store_error};
use super::tables::{StoredNodes, Tables, WriteTables};
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
    /// The tree's root at that size.
    pub root: Hash,
}

/// What an append writes: the entries, and the grants rows to set
/// (`Some`) or remove (`None`) with them.
pub type Plan = (Vec<NewEntry>, Vec<(String, Option<Vec<u8>>)>);

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

/// The audit log over its store. Appends from several threads (or, in
/// PostgreSQL, several processes) are serialised by the store. It reads
/// like an [`AuditReader`] (`Deref`).
pub struct AuditLog {
    reader: AuditReader,
    origin: String,
    signers: Vec<NoteSigner>,
    /// A tree (size, root) this log was seen to hold: the store must still
    /// extend it ([`AuditLog::extending`]).
    floor: Option<(u64, Hash)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("origin", &self.origin).field("signers", &self.signers).finish_non_exhaustive()
    }
}

impl std::ops::Deref for AuditLog {
    type Target = AuditReader;

    fn deref(&self) -> &AuditReader {
        &self.reader
    }
}

impl AuditLog {
    /// Opens (or creates) the embedded log at `path`. `origin` names the
    /// log in its checkpoints; every checkpoint is signed by every key in
    /// `signers` (more than one during a key rotation).
    pub fn open(path: &Path, origin: &str, signers: Vec<NoteSigner>) -> Result<AuditLog, AuditError> {
        check_names(origin, &signers)?;
        let db = store::open(path).map_err(|e| match e {
            store::ReadOpenError::Locked(shown) => AuditError::Locked(shown),
            store::ReadOpenError::Store(e) => AuditError::Store(e),
            other => AuditError::Store(StoreError(other.to_string())),
        })?;
        Ok(AuditLog {
            reader: AuditReader(Source::Redb(Arc::new(db))),
            origin: origin.to_string(),
            signers,
            floor: None,
        })
    }

    /// The log in a PostgreSQL database, shared by every sidecar pointed at
    /// it (they share its origin and signing key).
    pub fn postgres(store: PgStore, origin: &str, signers: Vec<NoteSigner>) -> Result<AuditLog, AuditError> {
        check_names(origin, &signers)?;
        Ok(AuditLog { reader: AuditReader(Source::Postgres(store)), origin: origin.to_string(), signers, floor: None })
    }

    /// The keys that check this log's checkpoints.
    pub fn verifiers(&self) -> Vec<NoteVerifier> {
        self.signers.iter().map(NoteSigner::verifier).collect()
    }

    /// This log, refusing to append unless the store still extends the
    /// tree of `size` entries with `root` (one a running sidecar saw): a
    /// store deleted, replaced by an older copy or rolled back while the
    /// sidecar runs would otherwise pass every check against its own last
    /// checkpoint.
    pub fn extending(mut self, size: u64, root: Hash) -> AuditLog {
        self.floor = Some((size, root));
        self
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
        self.append_planned(|_| Ok::<_, AuditError>((batch.to_vec(), state.to_vec())))
    }

    /// Appends what `plan` makes of the grants in force as the store holds
    /// them inside the append's own write transaction: the entries and the
    /// rows to set. No other writer (another process on the same
    /// PostgreSQL log, a `gatehouse grants approve`) can append between
    /// the read and the write, so two sidecars that see the same change
    /// record it once.
    pub fn append_planned<E>(
        &self,
        plan: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> Result<Plan, E>,
    ) -> Result<Appended, E>
    where
        E: From<AuditError> + From<StoreError>,
    {
        let planned = |tables: &mut dyn WriteTables| -> Result<Appended, E> {
            let (batch, state) = plan(&tables.grants()?)?;
            if batch.len() > MAX_BATCH {
                return Err(AuditError::BatchTooLarge(batch.len()).into());
            }
            for (index, new) in batch.iter().enumerate() {
                entry::check_new(new).map_err(|source| AuditError::Entry { index, source })?;
            }
            Ok(self.append_in(tables, &batch, &state)?)
        };
        match &self.reader.0 {
            Source::Redb(db) => {
                let mut txn = db.begin_write().map_err(store_error)?;
                txn.set_durability(Durability::Immediate).map_err(store_error)?;
                let appended = planned(&mut store::write_tables(&txn)?)?;
                // An empty batch wrote nothing: the transaction is dropped.
                if appended.size != appended.first {
                    txn.commit().map_err(store_error)?;
                }
                Ok(appended)
            }
            Source::Postgres(pg) => pg.append(|tables| {
                let appended = planned(tables)?;
                let (first, size) = (appended.first, appended.size);
                Ok((appended, first, size))
            }),
            Source::RedbReadOnly(_) => Err(AuditError::Store(StoreError("the log was opened read-only".into())).into()),
        }
    }

    /// The append itself, in the store's write transaction.
    fn append_in(
        &self,
        tables: &mut dyn WriteTables,
        batch: &[NewEntry],
        state: &[(String, Option<Vec<u8>>)],
    ) -> Result<Appended, AuditError> {
        let old_size = tables.size()?;
        let last = tables.last_checkpoint()?;
        let old_root = self.check_last(old_size, last.as_ref().map(|(s, n)| (*s, n.as_str())), tables)?;
        if let Some((seen, seen_root)) = self.floor {
            let extends = seen <= old_size
                && merkle::consistency_proof(&StoredNodes(tables), seen, old_size).is_ok_and(|proof| {
                    merkle::verify_consistency(seen, old_size, &seen_root, &old_root, &proof).is_ok()
                });
            if !extends {
                return Err(AuditError::Inconsistent(format!(
                    "the store (now {old_size} entries) does not extend the log of {seen} entries this process \
                     saw: it was deleted, replaced or rolled back; restore it from a backup"
                )));
            }
        }
        if batch.is_empty() {
            let checkpoint = last.map(|(_, note)| note).unwrap_or_default();
            return Ok(Appended { first: old_size, size: old_size, checkpoint, root: old_root });
        }
        let time = entry::now();
        let mut prev = if old_size == 0 { [0; 32] } else { StoredNodes(tables).node(0, old_size - 1)? };
        for (index, new) in batch.iter().enumerate() {
            let seq = old_size + index as u64;
            let bytes = Entry::record(seq, time.clone(), prev, new)
                .and_then(|e| e.encode())
                .map_err(|source| AuditError::Entry { index, source })?;
            let leaf = merkle::leaf_hash(&bytes);
            tables.put_entry(seq, &bytes)?;
            let completed = merkle::completed_nodes(seq, leaf, |level, i| StoredNodes(tables).node(level, i))?;
            for (level, i, hash) in completed {
                tables.put_node(level, i, &hash)?;
            }
            prev = leaf;
        }
        let size = old_size + batch.len() as u64;
        let root = merkle::root(&StoredNodes(tables), size)?;
        let proof = merkle::consistency_proof(&StoredNodes(tables), old_size, size)?;
        merkle::verify_consistency(old_size, size, &old_root, &root, &proof).map_err(|_| {
            AuditError::Inconsistent(format!(
                "the tree of size {size} does not extend the signed one of size {old_size}"
            ))
        })?;
        for (plugin, row) in state {
            tables.set_grant(plugin, row.as_deref())?;
        }
        let digest = store::stored_grants_digest(tables)?;
        let signers: Vec<&NoteSigner> = self.signers.iter().collect();
        let checkpoint = Checkpoint { origin: self.origin.clone(), size, root, grants: Some(digest) }.sign(&signers)?;
        tables.put_checkpoint(size, &checkpoint)?;
        Ok(Appended { first: old_size, size, checkpoint, root })
    }

    /// Checks the stored state against the last signed checkpoint and
    /// returns its root: the store holds exactly the entries it covers, it
    /// is this log's and one of our keys signed it, the stored nodes still
    /// give its root, the last entry still has its leaf hash (the next
    /// entry's `prev`), and the grants in force are the ones it signed.
    /// Costs O(log n) node reads, one entry hash and a hash of the grants.
    fn check_last(&self, size: u64, last: Option<(u64, &str)>, tables: &dyn Tables) -> Result<Hash, AuditError> {
        let Some((signed_size, note)) = last else {
            if size != 0 {
                return Err(AuditError::Inconsistent(format!(
                    "the store holds {size} entries but no signed checkpoint"
                )));
            }
            if !tables.grants()?.is_empty() {
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
        let root = merkle::root(&StoredNodes(tables), size)?;
        if root != checkpoint.root {
            return Err(AuditError::Inconsistent(format!(
                "the stored tree of size {size} no longer has the signed root"
            )));
        }
        if let Some(signed) = checkpoint.grants
            && signed != store::stored_grants_digest(tables)?
        {
            return Err(AuditError::Inconsistent(
                "the grants in force stored beside the log are not the ones the last checkpoint signed \
                 (edited outside the sidecar?): restore the store from a backup"
                    .into(),
            ));
        }
        let Some(last) = size.checked_sub(1) else { return Ok(root) };
        let last_entry = tables.entry(last)?.map(|v| merkle::leaf_hash(&v));
        if last_entry != Some(StoredNodes(tables).node(0, last)?) {
            return Err(AuditError::Inconsistent(format!("entry {last} is not the one the tree holds")));
        }
        Ok(root)
    }
}

fn check_names(origin: &str, signers: &[NoteSigner]) -> Result<(), AuditError> {
    if signers.is_empty() {
        return Err(AuditError::NoKey);
    }
    if origin.is_empty() || origin.contains('\n') || origin.chars().any(char::is_control) {
        return Err(AuditError::Checkpoint(CheckpointError::Malformed("the origin must be one line of text")));
    }
    Ok(())
}

/// Where a reader reads.
enum Source {
    /// The embedded file, opened for writing (an [`AuditLog`]'s).
    Redb(Arc<Database>),
    /// The embedded file, opened read-only.
    RedbReadOnly(ReadOnlyDatabase),
    /// The shared database.
    Postgres(PgStore),
}

/// A store as `audit verify` reads it: what is signed (the entries and
/// checkpoints, and the grants in force the latest checkpoint signs), and
/// what the store keeps to append and prove with, which nothing signs.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The entries' bytes, in order.
    pub entries: Vec<Vec<u8>>,
    /// Every signed checkpoint, in size order.
    pub checkpoints: Vec<String>,
    /// The grants in force, by plugin (and approval row).
    pub grants: BTreeMap<String, Vec<u8>>,
    /// The separate head's size, where the store keeps one.
    pub head: Option<u64>,
    /// The root of the entries read from the stored tree nodes, or why
    /// there is none.
    pub stored_root: Result<Hash, String>,
}

impl Snapshot {
    /// What is wrong with the store beside its `n` entries, which
    /// verified with root `root`: appends and proofs read the head and the
    /// nodes, so a head or a tree that disagrees with the entries stops
    /// them. The tree is checked through its root (the nodes along the
    /// right edge, O(log n)), not node by node.
    pub fn store_problem(&self, n: u64, root: &Hash) -> Option<String> {
        if let Some(head) = self.head.filter(|head| *head != n) {
            return Some(format!(
                "head-mismatch: the head row counts {head} entries, the store holds {n}: appends fail until it is \
                 repaired"
            ));
        }
        match &self.stored_root {
            Ok(stored) if stored == root => None,
            Ok(_) => Some(
                "tree-mismatch: the stored tree nodes do not give the entries' root: proofs and appends \
                          fail until they are rebuilt"
                    .to_string(),
            ),
            Err(why) => Some(format!("tree-mismatch: {why}: proofs and appends fail until the nodes are rebuilt")),
        }
    }
}

/// The log opened for reading: what `gatehouse audit …` and the admin API
/// read through. The embedded file is opened read-only (see
/// [`store::open_read_only`]): hold it briefly, an append waits for it.
/// Each call reads one consistent snapshot.
pub struct AuditReader(Source);

impl AuditReader {
    /// Opens the embedded log at `path` read-only.
    pub fn open(path: &Path) -> Result<AuditReader, store::ReadOpenError> {
        Ok(AuditReader(Source::RedbReadOnly(store::open_read_only(path)?)))
    }

    /// The log in a PostgreSQL database.
    pub fn postgres(store: PgStore) -> AuditReader {
        AuditReader(Source::Postgres(store))
    }

    fn read<T>(&self, read: impl FnOnce(&dyn Tables) -> Result<T, AuditError>) -> Result<T, AuditError> {
        match &self.0 {
            Source::Redb(db) => read(&store::read_tables(&**db)?),
            Source::RedbReadOnly(db) => read(&store::read_tables(db)?),
            Source::Postgres(pg) => pg.read(read),
        }
    }

    /// Entries in the log.
    pub fn size(&self) -> Result<u64, AuditError> {
        self.read(|t| Ok(t.size()?))
    }

    /// The latest signed checkpoint (`None` before the first append).
    pub fn checkpoint(&self) -> Result<Option<String>, AuditError> {
        self.read(|t| Ok(t.last_checkpoint()?.map(|(_, note)| note)))
    }

    /// The canonical bytes of entry `seq`.
    pub fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        self.read(|t| Ok(t.entry(seq)?))
    }

    /// Up to `limit` entries from sequence number `from` on, in order.
    pub fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        self.read(|t| Ok(t.entries(from, limit)?))
    }

    /// The grants in force as the entries left them, by plugin.
    pub fn grants(&self) -> Result<BTreeMap<String, Vec<u8>>, AuditError> {
        self.read(|t| Ok(t.grants()?))
    }

    /// What `audit verify` reads of a store, from one snapshot.
    pub fn snapshot(&self) -> Result<Snapshot, AuditError> {
        self.read(|t| {
            let entries: Vec<Vec<u8>> = t.entries(0, usize::MAX)?.into_iter().map(|(_, e)| e).collect();
            let (checkpoints, grants, head) = (t.checkpoints()?, t.grants()?, t.head()?);
            // Last: a failed read ends a PostgreSQL snapshot.
            let stored_root = merkle::root(&StoredNodes(t), entries.len() as u64).map_err(|e| e.to_string());
            Ok(Snapshot { entries, checkpoints, grants, head, stored_root })
        })
    }

    /// Entries and checkpoints, as a verifier reads them.
    pub fn read_all(&self) -> Result<(Vec<Vec<u8>>, Vec<String>), AuditError> {
        self.read(|t| Ok((t.entries(0, usize::MAX)?.into_iter().map(|(_, e)| e).collect(), t.checkpoints()?)))
    }

    /// Proves that entry `seq` is in the tree of the latest checkpoint.
    pub fn prove(&self, seq: u64) -> Result<InclusionProof, AuditError> {
        self.read(|t| {
            let (size, checkpoint) = latest(t)?;
            let path = merkle::inclusion_proof(&StoredNodes(t), seq, size)?;
            let entry = t.entry(seq)?.ok_or(ProofError::OutOfRange(format!("entry {seq} is missing")))?;
            Ok(InclusionProof { seq, entry, checkpoint, size, path })
        })
    }

    /// Proves that the tree of size `old` is a prefix of the latest one.
    pub fn consistency(&self, old: u64) -> Result<ConsistencyProof, AuditError> {
        self.read(|t| {
            let (size, checkpoint) = latest(t)?;
            let path = merkle::consistency_proof(&StoredNodes(t), old, size)?;
            Ok(ConsistencyProof { old, checkpoint, size, path })
        })
    }

    /// Writes the whole log as JSON Lines (see [`export`]).
    pub fn export(&self, out: &mut impl Write) -> Result<(), AuditError> {
        let (entries, checkpoints) = self.read_all()?;
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
        let (entries, checkpoints) = self.read_all()?;
        Ok(verify::verify(&entries, &checkpoints, trusted, held))
    }
}

fn latest(tables: &dyn Tables) -> Result<(u64, String), AuditError> {
    tables
        .last_checkpoint()?
        .ok_or_else(|| AuditError::Proof(ProofError::OutOfRange("the log has no checkpoint yet".into())))
}
