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

use crate::data_dir::DataDirError;

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
    Unsafe(#[from] DataDirError),
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
/// (created if missing). `dir` is opened once, not through a link, and
/// refused unless it is empty, owned by this user and writable by no one
/// else; everything is then made relative to that handle, never through
/// an existing name. So no one can redirect the writes: not by planting a
/// link in it (another user who could write in it could, between the
/// check and the writes), nor by swapping the path for another directory.
pub fn write(dir: &Path, entries: &[Vec<u8>], checkpoint: &str) -> Result<Tiles, TilesError> {
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt as _;

    use rustix::fs::{Mode, OFlags};

    let tiles = tiles(entries, checkpoint)?;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open(dir, directory, Mode::empty()).map_err(|e| {
        // O_NOFOLLOW with O_DIRECTORY fails a link with ENOTDIR or ELOOP.
        let link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
        TilesError::Io(std::io::Error::other(format!(
            "{}: {}",
            crate::policy::shown(dir),
            if link { "a symbolic link (refused: name the directory itself)".to_string() } else { e.to_string() }
        )))
    })?;
    crate::data_dir::owned_and_private(dir, &std::fs::File::from(root.try_clone()?).metadata()?)?;
    let listing = rustix::fs::Dir::read_from(&root).map_err(std::io::Error::from)?;
    for entry in listing {
        let name = entry.map_err(std::io::Error::from)?;
        if !matches!(name.file_name().to_bytes(), b"." | b"..") {
            return Err(TilesError::NotEmpty(crate::policy::shown(dir)));
        }
    }
    for (relative, bytes) in &tiles.files {
        let mut parts: Vec<&str> = relative.split('/').collect();
        let file = parts.pop().expect("a path has a name");
        let mut at = root.try_clone()?;
        for part in parts {
            match rustix::fs::mkdirat(&at, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
            at = rustix::fs::openat(&at, part, directory, Mode::empty()).map_err(std::io::Error::from)?;
        }
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&at, file, create, Mode::from_raw_mode(0o644)).map_err(std::io::Error::from)?;
        std::fs::File::from(fd).write_all(bytes)?;
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::NoteSigner;

    /// Attacks (two outside reviews): a directory another user can write
    /// in, where a link planted between the emptiness check and the writes
    /// made the export overwrite a file elsewhere; and a path that is a
    /// link, swapped between a good directory and the attacker's after the
    /// check. Both are refused before anything is written; so is a
    /// directory owned by another user (when the test runs as root, which
    /// can hand one over). The writes go through the one handle opened.
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
        let good = base.path().join("good");
        std::fs::create_dir(&good).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let error = write(&link, &entries, &note).unwrap_err();
        assert!(error.to_string().contains("a symbolic link"), "{error}");
        assert_eq!(std::fs::read_dir(&good).unwrap().count(), 0, "nothing written");
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
