//! Reading a file that settings or a policy point at, without trusting
//! what it is: a FIFO would block the open until a writer comes, a device
//! such as `/dev/zero` would never end the read, and a runaway file would
//! exhaust memory. Components, secrets and database URLs are read here.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// A FIFO, a device, a directory, a socket.
    #[error("not a regular file")]
    NotRegular,
    /// More than the cap.
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    /// The file could not be opened or read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the regular file at `path` (symbolic links followed), if it holds
/// at most `cap` bytes.
pub fn read_regular_file(path: &Path, cap: u64) -> Result<Vec<u8>, BoundedReadError> {
    // Checked before opening, and opened non-blocking: opening a FIFO
    // would otherwise wait for a writer. Checked again on the open file,
    // in case the path was swapped in between.
    if !std::fs::metadata(path)?.is_file() {
        return Err(BoundedReadError::NotRegular);
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(BoundedReadError::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(BoundedReadError::TooLarge(cap));
    }
    Ok(bytes)
}

/// `O_NONBLOCK` on Linux (the same value on every architecture Rust's std
/// supports there), without a libc dependency for one constant.
const O_NONBLOCK: i32 = 0o4000;

#[cfg(test)]
mod tests {
    use super::*;

    /// `cap` bytes are read; one more is refused, not cut.
    #[test]
    fn a_file_of_exactly_cap_bytes_is_read() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"0123456789").unwrap();
        assert_eq!(read_regular_file(file.path(), 10).unwrap(), b"0123456789");
        assert!(matches!(read_regular_file(file.path(), 9), Err(BoundedReadError::TooLarge(9))));
    }
}
