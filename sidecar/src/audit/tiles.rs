//! The tiles export: the log as a C2SP `tlog-tiles` directory, the layout
//! that Go's checksum database and its successors serve, so an auditor can
//! read it with their tile clients.
//!
//! The directory holds the tree of the latest checkpoint:
//! - `checkpoint`: that signed note, as stored;
//! - `tile/<L>/<N>[.p/<W>]`: hash tiles, 256 hashes of tree level `8·L`
//!   each (fewer in the rightmost, partial, tile);
//! - `tile/entries/<N>[.p/<W>]`: entry bundles, 256 entries each, every
//!   entry its canonical bytes after a big-endian 16-bit length.
//!
//! Entries appended after the latest checkpoint are left out: tiles are
//! only meaningful against a signed tree. The export refuses a store whose
//! entries do not give that checkpoint's root (run `audit verify`), and a
//! directory that is not empty (stale tiles would mix with new ones).

use std::path::Path;

use super::checkpoint::Checkpoint;
use super::merkle::{self, NodeReader, Tree};

/// Tree levels a tile spans.
pub const HEIGHT: u8 = 8;

/// Hashes or entries in a full tile.
const WIDTH: u64 = 1 << HEIGHT;

/// A tiles directory that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum TilesError {
    /// Writing failed.
    #[error("cannot write the tiles: {0}")]
    Io(#[from] std::io::Error),
    /// The directory already holds something.
    #[error("{0} is not empty")]
    NotEmpty(String),
    /// Others could change the directory while it is written.
    #[error("{0}")]
    Unsafe(#[from] crate::data_dir::DataDirError),
    /// Nothing is signed yet.
    #[error("the log has no checkpoint yet")]
    NoCheckpoint,
    /// The store is not the tree its checkpoint signs.
    #[error("the stored entries do not give the latest checkpoint's tree ({0}): run `gatehouse audit verify`")]
    Mismatch(String),
}

/// A tiles directory's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiles {
    /// Entries in the tiles (the checkpoint's tree size).
    pub size: u64,
    /// Each file's path in the directory and its bytes, the checkpoint
    /// first.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The path of tile `n` of `level` (`None`: an entry bundle) holding
/// `width` hashes or entries: `n` in groups of three digits, each but the
/// last prefixed `x` (`1234067` → `x001/x234/067`).
pub fn path(level: Option<u8>, n: u64, width: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    let level = level.map_or_else(|| "entries".to_string(), |l| l.to_string());
    let partial = if width == WIDTH { String::new() } else { format!(".p/{width}") };
    format!("tile/{level}/{}{partial}", groups.join("/"))
}

/// The tiles directory of `entries` under the signed `checkpoint` (the
/// latest).
pub fn tiles(entries: &[Vec<u8>], checkpoint: &str) -> Result<Tiles, TilesError> {
    let signed = Checkpoint::peek(checkpoint).map_err(|e| TilesError::Mismatch(e.to_string()))?;
    let size = signed.size;
    let covered = usize::try_from(size)
        .ok()
        .and_then(|s| entries.get(..s))
        .ok_or_else(|| TilesError::Mismatch(format!("it signs {size} entries, the store holds {}", entries.len())))?;
    let tree = Tree::from_leaves(covered.iter().map(|e| merkle::leaf_hash(e)).collect());
    if merkle::root(&tree, size).ok() != Some(signed.root) {
        return Err(TilesError::Mismatch(format!("its root is not that of the first {size} entries")));
    }

    let mut out = vec![("checkpoint".to_string(), checkpoint.as_bytes().to_vec())];
    for (n, bundle) in covered.chunks(WIDTH as usize).enumerate() {
        let mut bytes = Vec::new();
        for entry in bundle {
            let length = u16::try_from(entry.len())
                .map_err(|_| TilesError::Mismatch(format!("an entry of {} bytes", entry.len())))?;
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(entry);
        }
        out.push((path(None, n as u64, bundle.len() as u64), bytes));
    }
    // Tile level L holds the complete subtrees of 256^L leaves.
    for level in 0u8.. {
        let tree_level = level * HEIGHT;
        let nodes = size.checked_shr(u32::from(tree_level)).unwrap_or(0);
        if nodes == 0 {
            break;
        }
        for n in 0..nodes.div_ceil(WIDTH) {
            let width = (nodes - n * WIDTH).min(WIDTH);
            let mut bytes = Vec::with_capacity(width as usize * 32);
            for i in 0..width {
                let hash = tree.node(tree_level, n * WIDTH + i).map_err(|e| TilesError::Mismatch(e.to_string()))?;
                bytes.extend_from_slice(&hash);
            }
            out.push((path(Some(level), n, width), bytes));
        }
    }
    Ok(Tiles { size, files: out })
}

/// Writes the tiles directory of `entries` under `checkpoint` into `dir`
/// (created if missing; refused unless empty, and unless owned by this
/// user and writable by no one else: another user who could write in it
/// could plant a link between the check and the writes and have the
/// export overwrite a file elsewhere). Files are created new, never
/// through an existing name.
pub fn write(dir: &Path, entries: &[Vec<u8>], checkpoint: &str) -> Result<Tiles, TilesError> {
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt as _;

    let tiles = tiles(entries, checkpoint)?;
    let mut directories = std::fs::DirBuilder::new();
    directories.recursive(true).mode(0o755);
    directories.create(dir)?;
    crate::data_dir::owned_private_dir(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(TilesError::NotEmpty(crate::policy::shown(dir)));
    }
    for (relative, bytes) in &tiles.files {
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            directories.create(parent)?;
        }
        std::fs::OpenOptions::new().write(true).create_new(true).open(target)?.write_all(bytes)?;
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::NoteSigner;

    /// Attack (an outside review): a directory another user can write in,
    /// where a link planted between the emptiness check and the writes
    /// made the export overwrite a file elsewhere. Such a directory is
    /// refused before anything is written; so is one owned by another
    /// user (when the test runs as root, which can hand one over).
    #[test]
    fn a_directory_others_can_write_in_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let entries: Vec<Vec<u8>> = (0..3).map(|i| format!("entry {i}").into_bytes()).collect();
        let tree = Tree::from_leaves(entries.iter().map(|e| merkle::leaf_hash(e)).collect());
        let root = merkle::root(&tree, 3).unwrap();
        let signer = NoteSigner::from_seed("tiles.test/log", [3; 32]).unwrap();
        let note =
            Checkpoint { origin: "tiles.test/log".into(), size: 3, root, grants: None }.sign(&[&signer]).unwrap();

        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(write(&open, &entries, &note), Err(TilesError::Unsafe(_))));
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "nothing written");
        if rustix::process::geteuid().is_root() {
            let theirs = base.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(matches!(write(&theirs, &entries, &note), Err(TilesError::Unsafe(_))));
        }
        let mine = base.path().join("mine/tiles");
        assert_eq!(write(&mine, &entries, &note).unwrap().size, 3);
        assert_eq!(std::fs::read(mine.join("tile/entries/000.p/3")).unwrap().len(), 3 * 2 + 3 * 7);
    }

    #[test]
    fn paths_group_the_index_by_three_digits_and_mark_partial_tiles() {
        assert_eq!(path(Some(0), 0, 256), "tile/0/000");
        assert_eq!(path(Some(0), 7, 3), "tile/0/007.p/3");
        assert_eq!(path(Some(2), 1000, 256), "tile/2/x001/000");
        assert_eq!(path(Some(1), 1_234_067, 255), "tile/1/x001/x234/067.p/255");
        assert_eq!(path(None, 999, 256), "tile/entries/999");
        assert_eq!(path(None, 5_000_000, 1), "tile/entries/x005/x000/000.p/1");
    }
}
