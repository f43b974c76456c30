//! Where the gateway's SQLite connections keep their temporary files (the
//! sorter's runs, `DISTINCT` and materialised sub-queries, the temporary
//! database): in memory, allocated from SQLite's own heap, so that the
//! process-wide heap limit ([`super::sqlite::SQLITE_HEAP_LIMIT`]) bounds
//! them as it bounds everything else SQLite holds.
//!
//! Why not `temp_store = MEMORY`, which keeps them in memory too: with it
//! SQLite's sorter never writes runs, and sorts everything an `ORDER BY`
//! collected in one step of its virtual machine, where no deadline reaches
//! (an outside review sorted 100,000 keys of 4 KiB for 4.5 s past a 1 s
//! deadline). With temporary *files*, the sorter sorts runs of at most the
//! connection's page cache (2 MiB) as rows come in, and merges them a
//! little at a time as rows go out, each between progress checks. And why
//! not files on disk: four `ORDER BY`s over a large recursive query from
//! one plugin wrote 4.4 GiB to `/tmp` in 4 s (an earlier review), bounded
//! by nothing.
//!
//! [`register`] adds a VFS of SQLite's default one (`unix`) in which a file
//! opened without a name (SQLite's temporary files, and only those) is a
//! list of chunks from `sqlite3_malloc64`; every named file (the database,
//! its WAL and shared memory) is the default VFS's own. A write that the
//! heap limit refuses fails with `SQLITE_IOERR_NOMEM`, which SQLite turns
//! into `SQLITE_NOMEM` (the plugin's `quota-exceeded`).

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

const VFS_NAME_C: &CStr = c"gatehouse-memory-temp";

/// The VFS's name, for `SqliteConnectOptions::vfs`.
pub const VFS_NAME: &str = match VFS_NAME_C.to_str() {
    Ok(name) => name,
    Err(_) => panic!("the VFS's name is UTF-8"),
};

/// Bytes per chunk: a temporary file grows a chunk at a time (no copy of
/// what it holds), and a run of the sorter (2 MiB) is 32 of them.
const CHUNK: usize = 64 << 10;

