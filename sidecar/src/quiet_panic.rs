//! Catching a library's panic without its message on stderr.
//!
//! redb panics on some damaged files instead of returning an error; the
//! sidecar and the CLI catch that and report one clear line. But the
//! default panic hook has already printed the panic (a thread name, a
//! source location, an internal message) to stderr by the time
//! `catch_unwind` returns. Swapping the process-wide hook around the call
//! would also silence panics of other threads meanwhile, so the hook is
//! wrapped once instead: it stays silent only on a thread inside
//! [`catch`], and calls the previous hook everywhere else.

use std::cell::Cell;
use std::panic::{self, UnwindSafe};
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static WRAP_HOOK: Once = Once::new();

/// Runs `f`; `None` if it panicked, which is not printed.
pub fn catch<T>(f: impl FnOnce() -> T + UnwindSafe) -> Option<T> {
    WRAP_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|quiet| quiet.replace(true));
    let result = panic::catch_unwind(f);
    QUIET.with(|quiet| quiet.set(was_quiet));
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_and_other_results_pass_through() {
        assert_eq!(catch(|| 7), Some(7));
        assert_eq!(catch(|| -> u8 { panic!("boom") }), None);
        // The flag is restored: a later panic on this thread is reported
        // by the previous hook again (not observable here beyond the flag).
        assert!(!QUIET.with(Cell::get));
    }
}
