//! Work on large values off the async executor's threads.
//!
//! A host call runs on an executor thread until it awaits something, and
//! every other task queued on that thread (other plugins' timers, I/O and
//! deadlines) waits meanwhile. Copying a 16 MiB value out of the store or
//! hashing it takes milliseconds: review 29 kept 16 invocations opening
//! `cas` handles on one 16 MB value (a SHA-256 each, ~12 ms) and another
//! plugin's 5 ms sleep overshot by up to 709 ms. Work on more than
//! [`INLINE_BYTES`] goes to tokio's blocking pool instead; smaller work
//! stays inline, where a hand-off would cost more than the work.

use std::sync::atomic::{AtomicU64, Ordering};

/// Work sent to the blocking pool so far (read by tests).
static OFFLOADED: AtomicU64 = AtomicU64::new(0);

/// The most bytes of value worked on inline: copying or hashing this
/// much takes well under a millisecond.
pub const INLINE_BYTES: u64 = 256 << 10;

/// Runs `work` on `bytes` bytes here when they are at most
/// [`INLINE_BYTES`], on a blocking thread otherwise. A panic in `work`
/// goes on in the caller, as it would inline.
pub async fn sized<T: Send + 'static>(bytes: u64, work: impl FnOnce() -> T + Send + 'static) -> T {
    if bytes <= INLINE_BYTES {
        return work();
    }
    OFFLOADED.fetch_add(1, Ordering::Relaxed);
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(failed) => std::panic::resume_unwind(failed.into_panic()),
    }
}

/// How much work has gone to the blocking pool.
pub fn offloaded() -> u64 {
    OFFLOADED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large work leaves the calling thread; small work does not.
    #[tokio::test]
    async fn work_past_the_inline_bound_runs_on_another_thread() {
        let here = std::thread::current().id();
        let ran_on = |bytes| sized(bytes, || std::thread::current().id());
        assert_eq!(ran_on(INLINE_BYTES).await, here);
        assert_eq!(offloaded(), 0);
        assert_ne!(ran_on(INLINE_BYTES + 1).await, here);
        assert_eq!(offloaded(), 1);
    }

    #[tokio::test]
    #[should_panic(expected = "in the work")]
    async fn a_panic_in_offloaded_work_goes_on_in_the_caller() {
        sized(u64::MAX, || panic!("in the work")).await
    }
}