/// Registers the VFS (once per process) and answers its name, or `None`
/// when SQLite has no default VFS to build on or refuses the registration
/// (the caller then keeps SQLite's own, with temporary storage in memory).
pub fn register() -> Option<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` is thread-safe and initializes SQLite
        // if needed; the default VFS lives for the process.
        let default = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
        if default.is_null() {
            return false;
        }
        // SAFETY: `default` is SQLite's registered default VFS, never
        // freed; reading it is a plain copy of its fields.
        let mut vfs = unsafe { *default };
        // Every method but `xOpen` is the default VFS's own, called with
        // this VFS's pointer: `unix`'s ignore the pointer (they take their
        // state from `pAppData`, copied with them).
        let Ok(size) = c_int::try_from(size_of::<TempFile>()) else {
            return false;
        };
        vfs.szOsFile = vfs.szOsFile.max(size);
        vfs.pNext = ptr::null_mut();
        vfs.zName = VFS_NAME_C.as_ptr();
        vfs.xOpen = Some(open);
        // Leaked on purpose: SQLite keeps the pointer for the process.
        let vfs = Box::into_raw(Box::new(Fallback { vfs, default }));
        // SAFETY: `vfs` is a complete VFS that lives for the process;
        // registering does not make it the default.
        unsafe { ffi::sqlite3_vfs_register(ptr::addr_of_mut!((*vfs).vfs), 0) == ffi::SQLITE_OK }
    });
    registered.then_some(VFS_NAME)
}

/// The VFS and the default it builds on (`vfs` first, so that SQLite's
/// pointer to the VFS is a pointer to this).
#[repr(C)]
struct Fallback {
    vfs: ffi::sqlite3_vfs,
    default: *mut ffi::sqlite3_vfs,
}

/// A temporary file: SQLite's header (its methods) and the chunks.
#[repr(C)]
struct TempFile {
    base: ffi::sqlite3_file,
    data: *mut Chunks,
}

/// What a temporary file holds: `len` bytes in `CHUNK`-sized blocks from
/// SQLite's heap. Bytes past `len` inside a block are zero, so a file that
/// grows over a gap reads zeros there, as a file on disk does.
struct Chunks {
    blocks: Vec<ptr::NonNull<u8>>,
    len: usize,
}

impl Chunks {
    /// Makes the blocks cover `len` bytes (new ones zeroed); `false` when
    /// SQLite's heap limit refuses a block.
    fn cover(&mut self, len: usize) -> bool {
        while self.blocks.len() * CHUNK < len {
            // SAFETY: a plain allocation from SQLite's heap, counted
            // against its limit; freed in `shrink`.
            let Some(block) = ptr::NonNull::new(unsafe { ffi::sqlite3_malloc64(CHUNK as u64) }.cast::<u8>()) else {
                return false;
            };
            // SAFETY: `block` is a fresh allocation of CHUNK bytes.
            unsafe { block.as_ptr().write_bytes(0, CHUNK) };
            self.blocks.push(block);
        }
        true
    }

    /// Cuts the file to `len` bytes: frees the blocks past it and zeroes
    /// the rest of the last one.
    fn shrink(&mut self, len: usize) {
        let keep = len.div_ceil(CHUNK);
        for block in self.blocks.drain(keep.min(self.blocks.len())..) {
            // SAFETY: each block came from `sqlite3_malloc64` and is freed
            // once, here, after leaving the list.
            unsafe { ffi::sqlite3_free(block.as_ptr().cast()) };
        }
        if len < self.len && !len.is_multiple_of(CHUNK) {
            let block = self.blocks[len / CHUNK];
            let tail = CHUNK - len % CHUNK;
            // SAFETY: in bounds of the block: from `len % CHUNK` to its end.
            unsafe { block.as_ptr().add(len % CHUNK).write_bytes(0, tail) };
        }
        self.len = self.len.min(len);
    }

    /// Copies between the file at `offset` and `buf` (`into_file` says
    /// which way), block by block; the blocks must cover the range.
    fn copy(&self, offset: usize, buf: *mut u8, amount: usize, into_file: bool) {
        let mut done = 0;
        while done < amount {
            let at = offset + done;
            let n = (CHUNK - at % CHUNK).min(amount - done);
            // SAFETY: the block covers `at .. at + n` (the caller's promise)
            // and `buf` has `amount` bytes (SQLite's); they never overlap.
            unsafe {
                let block = self.blocks[at / CHUNK].as_ptr().add(at % CHUNK);
                if into_file {
                    ptr::copy_nonoverlapping(buf.add(done), block, n);
                } else {
                    ptr::copy_nonoverlapping(block, buf.add(done), n);
                }
            }
            done += n;
        }
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.shrink(0);
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(lock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// `xOpen`: a temporary file (no name) in memory, any other file by the
/// default VFS.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    if !name.is_null() {
        // SAFETY: `vfs` is a `Fallback` (the only VFS with this `xOpen`);
        // `file` has room for the default VFS's file (`szOsFile` is at
        // least its size), and the default fills it in.
        return unsafe {
            let default = (*vfs.cast::<Fallback>()).default;
            match (*default).xOpen {
                Some(open) => open(default, name, file, flags, out_flags),
                None => ffi::SQLITE_CANTOPEN,
            }
        };
    }
    #[cfg(test)]
    tests::OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let data = Box::into_raw(Box::new(Chunks { blocks: Vec::new(), len: 0 }));
    // SAFETY: `file` has `szOsFile` bytes, at least a `TempFile`; SQLite
    // calls `close` (which frees `data`) once `pMethods` is set.
    unsafe {
        file.cast::<TempFile>().write(TempFile { base: ffi::sqlite3_file { pMethods: &METHODS }, data });
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

/// The chunks of a file this VFS opened.
///
/// # Safety
/// `file` must be a `TempFile` opened by [`open`] and not yet closed, used
/// by one thread at a time (SQLite's connection mutex).
unsafe fn chunks<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Chunks {
    // SAFETY: the caller's promise.
    unsafe { &mut *(*file.cast::<TempFile>()).data }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file once; `data` came from `Box::into_raw`.
    unsafe {
        let file = file.cast::<TempFile>();
        drop(Box::from_raw((*file).data));
        (*file).data = ptr::null_mut();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amount: c_int, offset: i64) -> c_int {
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), usize::try_from(offset)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: SQLite calls the methods of an open file, under its mutex.
    let chunks = unsafe { chunks(file) };
    let have = chunks.len.saturating_sub(offset).min(amount);
    chunks.copy(offset, buf.cast(), have, false);
    if have == amount {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `buf` has `amount` bytes; a short read zeroes the rest, as
    // SQLite requires.
    unsafe { buf.cast::<u8>().add(have).write_bytes(0, amount - have) };
    ffi::SQLITE_IOERR_SHORT_READ
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, buf: *const c_void, amount: c_int, offset: i64) -> c_int {
    let (Ok(amount), Ok(offset)) = (usize::try_from(amount), usize::try_from(offset)) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: as for `read`.
    let chunks = unsafe { chunks(file) };
    let end = offset + amount;
    if !chunks.cover(end) {
        return ffi::SQLITE_IOERR_NOMEM;
    }
    chunks.copy(offset, buf.cast_mut().cast(), amount, true);
    chunks.len = chunks.len.max(end);
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let Ok(size) = usize::try_from(size) else {
        return ffi::SQLITE_IOERR_TRUNCATE;
    };
    // SAFETY: as for `read`.
    let chunks = unsafe { chunks(file) };
    if size <= chunks.len {
        chunks.shrink(size);
    } else if chunks.cover(size) {
        chunks.len = size;
    } else {
        return ffi::SQLITE_IOERR_NOMEM;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: as for `read`; `size` is SQLite's out-parameter.
    unsafe { *size = i64::try_from(chunks(file).len).unwrap_or(i64::MAX) };
    ffi::SQLITE_OK
}

/// Nothing to make durable: the file ends with its connection.
unsafe extern "C" fn sync(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

/// Nothing to lock: no other connection opens a temporary file.
unsafe extern "C" fn lock(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn check_reserved_lock(_: *mut ffi::sqlite3_file, reserved: *mut c_int) -> c_int {
    // SAFETY: SQLite's out-parameter.
    unsafe { *reserved = 0 };
    ffi::SQLITE_OK
}

/// No file control applies (size and mmap hints are hints).
unsafe extern "C" fn file_control(_: *mut ffi::sqlite3_file, _: c_int, _: *mut c_void) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn sector_size(_: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn device_characteristics(_: *mut ffi::sqlite3_file) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sqlx::{Connection as _, SqliteConnection};

    /// Temporary files this VFS opened in the test's process.
    pub(super) static OPENED: AtomicUsize = AtomicUsize::new(0);

    /// 20,000 rows of 500-byte keys (10 MB, five of the sorter's runs) in
    /// an order that is not the key's.
    const SORT: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                        SELECT printf('%0500d', (i * 7919) % 20011) AS k FROM n ORDER BY k";

    async fn connection(dir: &tempfile::TempDir) -> SqliteConnection {
        SqliteConnection::connect_with(&crate::databases::sqlite_options(&dir.path().join("t.db"))).await.unwrap()
    }

    /// A copy that crosses a block's end moves exactly its bytes: the part
    /// in the next block is what is left of it, not more (the source has
    /// marked bytes past the copy).
    #[test]
    fn a_copy_across_a_block_end_moves_exactly_its_bytes() {
        use super::{CHUNK, Chunks};
        let mut file = Chunks { blocks: Vec::new(), len: 0 };
        assert!(file.cover(2 * CHUNK));
        let mut source: Vec<u8> = (1..=40).collect();
        file.copy(CHUNK - 10, source.as_mut_ptr(), 20, true);
        let mut back = vec![0u8; 2 * CHUNK];
        file.copy(0, back.as_mut_ptr(), 2 * CHUNK, false);
        assert_eq!(&back[CHUNK - 10..CHUNK + 10], &source[..20]);
        assert!(back[..CHUNK - 10].iter().chain(&back[CHUNK + 10..]).all(|&b| b == 0), "bytes past the copy");
    }

    /// The file's methods as SQLite uses them: writes across chunk ends
    /// read back; a read past the end is short and zero-filled; bytes cut
    /// by a truncation read as zeros when the file grows over them again,
    /// as on disk; the size follows.
    #[test]
    fn a_temporary_file_reads_back_what_was_written_as_a_file_on_disk_does() {
        use super::{CHUNK, TempFile, close, file_size, open, read, truncate, write};
        use libsqlite3_sys as ffi;
        let mut file = std::mem::MaybeUninit::<TempFile>::uninit();
        let file = file.as_mut_ptr().cast::<ffi::sqlite3_file>();
        let size = |file| {
            let mut size = -1;
            // SAFETY: an open temporary file; `size` is a plain out-value.
            assert_eq!(unsafe { file_size(file, &mut size) }, ffi::SQLITE_OK);
            size
        };
        let at = |offset: usize| i64::try_from(offset).unwrap();
        // SAFETY: a thread-safe read of SQLite's statistics.
        let held = || unsafe { ffi::sqlite3_memory_used() };
        let before = held();
        // SAFETY: `file` has room for a `TempFile`; open without a name
        // makes a temporary file, closed at the end.
        unsafe {
            assert_eq!(open(std::ptr::null_mut(), std::ptr::null(), file, 0, std::ptr::null_mut()), ffi::SQLITE_OK);
            let data = [7u8; 10];
            assert_eq!(write(file, data.as_ptr().cast(), 10, at(CHUNK - 5)), ffi::SQLITE_OK);
            assert_eq!(size(file), at(CHUNK + 5));
            let mut back = [0u8; 10];
            assert_eq!(read(file, back.as_mut_ptr().cast(), 10, at(CHUNK - 5)), ffi::SQLITE_OK);
            assert_eq!(back, data);

            let mut past = [1u8; 8];
            assert_eq!(read(file, past.as_mut_ptr().cast(), 8, at(CHUNK + 1)), ffi::SQLITE_IOERR_SHORT_READ);
            assert_eq!(past, [7, 7, 7, 7, 0, 0, 0, 0]);

            assert_eq!(truncate(file, at(CHUNK - 3)), ffi::SQLITE_OK);
            assert_eq!(size(file), at(CHUNK - 3));
            assert_eq!(write(file, data.as_ptr().cast(), 1, at(2 * CHUNK)), ffi::SQLITE_OK);
            let mut regrown = [1u8; 10];
            assert_eq!(read(file, regrown.as_mut_ptr().cast(), 10, at(CHUNK - 5)), ffi::SQLITE_OK);
            assert_eq!(regrown, [7, 7, 0, 0, 0, 0, 0, 0, 0, 0], "cut bytes came back");

            assert_eq!(truncate(file, at(3 * CHUNK)), ffi::SQLITE_OK);
            assert_eq!(size(file), at(3 * CHUNK));
            assert_eq!(super::chunks(file).blocks.len(), 3, "no more chunks than the length needs");
            assert!(held() >= before + 3 * i64::try_from(CHUNK).unwrap(), "the chunks are SQLite's heap");
            assert_eq!(close(file), ffi::SQLITE_OK);
        }
        assert_eq!(held(), before, "closing frees every chunk");
    }

    /// A sort larger than one run is written to this VFS's files (not kept
    /// in one in-memory list, not written to disk), and read back whole
    /// and in order: chunks cross, the runs merge.
    #[tokio::test]
    async fn a_large_sort_runs_through_memory_files_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connection(&dir).await;
        let before = OPENED.load(Ordering::Relaxed);
        let keys: Vec<String> = sqlx::query_scalar(SORT).bind(20_000).fetch_all(&mut conn).await.unwrap();
        assert!(OPENED.load(Ordering::Relaxed) > before, "the sort wrote no run to a temporary file");
        let mut expected: Vec<String> = (1..=20_000u64).map(|i| format!("{:0500}", (i * 7919) % 20011)).collect();
        expected.sort();
        assert!(keys == expected, "rows lost, changed or out of order");
    }

    /// What a temporary file holds is SQLite's heap: past the process's
    /// heap limit the statement fails with `SQLITE_NOMEM` (the plugin's
    /// `quota-exceeded`) instead of growing, and the connection goes on.
    #[tokio::test]
    async fn temporary_files_count_against_sqlites_heap_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connection(&dir).await;
        // SAFETY: a plain setter of SQLite's process-wide limit (this test
        // runs in a process of its own under nextest; put back below).
        let previous = unsafe { libsqlite3_sys::sqlite3_hard_heap_limit64(16 << 20) };
        // 100,000 keys: 50 MB of runs, against 16 MiB.
        let err = sqlx::query_scalar::<_, String>(SORT).bind(100_000).fetch_all(&mut conn).await.unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        // SAFETY: as above.
        unsafe { libsqlite3_sys::sqlite3_hard_heap_limit64(previous) };
        assert_eq!(code.as_deref(), Some("7"), "{err}");
        let keys: Vec<String> = sqlx::query_scalar(SORT).bind(100).fetch_all(&mut conn).await.unwrap();
        assert_eq!(keys.len(), 100);
    }
}
