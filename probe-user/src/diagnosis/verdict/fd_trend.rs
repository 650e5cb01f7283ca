//! Trends toward a limit, for warnings: a process whose open fds keep growing toward its
//! RLIMIT_NOFILE (a leak, a connection ramp), a namespace whose TIME_WAIT table fills toward
//! tcp_max_tw_buckets. Each is warned about with the time left at its current rate, before
//! the first failure. Pure: fed with readings of (key, value, limit).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, SystemTime},
};

/// One process's open fds and soft RLIMIT_NOFILE, read at the end of an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdReading {
    pub pid: u32,
    pub open: u64,
    pub limit: u64,
}

/// How far back the trend looks.
const HISTORY: Duration = Duration::from_secs(30);
/// A trend needs readings over at least this long...
const MIN_SPAN_S: f64 = 3.0;
/// ...rising in at least this share of its steps (a busy server's count goes up and down)...
const RISING_SHARE: f64 = 0.75;
/// ...by at least this share of the limit in all (not a few fds).
const MIN_GROWTH: f64 = 0.02;
/// The shortest step the rising share looks at.
const STEP: Duration = Duration::from_secs(1);
/// Warn when the limit is this close at the current rate.
pub const WARN_AHEAD_S: f64 = 300.0;

/// A value heading for its limit (open fds, TIME_WAIT sockets).
#[derive(Clone, Debug, PartialEq)]
pub struct FdForecast {
    pub open: u64,
    pub limit: u64,
    pub rate_per_s: f64,
    pub seconds_left: f64,
}

/// Why a process is no longer heading for its limit.
#[derive(Clone, Debug, PartialEq)]
pub enum FdCalm {
    /// Its fds stopped growing (at `open` of `limit`).
    Steady { open: u64, limit: u64 },
    /// Its limit was raised (from, to).
    Raised { from: u64, to: u64 },
    /// It reached the limit (EMFILE follows).
    Reached { limit: u64 },
    /// It has exited (no reading any more).
    Gone,
}

/// The fd trend of each process.
pub type FdTrend = Trend<u32>;

pub struct Trend<K> {
    history: BTreeMap<K, VecDeque<(SystemTime, u64, u64)>>,
}

impl<K> Default for Trend<K> {
    fn default() -> Self {
        Trend { history: BTreeMap::new() }
    }
}

impl Trend<u32> {
    /// Adds the fd readings taken at `now` (see [`Trend::observe_values`]).
    pub fn observe(&mut self, now: SystemTime, readings: &[FdReading]) {
        let values: Vec<(u32, u64, u64)> = readings.iter().map(|r| (r.pid, r.open, r.limit)).collect();
        self.observe_values(now, &values);
    }
}

impl<K: Ord + Copy> Trend<K> {
    /// Adds (key, value, limit) readings taken at `now`; forgets keys not read for `HISTORY`.
    pub fn observe_values(&mut self, now: SystemTime, readings: &[(K, u64, u64)]) {
        for &(key, open, limit) in readings.iter().filter(|r| r.2 > 0) {
            let h = self.history.entry(key).or_default();
            // The limit changed: the old trend says nothing about the new one.
            if h.back().is_some_and(|&(_, _, l)| l != limit) {
                h.retain(|&(_, _, l)| l == limit);
            }
            h.push_back((now, open, limit));
        }
        self.history.retain(|_, h| {
            while h.front().is_some_and(|(t, ..)| now.duration_since(*t).unwrap_or_default() > HISTORY) {
                h.pop_front();
            }
            !h.is_empty()
        });
    }

    /// The forecast for `key`, if its value is rising steadily toward the limit and reaches
    /// it within [`WARN_AHEAD_S`].
    pub fn forecast(&self, key: K) -> Option<FdForecast> {
        let h = self.history.get(&key)?;
        // The trend since its latest low: a ramp that starts after a quiet spell is measured
        // from where it began, not diluted by the flat readings before it.
        let low = h.iter().map(|r| r.1).min()?;
        let from = h.iter().rposition(|r| r.1 == low)?;
        let h: Vec<_> = h.iter().skip(from).copied().collect();
        let (&(t0, first, _), &(t1, open, limit)) = (h.first()?, h.last()?);
        let span = t1.duration_since(t0).unwrap_or_default().as_secs_f64();
        if span < MIN_SPAN_S || open <= first || open >= limit {
            return None;
        }
        // Steps of at least a second: a value the kernel moves in batches (TCP memory by 1 MiB
        // per CPU, `sk_memory_allocated_add`) stays put between some readings a short
        // interval apart however fast it grows.
        let mut thinned = vec![h[0]];
        for r in &h[1..] {
            let last = thinned[thinned.len() - 1];
            if r.0.duration_since(last.0).unwrap_or_default() >= STEP {
                thinned.push(*r);
            }
        }
        let steps: Vec<i64> =
            thinned.iter().zip(thinned.iter().skip(1)).map(|(a, b)| b.1 as i64 - a.1 as i64).collect();
        let rising = steps.iter().filter(|d| **d > 0).count() as f64 / steps.len().max(1) as f64;
        if rising < RISING_SHARE || ((open - first) as f64) < MIN_GROWTH * limit as f64 {
            return None;
        }
        let rate = (open - first) as f64 / span;
        let seconds_left = (limit - open) as f64 / rate;
        (seconds_left <= WARN_AHEAD_S).then_some(FdForecast { open, limit, rate_per_s: rate, seconds_left })
    }

