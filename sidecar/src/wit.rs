//! The `gatehouse:services` WIT package this binary serves, embedded so
//! that `gatehouse wit DIR` can hand a plugin author exactly the interfaces
//! the sidecar they run implements, with no checkout of this repository.

use std::path::{Path, PathBuf};

/// Each file of `wit/`, by name.
pub const FILES: &[(&str, &str)] = &[
    ("http-client.wit", include_str!("../../wit/http-client.wit")),
    ("kv.wit", include_str!("../../wit/kv.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("sql.wit", include_str!("../../wit/sql.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("worlds.wit", include_str!("../../wit/worlds.wit")),
];

/// Writes the package into `dir` (created if missing), returning the
/// files written. Existing files of the same names are replaced.
pub fn write_to(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    FILES
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// A file added to `wit/` must be embedded too, or `gatehouse wit`
    /// would hand authors an incomplete package.
    #[test]
    fn every_file_of_the_wit_directory_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = super::FILES.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(embedded, on_disk);
        for (name, text) in super::FILES {
            assert_eq!(&std::fs::read_to_string(dir.join(name)).unwrap(), text, "{name}");
        }
    }
}
