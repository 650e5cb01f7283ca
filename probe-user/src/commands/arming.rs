//! When to attach the fd-failure hook on demand (`--syscall-hooks on-demand`, the default).
//!
//! On kernels without fexit the only exact EMFILE/ENFILE hook is the raw `sys_exit`
//! tracepoint, and while it is attached every system call of every process on the host takes
//! the slow path. A process only fails with EMFILE near its RLIMIT_NOFILE, so the hook is
//! attached while some process is near it: from half the limit, or when the current growth
//! would reach the limit within [`AHEAD_S`]; detached once none has been near for
//! [`QUIET_S`]. Processes are found two ways: the ones with activity in an interval come with
//! their fds read already (the samples), and every [`SCAN_EVERY_S`] a scan of the host's fd
//! tables (/proc/PID/status `FDSize`, which grows in powers of two as fds are allocated)
//! finds the quiet ones; a process at a quarter of its limit is then read every interval.
//!
//! What this cannot see: a process going from under a quarter (or half, between scans) of its
//! limit to EMFILE within one interval has its first failures uncounted; `status` says the
//! hook is attached on demand (`armed`), and `--syscall-hooks fd` is exact.
//!
//! The same readings feed the fd warning (`diagnosis::verdict::FdTrend`), whatever the hook.

use std::collections::BTreeMap;

use crate::{commands::filter::Filter, domain::model::Sample, system::procinfo};

/// Attach from this fraction of the limit...
pub const NEAR: f64 = 0.5;
/// ...or when the limit would be reached within this many seconds at the current rate.
pub const AHEAD_S: f64 = 10.0;
/// Detach once no process has been near for this long.
pub const QUIET_S: f64 = 10.0;
/// Read a process every interval from this fraction of its limit.
pub const TRACK: f64 = 0.25;
/// How often the host's fd tables are scanned for processes without activity.
pub const SCAN_EVERY_S: f64 = 2.0;

pub use crate::diagnosis::verdict::FdReading;

#[derive(Debug, Default)]
pub struct FdArming {
    /// Processes read every interval: their open fds at the last reading.
    tracked: BTreeMap<u32, u64>,
    armed: bool,
    /// Seconds since a process was last near, while armed.
    quiet_s: f64,
    /// The processes that armed it at the last update.
    near: Vec<u32>,
}

impl FdArming {
    /// Takes one interval's readings (`interval_s` after the previous update) and returns
    /// whether the hook should be attached now. A tracked process missing from `readings` has
    /// exited.
    pub fn update(&mut self, readings: &[FdReading], interval_s: f64) -> bool {
        let mut tracked = BTreeMap::new();
        self.near.clear();
        for r in readings {
            if r.limit == 0 {
                continue;
            }
            let rate = match self.tracked.get(&r.pid) {
                Some(&prev) if interval_s > 0.0 && r.open > prev => (r.open - prev) as f64 / interval_s,
                _ => 0.0,
            };
            let open = r.open as f64;
            let limit = r.limit as f64;
            if open >= NEAR * limit || (rate > 0.0 && open + rate * AHEAD_S >= limit) {
                self.near.push(r.pid);
            }
            if open >= TRACK * limit {
                tracked.insert(r.pid, r.open);
            }
        }
        self.tracked = tracked;
        if !self.near.is_empty() {
            self.armed = true;
            self.quiet_s = 0.0;
        } else if self.armed {
            self.quiet_s += interval_s;
            if self.quiet_s >= QUIET_S {
                self.armed = false;
            }
        }
        self.armed
    }

    /// Processes to read next interval whether or not they are active.
    pub fn tracked(&self) -> impl Iterator<Item = u32> + '_ {
        self.tracked.keys().copied()
    }

    /// The processes near their limit at the last update.
    pub fn near(&self) -> &[u32] {
        &self.near
    }
}

/// Whether a process whose fd table holds `fd_table_size` slots may be at [`TRACK`] of
/// `limit`: the table is larger than the highest fd in use, so a smaller table means fewer
/// open fds.
pub fn worth_reading(fd_table_size: u64, limit: u64) -> bool {
    fd_table_size as f64 >= TRACK * limit as f64
}

/// The live side: readings from the interval's samples, the tracked processes and the
/// periodic scan of the host's fd tables.
#[derive(Debug, Default)]
pub struct LiveArming {
    pub policy: FdArming,
    since_scan_s: f64,
}

