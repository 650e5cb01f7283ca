//! [`ReportBuilder`]: records in, one at a time, in any order (a run recorded over several
//! files is read file by file); totals, episodes and series out at [`ReportBuilder::finish`].

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use serde_json::{Map, Value};

use super::{
    families::count,
    series::{self, FdPoint, FdSeries, Period, SeriesAcc},
    sessions::{self, HeaderRec, StatusRec},
    verdicts::{self, Episodes},
    AppliedFilter, DestinationTotals, Families, Filter, ProcessTotals, Report, Span, Time,
};
use crate::domain::{net::endpoint, time::parse_rfc3339};

/// Processes whose open fds are charted.
const FD_CHART_PROCESSES: usize = 5;

/// Sample fields that are not counters of the interval.
const NOT_COUNTERS: [&str; 7] = ["type", "ts", "pid", "comm", "interval_s", "nofile_limit", "open_fds"];

/// A string field (a number or anything else where a string belongs is a record that is not
/// the contract's: left out rather than guessed at).
pub fn text(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A non-negative integer field.
pub fn number(o: &Map<String, Value>, key: &str) -> Option<u64> {
    o.get(key).and_then(Value::as_u64)
}

#[derive(Default)]
struct ProcAcc {
    samples: u64,
    families: Families,
    counters: BTreeMap<String, u64>,
    errors: BTreeMap<String, BTreeMap<String, u64>>,
    max_open_fds: Option<u64>,
    nofile_limit: Option<(SystemTime, u64)>,
    fd_points: Vec<FdPoint>,
}

#[derive(Default)]
struct DestAcc {
    failures: u64,
    by_kind: BTreeMap<String, u64>,
    events: u64,
    pids: BTreeSet<u32>,
}

/// Builds a report from NDJSON records (serde_json::Value each: the `type`s header, status,
/// sample, event, verdict of the README contract; unknown types ignored; records missing
/// fields never panic).
#[derive(Default)]
pub struct ReportBuilder {
    filter: Filter,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    samples: u64,
    events: u64,
    event_failures: u64,
    skipped: u64,
    failures: Families,
    /// Interval length in ms → samples with it.
    lengths: BTreeMap<u64, u64>,
    headers: Vec<HeaderRec>,
    statuses: Vec<StatusRec>,
    processes: BTreeMap<(u32, String), ProcAcc>,
    destinations: BTreeMap<String, DestAcc>,
    episodes: Episodes,
    series: SeriesAcc,
}

impl ReportBuilder {
    pub fn new(filter: Filter) -> ReportBuilder {
        ReportBuilder { filter, ..Default::default() }
    }

    pub fn add(&mut self, record: &Value) {
        let Some(o) = record.as_object() else {
            self.skipped += 1;
            return;
        };
        let ts = o.get("ts").and_then(Value::as_str).and_then(parse_rfc3339);
        let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            // What the run was (host, limits, hooks) whatever the filter: always kept, and in
            // the span when inside the filter's times.
            "header" | "status" => {
                if ts.is_some_and(|t| self.in_time(t)) {
                    self.seen(ts);
                }
                if kind == "header" {
                    self.headers.push(HeaderRec::read(ts, o));
                } else {
                    self.statuses.push(StatusRec::read(ts, o));
                }
            }
            "sample" | "event" | "verdict" => {
                let pid = number(o, "pid").and_then(|p| u32::try_from(p).ok());
                let (Some(ts), Some(pid)) = (ts, pid) else {
                    self.skipped += 1;
                    return;
                };
                if !self.in_time(ts) || self.filter.pid.is_some_and(|p| p != pid) {
                    return;
                }
                let kept = match kind {
                    "sample" => self.sample(ts, pid, o),
                    "event" => self.event(pid, o),
                    _ => self.verdict(ts, pid, o),
                };
                if kept {
                    self.seen(Some(ts));
                } else {
                    self.skipped += 1;
                }
            }
            // Types of later versions (and of other tools in the same file).
            _ => {}
        }
    }

    fn in_time(&self, ts: SystemTime) -> bool {
        self.filter.since.is_none_or(|s| ts >= s) && self.filter.until.is_none_or(|u| ts <= u)
    }

    fn seen(&mut self, ts: Option<SystemTime>) {
        if let Some(t) = ts {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
    }

    fn sample(&mut self, ts: SystemTime, pid: u32, o: &Map<String, Value>) -> bool {
        let comm = text(o, "comm").unwrap_or_else(|| "?".to_string());
        let families = Families::of_sample(o);
        let interval_s = o.get("interval_s").and_then(Value::as_f64).filter(|s| s.is_finite() && *s > 0.0);
        let open_fds = number(o, "open_fds");
        let nofile_limit = number(o, "nofile_limit");
        let p = self.processes.entry((pid, comm)).or_default();
        p.samples += 1;
        p.families.add(&families);
        for (key, value) in o {
            if NOT_COUNTERS.contains(&key.as_str()) {
                continue;
            }
            match value {
                Value::Number(n) => {
                    if let Some(n) = n.as_u64() {
                        let c = p.counters.entry(key.clone()).or_default();
                        *c = c.saturating_add(n);
                    }
                }
                Value::Object(by) => {
                    let errors = p.errors.entry(key.clone()).or_default();
                    for (errno, n) in by {
                        if let Some(n) = n.as_u64() {
                            let c = errors.entry(errno.clone()).or_default();
                            *c = c.saturating_add(n);
                        }
                    }
                }
                _ => {}
            }
        }
        p.max_open_fds = p.max_open_fds.max(open_fds);
        if let Some(n) = nofile_limit {
            if p.nofile_limit.is_none_or(|(t, _)| ts >= t) {
                p.nofile_limit = Some((ts, n));
            }
        }
        if open_fds.is_some() || nofile_limit.is_some() {
            series::push_fd_point(&mut p.fd_points, FdPoint { ts: Time(ts), open_fds, nofile_limit });
        }
        self.series.sample(ts, interval_s, &families, count(o, "time_wait_created"));
        self.failures.add(&families);
        self.samples += 1;
        if let Some(s) = interval_s {
            *self.lengths.entry((s * 1000.0).round() as u64).or_default() += 1;
        }
        true
    }

    fn event(&mut self, pid: u32, o: &Map<String, Value>) -> bool {
        // Each line stands for itself and the `suppressed` ones of its process and kind not
        // printed before it (rate limit per second).
        let n = count(o, "suppressed").saturating_add(1);
        self.events += 1;
        self.event_failures = self.event_failures.saturating_add(n);
        let daddr = text(o, "daddr");
        let dport = number(o, "dport").and_then(|p| u16::try_from(p).ok());
        if let (Some(daddr), Some(dport)) = (daddr, dport) {
            let d = self.destinations.entry(endpoint(&daddr, dport)).or_default();
            let kind = text(o, "kind").unwrap_or_else(|| "unknown".to_string());
            let k = d.by_kind.entry(kind).or_default();
            *k = k.saturating_add(n);
            d.failures = d.failures.saturating_add(n);
            d.events += 1;
            d.pids.insert(pid);
        }
        true
    }

    fn verdict(&mut self, ts: SystemTime, pid: u32, o: &Map<String, Value>) -> bool {
        if !self.episodes.add(ts, pid, o) {
            return false;
        }
        if let Some((dest, point)) = verdicts::port_use(ts, o) {
            self.series.port_use(&dest, point);
        }
        true
    }

    pub fn finish(self) -> Report {
        let span = match (self.first, self.last) {
            (Some(s), Some(e)) => Some(Span { start: Time(s), end: Time(e), seconds: Time(e).since(Time(s)) }),
            _ => None,
        };
        let interval_s = self.lengths.iter().max_by_key(|(ms, n)| (**n, **ms)).map(|(ms, _)| *ms as f64 / 1000.0);
        let timeline = self.episodes.finish(self.last);
        let (sessions, limits) = sessions::finish(self.headers, self.statuses);
        let mut procs: Vec<(ProcessTotals, Vec<FdPoint>)> = self
            .processes
            .into_iter()
            .map(|((pid, comm), p)| {
                let totals = ProcessTotals {
                    pid,
                    comm,
                    samples: p.samples,
                    failures: p.families.total(),
                    families: p.families,
                    counters: p.counters,
                    errors: p.errors,
                    max_open_fds: p.max_open_fds,
                    nofile_limit: p.nofile_limit.map(|(_, n)| n),
                };
                (totals, p.fd_points)
            })
            .collect();
        // Most failures first; among processes without, those holding the most fds.
        procs.sort_by(|(a, _), (b, _)| {
            (b.failures, b.max_open_fds, a.pid, &a.comm).cmp(&(a.failures, a.max_open_fds, b.pid, &b.comm))
        });
        let fds = procs
            .iter()
            .filter(|(_, points)| points.iter().any(|p| p.open_fds.is_some()))
            .take(FD_CHART_PROCESSES)
            .map(|(t, points)| FdSeries {
                pid: t.pid,
                comm: t.comm.clone(),
                points: series::finish_fd_points(points.clone(), series::MAX_POINTS),
            })
            .collect();
        let processes = procs.into_iter().map(|(t, _)| t).collect();
        let periods = timeline
            .iter()
            .map(|e| Period {
                start: e.start,
                end: e.end.or(span.as_ref().map(|s| s.end)).unwrap_or(e.start),
                cause: e.cause.clone(),
                pid: e.pid,
                warning: e.warning,
            })
            .collect();
        let peaks = self.series.peak_port_use();
        let mut destinations: BTreeMap<String, DestinationTotals> = self
            .destinations
            .into_iter()
            .map(|(destination, d)| {
                let totals = DestinationTotals {
                    destination: destination.clone(),
                    failures: d.failures,
                    by_kind: d.by_kind,
                    events: d.events,
                    pids: d.pids.into_iter().collect(),
                    verdicts: Vec::new(),
                    peak_port_use: None,
                };
                (destination, totals)
            })
            .collect();
        for e in &timeline {
            let Some(dest) = &e.destination else { continue };
            let d = destinations.entry(dest.clone()).or_insert_with(|| DestinationTotals {
                destination: dest.clone(),
                failures: 0,
                by_kind: BTreeMap::new(),
                events: 0,
                pids: Vec::new(),
                verdicts: Vec::new(),
                peak_port_use: None,
            });
            if !d.verdicts.contains(&e.cause) {
                d.verdicts.push(e.cause.clone());
            }
            if !d.pids.contains(&e.pid) {
                d.pids.push(e.pid);
                d.pids.sort_unstable();
            }
        }
        for (dest, peak) in peaks {
            if let Some(d) = destinations.get_mut(&dest) {
                d.peak_port_use = Some(peak);
            }
        }
        let mut destinations: Vec<DestinationTotals> = destinations.into_values().collect();
        destinations.sort_by(|a, b| (b.failures, &a.destination).cmp(&(a.failures, &b.destination)));
        let intervals = self.series.interval_count();
        Report {
            span,
            filter: AppliedFilter {
                since: self.filter.since.map(Time),
                until: self.filter.until.map(Time),
                pid: self.filter.pid,
            },
            samples: self.samples,
            intervals,
            interval_s,
            events: self.events,
            event_failures: self.event_failures,
            skipped: self.skipped,
            failures: self.failures,
            sessions,
            timeline,
            processes,
            destinations,
            limits,
            series: self.series.finish(interval_s, fds, periods),
        }
    }
}
