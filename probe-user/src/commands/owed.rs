//! Failures the event rate limit kept off the stream, owed until now: the kernel counts them
//! per (process, kind) and the next event carries the count (`suppressed`). A process that
//! stops failing, or a run that ends, would leave that count unsaid; this settles it, so a
//! stream's events plus their `suppressed` counts add up to the samples' exact counts.

use std::collections::BTreeMap;

use probe_common::event::Limiter;

/// A limiter window the kernel has not touched for this long is quiet: its count is stable
/// until the next failure, which opens a new window and carries the whole count.
const QUIET_NS: u64 = 2_000_000_000;

/// What was already reported per (pid, event kind) of counts the kernel still holds.
#[derive(Default)]
pub struct Owed {
    settled: BTreeMap<(u32, u16), u64>,
}

impl Owed {
    /// An event carrying `suppressed` for (pid, kind): what was settled already is not
    /// counted twice. Returns the count to print with it.
    pub fn on_event(&mut self, pid: u32, kind: u16, suppressed: u32) -> u32 {
        let done = self.settled.remove(&(pid, kind)).unwrap_or(0);
        (u64::from(suppressed).saturating_sub(done)) as u32
    }

    /// The counts to settle now, (pid, kind, count), from the limiter's entries read at
    /// `now_ns` (CLOCK_MONOTONIC): those of quiet windows, or every one when `all` (the run
    /// ends).
    pub fn settle(&mut self, entries: &[(u32, u16, Limiter)], now_ns: u64, all: bool) -> Vec<(u32, u16, u64)> {
        let mut out = Vec::new();
        for &(pid, kind, l) in entries {
            let quiet = now_ns.saturating_sub(l.window_start) >= QUIET_NS;
            let done = self.settled.get(&(pid, kind)).copied().unwrap_or(0);
            let owed = u64::from(l.suppressed).saturating_sub(done);
            if owed > 0 && (quiet || all) {
                self.settled.insert((pid, kind), u64::from(l.suppressed));
                out.push((pid, kind, owed));
            }
        }
        out
    }

    /// Forgets processes that have exited and whose counts were settled.
    pub fn forget(&mut self, gone: impl Fn(u32) -> bool) {
        self.settled.retain(|(pid, _), _| !gone(*pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(window_start: u64, suppressed: u32) -> Limiter {
        Limiter { window_start, sent: 20, suppressed }
    }

    #[test]
    fn a_quiet_count_is_settled_once_and_not_again_with_the_next_event() {
        let mut o = Owed::default();
        // Still failing (window 1 s old): nothing yet.
        assert!(o.settle(&[(7, 2, l(1_000_000_000, 80))], 2_000_000_000, false).is_empty());
        // Quiet for 2 s: the 80 are settled.
        assert_eq!(o.settle(&[(7, 2, l(1_000_000_000, 80))], 3_000_000_000, false), vec![(7, 2, 80)]);
        assert!(o.settle(&[(7, 2, l(1_000_000_000, 80))], 4_000_000_000, false).is_empty());
        // It fails again: the next event carries 80 (+ 0 new): nothing more to print with it.
        assert_eq!(o.on_event(7, 2, 80), 0);
        // Later suppressions are owed afresh.
        assert_eq!(o.settle(&[(7, 2, l(9_000_000_000, 5))], 12_000_000_000, false), vec![(7, 2, 5)]);
    }

    #[test]
    fn the_end_of_a_run_settles_everything_owed() {
        let mut o = Owed::default();
        let entries = [(7, 2, l(1_000_000_000, 30)), (8, 1, l(1_000_000_000, 0))];
        assert_eq!(o.settle(&entries, 1_500_000_000, true), vec![(7, 2, 30)]);
        // An event after a partial settle carries the rest only.
        assert_eq!(o.on_event(7, 2, 41), 11);
    }
}