impl LiveArming {
    /// Whether the fd hook should be attached after this interval (`readings` from `read`).
    pub fn tick(&mut self, readings: &[FdReading], interval_s: f64) -> bool {
        self.policy.update(readings, interval_s)
    }

    /// This interval's readings: the samples', the tracked processes', and every
    /// [`SCAN_EVERY_S`] those the scan of the host's fd tables finds near a quarter of their
    /// limit. `watched` says which processes the user watches (the samples are all watched).
    pub fn read(&mut self, samples: &[Sample], interval_s: f64, watched: &Filter) -> Vec<FdReading> {
        let mut readings: BTreeMap<u32, FdReading> = BTreeMap::new();
        for s in samples {
            if let (Some(open), Some(limit)) = (s.open_fds, s.nofile_limit) {
                readings.insert(s.pid, FdReading { pid: s.pid, open, limit });
            }
        }
        let tracked: Vec<u32> = self.policy.tracked().filter(|p| !readings.contains_key(p)).collect();
        for pid in tracked {
            if let Some(r) = read(pid, None) {
                readings.insert(pid, r);
            }
        }
        self.since_scan_s += interval_s;
        if self.since_scan_s >= SCAN_EVERY_S {
            self.since_scan_s = 0.0;
            // A table still at its initial 64 slots never held more than 64 fds.
            for (pid, size) in procinfo::fd_table_sizes() {
                let comm = || procinfo::comm(pid).unwrap_or_default();
                if size > 64 && !readings.contains_key(&pid) && (watched.is_all() || watched.matches(pid, &comm())) {
                    if let Some(r) = read(pid, Some(size)) {
                        readings.insert(pid, r);
                    }
                }
            }
        }
        readings.into_values().collect()
    }
}

/// Open fds and RLIMIT_NOFILE of `pid`; with the fd table's size, only when it may be at
/// [`TRACK`] of its limit (listing /proc/PID/fd costs one entry per open fd).
fn read(pid: u32, table: Option<u64>) -> Option<FdReading> {
    let limit = procinfo::nofile_limit(pid)?;
    if table.is_some_and(|t| !worth_reading(t, limit)) {
        return None;
    }
    Some(FdReading { pid, open: procinfo::open_fds(pid)?, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pid: u32, open: u64, limit: u64) -> FdReading {
        FdReading { pid, open, limit }
    }

    #[test]
    fn half_the_limit_arms_and_ten_quiet_seconds_disarm() {
        let mut a = FdArming::default();
        assert!(!a.update(&[r(1, 100, 1024)], 1.0), "far from the limit, steady");
        assert!(a.update(&[r(1, 600, 1024)], 1.0));
        assert_eq!(a.near(), [1]);
        // Back down: still armed for QUIET_S.
        for _ in 0..9 {
            assert!(a.update(&[r(1, 300, 1024)], 1.0));
        }
        assert!(!a.update(&[r(1, 300, 1024)], 1.0));
        assert_eq!(a.tracked().collect::<Vec<_>>(), [1], "a quarter of the limit is still read");
    }

    #[test]
    fn a_fast_ramp_arms_before_half() {
        let mut a = FdArming::default();
        assert!(!a.update(&[r(7, 260, 1024)], 1.0));
        // +100/s: 1024 in ~6.6 s.
        assert!(a.update(&[r(7, 360, 1024)], 1.0));
        // A slow leak far from the limit does not.
        let mut b = FdArming::default();
        b.update(&[r(8, 260, 1024)], 1.0);
        assert!(!b.update(&[r(8, 261, 1024)], 1.0));
    }

    #[test]
    fn exited_and_shrunk_processes_are_no_longer_tracked() {
        let mut a = FdArming::default();
        a.update(&[r(1, 300, 1024), r(2, 300, 1024), r(3, 10, 1024)], 1.0);
        assert_eq!(a.tracked().collect::<Vec<_>>(), [1, 2]);
        a.update(&[r(2, 100, 1024)], 1.0);
        assert_eq!(a.tracked().count(), 0);
        // An unknown limit never arms.
        assert!(!a.update(&[r(4, 5000, 0)], 1.0));
    }

    #[test]
    fn only_grown_fd_tables_are_read() {
        assert!(!worth_reading(64, 1024));
        assert!(worth_reading(256, 1024));
        assert!(worth_reading(64, 200));
    }
}
