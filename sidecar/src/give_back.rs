//! Giving the memory the C allocator keeps after large frees back to the
//! system.
//!
//! glibc keeps freed memory in the arena of the thread that freed it, and
//! gives back only the top of each heap: a large buffer freed between
//! live small ones stays resident. After floods of large key-value answers
//! an idle sidecar held 382 MB (170 MB before) in an outside review, and a
//! SQLite statement that drove its heap to the limit left 660 MB. A trim
//! (`malloc_trim`) walks every arena and returns their free pages; it may
//! take a few hundred milliseconds, so callers count what they free
//! ([`freeing`]) and one background thread trims, at most once a second.
//! Elsewhere than glibc nothing is trimmed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// How many bytes of freed buffers [`freeing`] counts before it asks for
/// a trim: the retention measured came from tens of such buffers.
pub const TRIM_AFTER_BYTES: u64 = 64 << 20;

/// How long the trimmer waits after being asked: the caller's buffers are
/// freed once its answer has been copied into the guest, a moment after
/// it asked.
const DELAY: Duration = Duration::from_millis(100);

/// The least time from one trim's start to the next one's.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes counted by [`freeing`] since it last asked for a trim.
static FREED: AtomicU64 = AtomicU64::new(0);

/// Trims done by the background thread (read by tests).
static TRIMS: AtomicU64 = AtomicU64::new(0);

/// Counts `bytes` of buffers a call is about to free (a key-value answer
/// or value), and asks for a trim each time [`TRIM_AFTER_BYTES`] have been
/// counted.
pub fn freeing(bytes: u64) {
    let counted = FREED.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
    if counted >= TRIM_AFTER_BYTES {
        FREED.store(0, Ordering::Relaxed);
        soon();
    }
}

/// Asks the background thread for a trim, [`DELAY`] from now or, if one
/// was done less than [`MIN_INTERVAL`] ago, once that has passed. Asks
/// made meanwhile are one ask.
fn soon() {
    static ASK: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let ask = ASK.get_or_init(|| {
        let (ask, asked) = sync_channel(1);
        std::thread::Builder::new().name("gatehouse-trim".into()).spawn(move || trimmer(&asked)).ok().map(|_| ask)
    });
    if let Some(ask) = ask {
        let _ = ask.try_send(());
    }
}

fn trimmer(asked: &Receiver<()>) {
    while asked.recv().is_ok() {
        std::thread::sleep(DELAY);
        let started = Instant::now();
        trim();
        TRIMS.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed()));
    }
}

/// Trims now, on this thread.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's `malloc_trim` is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How many trims the background thread has done.
pub fn trims() -> u64 {
    TRIMS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's resident bytes.
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * rustix::param::page_size() as u64
    }

    /// The retention this module is for: 64 MiB of buffers below glibc's
    /// mmap threshold, each followed by a small live allocation, freed on
    /// another thread. Without a trim they stay resident; after one they
    /// are given back.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_trim_gives_back_large_buffers_freed_between_live_ones() {
        const BUFFERS: usize = 640;
        const SIZE: usize = 100 << 10;
        let keepers = std::thread::spawn(|| {
            let mut keepers = Vec::with_capacity(BUFFERS);
            let mut buffers = Vec::with_capacity(BUFFERS);
            for n in 0..BUFFERS {
                buffers.push(vec![n as u8 | 1; SIZE]);
                keepers.push(vec![1u8; 64]);
            }
            let held = resident();
            drop(buffers);
            (keepers, held)
        });
        let (keepers, held) = keepers.join().unwrap();
        let freed = (BUFFERS * SIZE) as u64;
        assert!(resident() + freed / 2 > held, "freed without a trim: the test shows nothing");
        let before = trims();
        freeing(TRIM_AFTER_BYTES - 1);
        std::thread::sleep(DELAY * 3);
        assert_eq!(trims(), before, "asked below the bound");
        freeing(1);
        let asked = Instant::now();
        while trims() == before {
            assert!(asked.elapsed() < Duration::from_secs(10), "no trim after {TRIM_AFTER_BYTES} bytes");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            resident() + freed / 2 <= held,
            "{} MB resident after the trim, {} MB before",
            resident() >> 20,
            held >> 20
        );
        drop(keepers);
    }
}
