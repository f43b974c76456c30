//! What the log keeps, as one transaction of its store sees it: the
//! entries, the complete-subtree hashes, the signed checkpoints and the
//! grants in force. [`super::log`] appends and proves through these
//! traits, so the embedded store ([`super::store`], redb) and the shared
//! one ([`super::postgres`]) run the same code, checks included.

use std::collections::BTreeMap;

use super::merkle::{Hash, NodeReader, ProofError};
use super::store::StoreError;

/// A snapshot of the log (a read transaction, or a write transaction's
/// view, its own writes included).
pub trait Tables {
    /// Entries stored (the next sequence number).
    fn size(&self) -> Result<u64, StoreError>;
    /// The canonical bytes of entry `seq`.
    fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries from `from` on, in order.
    fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The stored hash of leaves `index << level .. (index + 1) << level`.
    fn node(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The checkpoint of the largest tree size, with that size.
    fn last_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Every signed checkpoint, in size order.
    fn checkpoints(&self) -> Result<Vec<String>, StoreError>;
    /// The grants in force as the entries left them, by plugin.
    fn grants(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;
    /// The size a store that keeps a separate head (PostgreSQL's
    /// compare-and-swap row) says the log has; `None` where the entries
    /// alone say it.
    fn head(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

/// A write transaction: what an append adds. Nothing is visible to
/// others, or durable, before the store commits it.
pub trait WriteTables: Tables {
    /// Stores entry `seq`.
    fn put_entry(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Stores a complete subtree's hash.
    fn put_node(&mut self, level: u8, index: u64, hash: &Hash) -> Result<(), StoreError>;
    /// Stores the signed checkpoint of tree size `size`.
    fn put_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError>;
    /// Sets (`Some`) or removes (`None`) the grants row of `plugin`.
    fn set_grant(&mut self, plugin: &str, row: Option<&[u8]>) -> Result<(), StoreError>;
}

/// The stored nodes, as the Merkle functions read them.
pub struct StoredNodes<'a>(pub &'a dyn Tables);

impl NodeReader for StoredNodes<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        let value = self.0.node(level, index).map_err(|e| ProofError::Storage(e.0))?;
        let value = value.ok_or(ProofError::MissingNode { level, index })?;
        value.try_into().map_err(|_| ProofError::Storage(format!("node ({level}, {index}) is not 32 bytes")))
    }
}