    /// Why `key` has no forecast now (for a warning that ends).
    pub fn calm(&self, key: K, warned_limit: u64) -> FdCalm {
        match self.history.get(&key).and_then(|h| h.back()) {
            None => FdCalm::Gone,
            Some(&(_, _, limit)) if limit != warned_limit => FdCalm::Raised { from: warned_limit, to: limit },
            Some(&(_, open, limit)) if open >= limit => FdCalm::Reached { limit },
            Some(&(_, open, limit)) => FdCalm::Steady { open, limit },
        }
    }

    /// Keys with readings.
    pub fn pids(&self) -> Vec<K> {
        self.history.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
    }

    fn feed(t: &mut FdTrend, pid: u32, opens: &[u64], limit: u64) {
        for (i, &open) in opens.iter().enumerate() {
            t.observe(at(i as u64), &[FdReading { pid, open, limit }]);
        }
    }

    #[test]
    fn a_ramp_after_a_quiet_spell_is_measured_from_where_it_began() {
        let mut t = FdTrend::default();
        // Ten flat readings, then +50/s for 4 s: the flat ones do not dilute the ramp.
        let mut opens = vec![100; 10];
        opens.extend([150, 200, 250, 300]);
        feed(&mut t, 7, &opens, 1024);
        let f = t.forecast(7).expect("forecast");
        assert!((f.rate_per_s - 50.0).abs() < 1e-9, "{f:?}");
        // Read every 200 ms, moving in batches (+256 every 500 ms): rising in every 1 s step.
        let mut t = FdTrend::default();
        let start = at(0);
        for i in 0..25u64 {
            let now = start + Duration::from_millis(200 * i);
            t.observe(now, &[FdReading { pid: 9, open: 1000 + 256 * (i * 200 / 500), limit: 20_000 }]);
        }
        let f = t.forecast(9).expect("a batched ramp is a ramp");
        assert!((f.rate_per_s - 512.0).abs() < 60.0, "{f:?}");
        // Up and down around a level: no trend, however long.
        let mut t = FdTrend::default();
        feed(&mut t, 8, &[500, 520, 505, 530, 510, 525, 515, 535, 512, 540], 1024);
        assert_eq!(t.forecast(8), None);
    }

    #[test]
    fn a_leak_is_forecast_with_the_time_left() {
        let mut t = FdTrend::default();
        // +20 fds/s from 400 of 1,024: 1,024 reached in (1,024 - 500) / 20 = 26.2 s.
        feed(&mut t, 7, &[400, 420, 440, 460, 480, 500], 1024);
        let f = t.forecast(7).expect("forecast");
        assert_eq!((f.open, f.limit), (500, 1024));
        assert!((f.rate_per_s - 20.0).abs() < 1e-9, "{f:?}");
        assert!((f.seconds_left - 26.2).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn steady_or_noisy_counts_far_from_the_limit_are_not_forecast() {
        let mut t = FdTrend::default();
        feed(&mut t, 1, &[300, 300, 300, 300, 300], 1024);
        assert_eq!(t.forecast(1), None, "steady");
        feed(&mut t, 2, &[250, 260, 240, 262, 245, 263], 1024);
        assert_eq!(t.forecast(2), None, "up and down");
        feed(&mut t, 3, &[100, 101, 102, 103, 104], 65536);
        assert_eq!(t.forecast(3), None, "a few fds of a large limit");
        feed(&mut t, 4, &[100, 200], 1024);
        assert_eq!(t.forecast(4), None, "one step is not a trend");
        // +1/s with 20,000 left: hours away.
        feed(&mut t, 5, &[1000, 1100, 1200, 1300, 1400], 400_000);
        assert_eq!(t.forecast(5), None);
    }

    #[test]
    fn why_a_warning_ends() {
        let mut t = FdTrend::default();
        feed(&mut t, 7, &[400, 500, 600, 700], 1024);
        assert!(t.forecast(7).is_some());
        t.observe(at(10), &[FdReading { pid: 7, open: 700, limit: 4096 }]);
        assert_eq!(t.forecast(7), None, "a new limit starts a new trend");
        assert_eq!(t.calm(7, 1024), FdCalm::Raised { from: 1024, to: 4096 });
        assert_eq!(t.calm(8, 1024), FdCalm::Gone);
        t.observe(at(11), &[FdReading { pid: 9, open: 1024, limit: 1024 }]);
        assert_eq!(t.calm(9, 1024), FdCalm::Reached { limit: 1024 });
        t.observe(at(12), &[FdReading { pid: 10, open: 900, limit: 1024 }]);
        assert_eq!(t.calm(10, 1024), FdCalm::Steady { open: 900, limit: 1024 });
        // Not read for HISTORY: forgotten.
        t.observe(at(100), &[]);
        assert!(t.pids().is_empty());
    }
}
