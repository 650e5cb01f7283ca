//! Time series for the charts: failures, TIME_WAIT creation and listen drops per interval, open
//! fds of the top processes, ports in use per destination, verdict periods. A long run is
//! merged into at most `MAX_POINTS` points per series (a day at 1 s is 86,400 intervals: far
//! more than a chart has pixels), keeping sums as sums and peaks as peaks.

use std::{collections::BTreeMap, time::SystemTime};

use serde::Serialize;

use super::{Families, Time};

/// Points per series at most, in the report and so in its charts.
pub const MAX_POINTS: usize = 1200;

/// Fd readings a process keeps while records are added before they are halved: bounds memory
/// for a long recording of many busy processes.
const FD_POINTS_HELD: usize = 8192;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// How many intervals each point of `intervals` stands for (1 unless the run had more
    /// than `MAX_POINTS` intervals with samples).
    pub bucket: u64,
    pub intervals: Vec<IntervalPoint>,
    /// Open fds against RLIMIT_NOFILE of the top processes by failures, then by fds.
    pub fds: Vec<FdSeries>,
    /// Ports in use toward a destination, from verdict evidence (port_pressure,
    /// ephemeral_ports, time_wait_pressure).
    pub ports: Vec<PortSeries>,
    /// Verdict episodes as periods, to shade the charts.
    pub periods: Vec<Period>,
}

/// One interval (or a bucket of them): the samples of that `ts` added up.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalPoint {
    pub ts: Time,
    pub interval_s: f64,
    pub failures: Families,
    pub time_wait_created: u64,
    pub time_wait_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FdSeries {
    pub pid: u32,
    pub comm: String,
    pub points: Vec<FdPoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FdPoint {
    pub ts: Time,
    pub open_fds: Option<u64>,
    pub nofile_limit: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortSeries {
    pub destination: String,
    pub points: Vec<PortPoint>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct PortPoint {
    pub ts: Time,
    pub in_use: u64,
    pub usable: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Period {
    pub start: Time,
    /// The resolved record's `ts`, else the end of the report's span.
    pub end: Time,
    pub cause: String,
    pub pid: u32,
    pub warning: bool,
}

/// What one interval's samples add up to while records come in.
#[derive(Default)]
struct IntervalAcc {
    interval_s: Option<f64>,
    failures: Families,
    time_wait_created: u64,
}

/// The series while records come in, in any order (several files of one run).
#[derive(Default)]
pub struct SeriesAcc {
    intervals: BTreeMap<SystemTime, IntervalAcc>,
    ports: BTreeMap<String, Vec<PortPoint>>,
}

impl SeriesAcc {
    pub fn sample(&mut self, ts: SystemTime, interval_s: Option<f64>, failures: &Families, time_wait: u64) {
        let i = self.intervals.entry(ts).or_default();
        // Every process's sample of an interval has its length; the longest is the interval.
        i.interval_s = match (i.interval_s, interval_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        i.failures.add(failures);
        i.time_wait_created = i.time_wait_created.saturating_add(time_wait);
    }

    pub fn port_use(&mut self, destination: &str, point: PortPoint) {
        self.ports.entry(destination.to_string()).or_default().push(point);
    }

    pub fn interval_count(&self) -> u64 {
        self.intervals.len() as u64
    }

    /// Peak ports in use toward each destination.
    pub fn peak_port_use(&self) -> BTreeMap<String, PortPoint> {
        let mut out = BTreeMap::new();
        for (dest, points) in &self.ports {
            if let Some(p) = points.iter().max_by_key(|p| (p.in_use, p.ts)) {
                out.insert(dest.clone(), *p);
            }
        }
        out
    }

    /// The series; `interval_s` stands in for samples without a readable one.
    pub fn finish(self, interval_s: Option<f64>, fds: Vec<FdSeries>, periods: Vec<Period>) -> Series {
        let fallback = interval_s.unwrap_or(1.0);
        let points: Vec<IntervalPoint> = self
            .intervals
            .into_iter()
            .map(|(ts, i)| {
                let len = i.interval_s.unwrap_or(fallback);
                IntervalPoint {
                    ts: Time(ts),
                    interval_s: len,
                    failures: i.failures,
                    time_wait_created: i.time_wait_created,
                    time_wait_per_s: rate(i.time_wait_created, len),
                }
            })
            .collect();
        let (intervals, bucket) = merge_chunks(points, MAX_POINTS, |a, b| {
            let mut failures = a.failures;
            failures.add(&b.failures);
            let interval_s = a.interval_s + b.interval_s;
            let time_wait_created = a.time_wait_created.saturating_add(b.time_wait_created);
            IntervalPoint {
                ts: b.ts,
                interval_s,
                failures,
                time_wait_created,
                time_wait_per_s: rate(time_wait_created, interval_s),
            }
        });
        let ports = self
            .ports
            .into_iter()
            .map(|(destination, mut points)| {
                points.sort_by_key(|p| p.ts);
                let (points, _) = merge_chunks(points, MAX_POINTS, |a, b| PortPoint {
                    ts: b.ts,
                    in_use: a.in_use.max(b.in_use),
                    usable: b.usable,
                });
                PortSeries { destination, points }
            })
            .collect();
        Series { bucket: bucket as u64, intervals, fds, ports, periods }
    }
}

fn rate(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// A process's fd readings, kept bounded while records come in.
pub fn push_fd_point(points: &mut Vec<FdPoint>, p: FdPoint) {
    points.push(p);
    if points.len() >= FD_POINTS_HELD {
        let held = std::mem::take(points);
        *points = finish_fd_points(held, FD_POINTS_HELD / 2);
    }
}

/// A process's fd readings in time order, at most `max`: merged readings keep the most fds
/// (the plateau is what matters) and the later limit.
pub fn finish_fd_points(mut points: Vec<FdPoint>, max: usize) -> Vec<FdPoint> {
    points.sort_by_key(|p| p.ts);
    merge_chunks(points, max, |a, b| FdPoint {
        ts: b.ts,
        open_fds: a.open_fds.max(b.open_fds),
        nofile_limit: b.nofile_limit.or(a.nofile_limit),
    })
    .0
}

/// `v` in at most `max` items, each merging the same number of consecutive ones; returns that
/// number too.
fn merge_chunks<T>(v: Vec<T>, max: usize, merge: impl Fn(T, T) -> T) -> (Vec<T>, usize) {
    if v.len() <= max || max == 0 {
        return (v, 1);
    }
    let k = v.len().div_ceil(max);
    let mut out = Vec::with_capacity(max);
    let mut it = v.into_iter();
    while let Some(mut acc) = it.next() {
        for _ in 1..k {
            match it.next() {
                Some(x) => acc = merge(acc, x),
                None => break,
            }
        }
        out.push(acc);
    }
    (out, k)
}
