//! RFC 6962 Merkle trees (§2.1): the tree hash of any size, inclusion and
//! consistency proofs (§2.1.1, §2.1.2), and their verification (the
//! iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2, which accept
//! exactly the proofs RFC 6962 produces).
//!
//! # Why written here and not `tlog_tiles`
//! `tlog_tiles` 0.2 (Cloudflare's port of Go's `sumdb/tlog`) does this and
//! more, but pulls `thiserror` 1, `base64` 0.21 and `url` into the binary
//! for the hundred lines of hashing the log needs, and reads nodes through
//! Go's stored-hash index, which we would then have to store in exactly its
//! layout. These functions are small, follow the RFC's recursive
//! definitions line by line, and are checked three ways: against the
//! RFC 6962 test vectors (transparency-dev/merkle, CT), by a property test,
//! and by `tlog_tiles` itself in the integration tests, which must accept
//! our roots and proofs.
//!
//! # Stored nodes
//! Proofs and roots are computed from the hashes of *complete* subtrees
//! (`level`, `index`: the subtree of leaves `index << level ..
//! (index + 1) << level`), which never change once their last leaf is
//! appended. Every split RFC 6962 makes yields such a subtree on the left,
//! so a root or proof costs O(log n) node reads and no rehashing of
//! entries. [`NodeReader`] is how the store and the in-memory [`Tree`]
//! provide them.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing (RFC 6962 §2.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`: the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Where a proof or root could not be computed or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes asked for do not fit the tree.
    #[error("no such proof: {0}")]
    OutOfRange(String),
    /// A stored node is missing (a damaged store).
    #[error("the node at level {level}, index {index} is missing")]
    MissingNode {
        /// Its level (0 = leaves).
        level: u8,
        /// Its index in that level.
        index: u64,
    },
    /// The store could not be read.
    #[error("cannot read the tree: {0}")]
    Storage(String),
    /// The proof does not lead to the expected root(s).
    #[error("the proof does not verify")]
    Invalid,
}

/// Reads the hash of a complete subtree.
pub trait NodeReader {
    /// The hash of leaves `index << level .. (index + 1) << level`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError>;
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[lo:hi]), from stored complete subtrees.
fn subtree<R: NodeReader + ?Sized>(r: &R, lo: u64, hi: u64) -> Result<Hash, ProofError> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return r.node(n.trailing_zeros() as u8, lo >> n.trailing_zeros());
    }
    let k = split(n);
    Ok(node_hash(&subtree(r, lo, lo + k)?, &subtree(r, lo + k, hi)?))
}

/// The root of the first `size` leaves.
pub fn root<R: NodeReader + ?Sized>(r: &R, size: u64) -> Result<Hash, ProofError> {
    if size == 0 { Ok(empty_root()) } else { subtree(r, 0, size) }
}

/// PATH(index, D[0:size]) of RFC 6962 §2.1.1: the inclusion proof of one
/// leaf, leaf-side first.
pub fn inclusion_proof<R: NodeReader + ?Sized>(r: &R, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!("leaf {index} is not in a tree of size {size}")));
    }
    let mut proof = Vec::new();
    path(r, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<R: NodeReader + ?Sized>(r: &R, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), ProofError> {
    let n = hi - lo;
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(r, m, lo, lo + k, out)?;
        out.push(subtree(r, lo + k, hi)?);
    } else {
        path(r, m - k, lo + k, hi, out)?;
        out.push(subtree(r, lo, lo + k)?);
    }
    Ok(())
}

/// PROOF(old, D[0:new]) of RFC 6962 §2.1.2: that the tree of size `old`
/// is a prefix of the tree of size `new`. Empty when `old` is 0 or equals
/// `new` (nothing to prove).
pub fn consistency_proof<R: NodeReader + ?Sized>(r: &R, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange(format!("a tree of size {old} cannot be a prefix of one of size {new}")));
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(r, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<R: NodeReader + ?Sized>(
    r: &R,
    m: u64,
    lo: u64,
    hi: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(subtree(r, lo, hi)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(r, m, lo, lo + k, whole, out)?;
        out.push(subtree(r, lo + k, hi)?);
    } else {
        subproof(r, m - k, lo + k, hi, false, out)?;
        out.push(subtree(r, lo, lo + k)?);
    }
    Ok(())
}

/// Checks an inclusion proof: that `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Invalid);
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Invalid);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root { Ok(()) } else { Err(ProofError::Invalid) }
}

