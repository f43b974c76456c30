//! Log volume over time: a budget of events and bytes per one-second
//! window, for a plugin across all its invocations, and for the server's
//! own per-request lines. A per-invocation budget alone lets a caller who
//! can start invocations (or requests) fast write without bound: 3,000
//! calls, 4 at a time, once wrote 782 MB in 3.9 s.
//!
//! Pure bookkeeping: the caller writes (or drops) the line, and reports what
//! a window dropped when the next one opens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// What a window dropped: reported once, when the next window opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    /// Events (lines) not written.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The verdict on one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; first report what the previous window dropped, if anything.
    Write(Option<Dropped>),
    /// Drop it (counted).
    Drop,
}

/// At most `max_events` events and `max_bytes` bytes per [`WINDOW`].
#[derive(Debug)]
pub struct LogWindow {
    max_events: u64,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    opened: Instant,
    events: u64,
    bytes: u64,
    dropped: Dropped,
}

impl LogWindow {
    /// A budget of `max_events` and `max_bytes` per second.
    pub fn new(max_events: u64, max_bytes: u64) -> Self {
        LogWindow {
            max_events,
            max_bytes,
            state: Mutex::new(State { opened: Instant::now(), events: 0, bytes: 0, dropped: Dropped::default() }),
        }
    }

    /// Takes one event of `bytes` from the current window, if it fits.
    pub fn admit(&self, bytes: u64) -> Admit {
        self.admit_at(Instant::now(), bytes)
    }

    fn admit_at(&self, now: Instant, bytes: u64) -> Admit {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = None;
        if now.saturating_duration_since(state.opened) >= WINDOW {
            let dropped = std::mem::take(&mut state.dropped);
            report = (dropped.events > 0).then_some(dropped);
            *state = State { opened: now, events: 0, bytes: 0, dropped: Dropped::default() };
        }
        if state.events < self.max_events && state.bytes.saturating_add(bytes) <= self.max_bytes {
            state.events += 1;
            state.bytes += bytes;
            return Admit::Write(report);
        }
        // Not written, so what the earlier window dropped is still owed:
        // fold it into this one's count rather than lose it.
        let carried = report.unwrap_or_default();
        state.dropped.events += 1 + carried.events;
        state.dropped.bytes += bytes + carried.bytes;
        Admit::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_budget_then_drops_and_reports_once() {
        let window = LogWindow::new(3, 100);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(window.admit_at(start, 10), Admit::Write(None));
        }
        assert_eq!(window.admit_at(start, 10), Admit::Drop);
        assert_eq!(window.admit_at(start + Duration::from_millis(999), 5), Admit::Drop);
        let next = start + WINDOW;
        assert_eq!(window.admit_at(next, 10), Admit::Write(Some(Dropped { events: 2, bytes: 15 })));
        assert_eq!(window.admit_at(next, 10), Admit::Write(None));
        // Bytes bound too.
        assert_eq!(window.admit_at(next, 81), Admit::Drop);
        assert_eq!(window.admit_at(next, 80), Admit::Write(None));
        // A window that dropped nothing reports nothing.
        let third = next + WINDOW;
        assert_eq!(window.admit_at(third, 1), Admit::Write(Some(Dropped { events: 1, bytes: 81 })));
        assert_eq!(window.admit_at(third + WINDOW, 1), Admit::Write(None));
    }

    #[test]
    fn a_drop_count_is_never_lost_when_the_next_window_starts_full() {
        let window = LogWindow::new(1, 100);
        let start = Instant::now();
        assert_eq!(window.admit_at(start, 200), Admit::Drop);
        let next = start + WINDOW;
        assert_eq!(window.admit_at(next, 200), Admit::Drop);
        let later = next + WINDOW;
        assert_eq!(window.admit_at(later, 1), Admit::Write(Some(Dropped { events: 2, bytes: 400 })));
    }
}
