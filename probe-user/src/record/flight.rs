//! The flight recorder's memory: the last minutes of the stream, kept to be written out when
//! something goes wrong, bounded in time and in bytes.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

/// What one kept line costs besides its text: its slot in the ring (the time and the `String`'s
/// pointer, capacity and length), 40 bytes on 64-bit targets.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<(SystemTime, String)>();

/// The last `keep` of lines, in memory, bounded by `max_bytes` as well (oldest dropped first; drops
/// counted).
#[derive(Debug)]
pub struct FlightRing {
    keep: Duration,
    max_bytes: usize,
    lines: VecDeque<(SystemTime, String)>,
    bytes: usize,
    dropped_for_size: u64,
}

impl FlightRing {
    pub fn new(keep: Duration, max_bytes: usize) -> FlightRing {
        FlightRing { keep, max_bytes, lines: VecDeque::new(), bytes: 0, dropped_for_size: 0 }
    }

    /// Keeps `line`, pushed at `now`; drops the lines older than `keep` by then, and then the
    /// oldest while over `max_bytes` (the new line itself if it alone is over). Lines leave in push
    /// order: after a clock step back, the lines pushed since wait behind the older ones, which
    /// leave when they would have (`max_bytes` still holds).
    pub fn push(&mut self, now: SystemTime, line: String) {
        self.expire(now);
        self.bytes += line.len() + ENTRY_OVERHEAD;
        self.lines.push_back((now, line));
        while self.bytes > self.max_bytes {
            let Some((_, old)) = self.lines.pop_front() else { break };
            self.bytes -= old.len() + ENTRY_OVERHEAD;
            self.dropped_for_size += 1;
        }
    }

    /// Everything kept, oldest first, emptying the ring.
    pub fn drain(&mut self) -> Vec<String> {
        self.bytes = 0;
        self.lines.drain(..).map(|(_, line)| line).collect()
    }

    /// Memory held by the lines: their lengths plus [`ENTRY_OVERHEAD`] each (a `String`'s spare
    /// capacity is not counted: lines from `serde_json::to_string` have little).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Lines dropped because of `max_bytes` before their time was up.
    pub fn dropped_for_size(&self) -> u64 {
        self.dropped_for_size
    }

    /// Lines kept now.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Drops the lines pushed more than `keep` before `now`.
    fn expire(&mut self, now: SystemTime) {
        while let Some((at, line)) = self.lines.front() {
            // A line "from the future" (the clock stepped back since) has age 0.
            if now.duration_since(*at).unwrap_or_default() <= self.keep {
                break;
            }
            self.bytes -= line.len() + ENTRY_OVERHEAD;
            self.lines.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_790_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn lines_older_than_keep_leave_first() {
        let mut ring = FlightRing::new(Duration::from_secs(60), 1 << 20);
        for s in 0..100 {
            ring.push(at(s), format!("line {s}"));
        }
        // At 99 s the last 60 s are 39..=99: 61 lines (the one exactly 60 s old stays).
        let kept = ring.drain();
        assert_eq!(kept.len(), 61);
        assert_eq!(kept.first().map(String::as_str), Some("line 39"));
        assert_eq!(kept.last().map(String::as_str), Some("line 99"));
        assert_eq!(ring.dropped_for_size(), 0, "time is not size");
    }

    #[test]
    fn over_max_bytes_the_oldest_go_and_are_counted() {
        let line = "x".repeat(60);
        let per = line.len() + ENTRY_OVERHEAD;
        let mut ring = FlightRing::new(Duration::from_secs(3600), per * 10);
        for s in 0..25 {
            ring.push(at(s), format!("{s:>60}"));
            assert!(ring.bytes() <= per * 10);
        }
        assert_eq!(ring.len(), 10);
        assert_eq!(ring.bytes(), per * 10);
        assert_eq!(ring.dropped_for_size(), 15);
        let kept = ring.drain();
        assert_eq!(kept.first().map(|l| l.trim()), Some("15"));
        // A line larger than the whole ring is dropped itself, counted.
        ring.push(at(30), "y".repeat(per * 11));
        assert!(ring.is_empty());
        assert_eq!(ring.dropped_for_size(), 16);
    }

    #[test]
    fn drain_is_oldest_first_and_empties() {
        let mut ring = FlightRing::new(Duration::from_secs(10), 1 << 20);
        for s in 0..5 {
            ring.push(at(s), s.to_string());
        }
        assert_eq!(ring.bytes(), 5 + 5 * ENTRY_OVERHEAD);
        assert_eq!(ring.drain(), ["0", "1", "2", "3", "4"]);
        assert_eq!((ring.len(), ring.bytes()), (0, 0));
        assert!(ring.drain().is_empty());
        // After a drain the ring fills again; expiry still works from the new lines.
        ring.push(at(100), "a".into());
        ring.push(at(111), "b".into());
        assert_eq!(ring.drain(), ["b"]);
    }

    #[test]
    fn a_clock_stepped_back_expires_nothing_early() {
        let mut ring = FlightRing::new(Duration::from_secs(10), 1 << 20);
        ring.push(at(100), "before".into());
        ring.push(at(50), "after the step".into());
        assert_eq!(ring.len(), 2);
        // 10 s after the first line's time by the new clock, both are still within keep of it.
        ring.push(at(60), "later".into());
        assert_eq!(ring.drain(), ["before", "after the step", "later"]);
    }
}