/// Checks a consistency proof: that the tree of size `old` with root
/// `old_root` is a prefix of the tree of size `new` with root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Invalid);
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root { Ok(()) } else { Err(ProofError::Invalid) };
    }
    if old == 0 {
        // Every tree extends the empty one; a proof has nothing to say.
        return if proof.is_empty() && *old_root == empty_root() { Ok(()) } else { Err(ProofError::Invalid) };
    }
    let mut path = proof.iter();
    let mut f = old - 1;
    let mut s = new - 1;
    let first = if old.is_power_of_two() { *old_root } else { *path.next().ok_or(ProofError::Invalid)? };
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in path {
        if s == 0 {
            return Err(ProofError::Invalid);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if fr == *old_root && sr == *new_root && s == 0 { Ok(()) } else { Err(ProofError::Invalid) }
}

/// The complete-subtree hashes that appending leaf `index` with hash
/// `leaf` completes, as `(level, index, hash)`, level 0 first. `sibling`
/// reads the left neighbours already stored. An append stores exactly
/// these, so the stored nodes are always every complete subtree.
pub fn completed_nodes(
    index: u64,
    leaf: Hash,
    mut sibling: impl FnMut(u8, u64) -> Result<Hash, ProofError>,
) -> Result<Vec<(u8, u64, Hash)>, ProofError> {
    let mut out = vec![(0, index, leaf)];
    let (mut level, mut i, mut h) = (0u8, index, leaf);
    while i & 1 == 1 {
        h = node_hash(&sibling(level, i - 1)?, &h);
        level += 1;
        i >>= 1;
        out.push((level, i, h));
    }
    Ok(out)
}

/// An in-memory tree of every complete subtree: what the verifier builds
/// from exported entries, and what tests compare the store against.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The tree of `leaves` (leaf hashes, in order), built a level at a
    /// time: what [`Tree::push`] of each leaf gives, without its per-leaf
    /// bookkeeping (a third of a verify's hashing time).
    pub fn from_leaves(leaves: Vec<Hash>) -> Tree {
        Tree::from_lower_levels(vec![leaves])
    }

    /// The tree whose lowest levels are given (`levels[0]` the leaf
    /// hashes, each level every complete node of its level, possibly
    /// none), built up from the highest: what threads that each hashed an
    /// aligned part of the leaves give ([`crate::audit::verify`]).
    pub fn from_lower_levels(mut levels: Vec<Vec<Hash>>) -> Tree {
        while let Some(below) = levels.last().filter(|level| level.len() > 1) {
            let up = below.chunks_exact(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
            levels.push(up);
        }
        Tree { levels }
    }

    /// Appends a leaf by its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let index = self.size();
        let levels = &self.levels;
        let nodes = completed_nodes(index, leaf, |level, i| Ok(levels[level as usize][i as usize]))
            .expect("an in-memory tree has every sibling");
        for (level, _, hash) in nodes {
            if self.levels.len() <= level as usize {
                self.levels.push(Vec::new());
            }
            self.levels[level as usize].push(hash);
        }
    }

    /// The leaf hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(index as usize).copied()
    }
}

impl NodeReader for Tree {
    fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or(ProofError::MissingNode { level, index })
    }
}

#[cfg(test)]
mod tests {
    //! Test vectors: the leaves, node hashes and roots of
    //! transparency-dev/merkle `testonly/constants.go` (originally
    //! certificate-transparency's `merkle_tree_test.cc`), and the
    //! inclusion and consistency paths of the same tree published with
    //! certificate-transparency's C++ and Python tests.

    use super::*;
    use proptest::prelude::*;

    const LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (leaf index, tree size, path)
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    /// (old size, new size, proof)
    const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn vector_tree() -> Tree {
        let mut t = Tree::new();
        for leaf in LEAVES {
            t.push(leaf_hash(&hex::decode(leaf).unwrap()));
        }
        t
    }

    #[test]
    fn roots_match_the_rfc6962_vectors() {
        let mut t = Tree::new();
        assert_eq!(root(&t, 0).unwrap(), h(ROOTS[0]));
        for (i, leaf) in LEAVES.iter().enumerate() {
            t.push(leaf_hash(&hex::decode(leaf).unwrap()));
            assert_eq!(root(&t, i as u64 + 1).unwrap(), h(ROOTS[i + 1]), "size {}", i + 1);
        }
        // Roots of every smaller size, read from the full tree's nodes.
        for size in 0..=8 {
            assert_eq!(root(&t, size).unwrap(), h(ROOTS[size as usize]), "size {size} from the full tree");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_vectors_and_verify() {
        let t = vector_tree();
        for (index, size, path) in INCLUSION {
            let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
            let proof = inclusion_proof(&t, index, size).unwrap();
            assert_eq!(proof, want, "leaf {index} of {size}");
            let r = h(ROOTS[size as usize]);
            verify_inclusion(index, size, &t.leaf(index).unwrap(), &proof, &r).unwrap();
            // The wrong leaf, index, size or root fails.
            let other = t.leaf((index + 1) % 8).unwrap();
            assert!(verify_inclusion(index, size, &other, &proof, &r).is_err());
            assert!(verify_inclusion(index + 1, size, &t.leaf(index).unwrap(), &proof, &r).is_err());
            assert!(verify_inclusion(index, size, &t.leaf(index).unwrap(), &proof, &h(ROOTS[0])).is_err());
        }
        assert!(inclusion_proof(&t, 8, 8).is_err());
    }

    #[test]
    fn consistency_proofs_match_the_vectors_and_verify() {
        let t = vector_tree();
        for (old, new, path) in CONSISTENCY {
            let want: Vec<Hash> = path.iter().map(|p| h(p)).collect();
            let proof = consistency_proof(&t, old, new).unwrap();
            assert_eq!(proof, want, "{old} -> {new}");
            let (ro, rn) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
            verify_consistency(old, new, &ro, &rn, &proof).unwrap();
            assert!(verify_consistency(old, new, &rn, &ro, &proof).is_err() || old == new);
            if !proof.is_empty() {
                let mut bad = proof.clone();
                bad[0][0] ^= 1;
                assert!(verify_consistency(old, new, &ro, &rn, &bad).is_err());
                assert!(verify_consistency(old, new, &ro, &rn, &proof[1..]).is_err());
            }
        }
        assert!(consistency_proof(&t, 5, 4).is_err());
    }

    fn tree_of(n: u64) -> Tree {
        let mut t = Tree::new();
        for i in 0..n {
            t.push(leaf_hash(&i.to_be_bytes()));
        }
        t
    }

    proptest! {
        /// A tree built a level at a time has every node a tree built leaf
        /// by leaf has, and no other.
        #[test]
        fn a_tree_built_from_its_leaves_is_the_tree_built_by_pushes(size in 0u64..300) {
            let pushed = tree_of(size);
            let leaves = (0..size).map(|i| pushed.leaf(i).unwrap()).collect();
            let built = Tree::from_leaves(leaves);
            for level in 0..10u8 {
                for index in 0..size + 2 {
                    prop_assert_eq!(built.node(level, index), pushed.node(level, index), "level {} index {}", level, index);
                }
            }
        }

        /// Every inclusion proof of a random tree verifies, and fails for
        /// another leaf or another index. (Another tree size can pass: a
        /// path says nothing of leaves right of it, so a proof for size n
        /// may also fit size n + 1 with the same root; roots bind sizes
        /// only through the signed checkpoint.)
        #[test]
        fn inclusion_proofs_verify_for_random_sizes(size in 1u64..300, pick in any::<u64>()) {
            let t = tree_of(size);
            let index = pick % size;
            let r = root(&t, size).unwrap();
            let proof = inclusion_proof(&t, index, size).unwrap();
            prop_assert!(verify_inclusion(index, size, &t.leaf(index).unwrap(), &proof, &r).is_ok());
            prop_assert!(verify_inclusion(index, size, &leaf_hash(b"forged"), &proof, &r).is_err());
            if size > 1 {
                let other = (index + 1) % size;
                prop_assert!(verify_inclusion(other, size, &t.leaf(index).unwrap(), &proof, &r).is_err());
            }
        }

        /// Every consistency proof between two random sizes verifies, and
        /// fails against a fork (a tree whose prefix differs in one leaf).
        #[test]
        fn consistency_proofs_verify_for_random_sizes(new in 1u64..300, pick in any::<u64>(), fork in any::<u64>()) {
            let old = 1 + pick % new;
            let t = tree_of(new);
            let (ro, rn) = (root(&t, old).unwrap(), root(&t, new).unwrap());
            let proof = consistency_proof(&t, old, new).unwrap();
            prop_assert!(verify_consistency(old, new, &ro, &rn, &proof).is_ok());
            // A fork: the same sizes, one leaf before `old` changed.
            let mut forked = Tree::new();
            let changed = fork % old;
            for i in 0..new {
                forked.push(leaf_hash(&if i == changed { u64::MAX } else { i }.to_be_bytes()));
            }
            let fork_root = root(&forked, new).unwrap();
            let fork_proof = consistency_proof(&forked, old, new).unwrap();
            prop_assert!(verify_consistency(old, new, &ro, &fork_root, &fork_proof).is_err());
            if old < new {
                prop_assert!(verify_consistency(old, new, &ro, &rn, &proof[..proof.len() - 1]).is_err());
            }
        }
    }
}
