//! The report of a run: what `conntrace report` prints over recordings and `watch` prints at
//! its end. Pure logic over the NDJSON records of the README contract (`header`, `status`,
//! `sample`, `event`, `verdict`), fed one `serde_json::Value` at a time to [`ReportBuilder`],
//! rendered as text ([`to_text`]), one JSON document ([`to_json`]) or one self-contained HTML
//! file ([`to_html`]). No I/O: the callers read the files and write the output.
//!
//! Records come from files of any age and origin, so nothing in them is trusted: a missing or
//! wrong-typed field drops that field (or the record, when it has no `ts` or `pid` to place it),
//! never panics, and every text taken from a record is escaped in HTML.

use std::{collections::BTreeMap, time::SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::domain::time::rfc3339;

mod build;
mod charts;
mod families;
mod html;
mod series;
mod sessions;
mod svg;
mod text;
mod verdicts;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use build::ReportBuilder;
pub use families::Families;
pub use html::to_html;
pub use text::to_text;

/// Filters of a report.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub pid: Option<u32>,
}

/// A wall-clock time, serialized as the contract's RFC 3339 (UTC, milliseconds) so the JSON
/// report reads like the records it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub SystemTime);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

impl Time {
    /// Seconds since the epoch (negative before it): chart coordinates.
    pub fn secs(self) -> f64 {
        match self.0.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// Seconds from `earlier` to `self`, 0 when `earlier` is later.
    pub fn since(self, earlier: Time) -> f64 {
        self.0.duration_since(earlier.0).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }
}

/// The report of a run (or of the part of it the filter kept).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// First and last `ts` of the records kept; `None` when no record had one.
    pub span: Option<Span>,
    pub filter: AppliedFilter,
    /// `sample` records kept.
    pub samples: u64,
    /// Intervals with at least one sample (distinct sample `ts`): `watch` prints no sample for
    /// an interval in which no process was active, so a quiet run has fewer than its length.
    pub intervals: u64,
    /// The interval length most samples have.
    pub interval_s: Option<f64>,
    /// `event` records kept, and the failures they stand for (each line plus its `suppressed`).
    pub events: u64,
    pub event_failures: u64,
    /// Records left out: no `ts` or `pid` to place them, or not an object.
    pub skipped: u64,
    /// Failures of the whole run by cause family, summed from the samples.
    pub failures: Families,
    pub sessions: Vec<Session>,
    /// One entry per verdict episode, by start.
    pub timeline: Vec<Episode>,
    /// Per (pid, comm), most failures first.
    pub processes: Vec<ProcessTotals>,
    /// Per destination ("ip:port"), most failures first.
    pub destinations: Vec<DestinationTotals>,
    pub limits: Limits,
    pub series: series::Series,
}

pub use series::{FdPoint, FdSeries, IntervalPoint, Period, PortPoint, PortSeries, Series};

#[derive(Clone, Debug, Serialize)]
pub struct Span {
    pub start: Time,
    pub end: Time,
    pub seconds: f64,
}

/// The filter as applied, echoed so a report says what it left out.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppliedFilter {
    pub since: Option<Time>,
    pub until: Option<Time>,
    pub pid: Option<u32>,
}

/// One `watch` session: its `header` record (none for recordings made before headers existed,
/// or status lines before the first header) and what its `status` records said.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Session {
    /// The header's `ts`, else the first status's.
    pub start: Option<Time>,
    pub header: bool,
    pub hostname: Option<String>,
    pub boot_id: Option<String>,
    /// The header's kernel, else the status records'.
    pub kernel: Option<String>,
    pub version: Option<String>,
    /// The header's attach mode(s), as recorded (`attach_mode`, `attach_modes` or `attach`).
    pub attach: Option<Value>,
    /// That header's `limits` object.
    pub limits: BTreeMap<String, Value>,
    /// Signal → the modes its status records named, in order of appearance (more than one when
    /// a hook was re-attached differently).
    pub signals: BTreeMap<String, Vec<String>>,
    pub status_records: u64,
}

/// One verdict episode: the records of one (cause, pid, destination or listener, since),
/// merged (an active verdict is repeated while its failures grow).
#[derive(Clone, Debug, Serialize)]
pub struct Episode {
    pub cause: String,
    pub pid: u32,
    pub comm: String,
    pub destination: Option<String>,
    pub listener: Option<String>,
    /// The first state seen: "active" or "warning" (a lone `resolved` record: "warning" when it
    /// has a `resolution`, which only warnings have).
    pub first_state: String,
    pub warning: bool,
    /// The verdict's `since` (else its first record's `ts`).
    pub start: Time,
    /// The `ts` of its `resolved` record; `None`: still active at the end.
    pub end: Option<Time>,
    pub still_active: bool,
    /// The resolved record's `duration_s`, else end − start; still active: until the span's end.
    pub duration_s: f64,
    pub peak_failures: u64,
    /// Summary, evidence and fix of its last record that is not `resolved` (the numbers at
    /// their worst; a resolved summary of a warning reads "warning over").
    pub summary: String,
    pub evidence: Value,
    pub fix: Vec<String>,
    /// Why a warning ended (its resolved record's `resolution`).
    pub resolution: Option<String>,
    pub records: u64,
}

/// One process's totals over the run, summed from its samples.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessTotals {
    pub pid: u32,
    pub comm: String,
    pub samples: u64,
    /// Sum of `families`.
    pub failures: u64,
    pub families: Families,
    /// Every numeric field of its samples summed (connect_attempts, emfile, …): fields added
    /// by later versions are summed too.
    pub counters: BTreeMap<String, u64>,
    /// Every object of numbers summed per key: connect_errors and bind_errors by errno.
    pub errors: BTreeMap<String, BTreeMap<String, u64>>,
    pub max_open_fds: Option<u64>,
    /// The last non-null one.
    pub nofile_limit: Option<u64>,
}

/// One destination's failures: its failure events (each standing for 1 + `suppressed`) and
/// the verdicts that named it.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationTotals {
    pub destination: String,
    pub failures: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub events: u64,
    pub pids: Vec<u32>,
    /// Causes of the verdicts toward it, each once.
    pub verdicts: Vec<String>,
    /// The most ports in use toward it in any verdict's evidence.
    pub peak_port_use: Option<PortPoint>,
}

/// The limits in force, from the headers: the last header's value of each, and every change
/// from one header to the next.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Limits {
    pub values: BTreeMap<String, Value>,
    /// The `ts` of the header they came from.
    pub from: Option<Time>,
    pub changes: Vec<LimitChange>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LimitChange {
    pub at: Option<Time>,
    pub name: String,
    pub from: Value,
    pub to: Value,
}

/// The report as one JSON document: `{"type":"report", …}` and the fields of [`Report`].
/// Deterministic (no generation time): the same records give the same document.
pub fn to_json(r: &Report) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), Value::from("report"));
    match serde_json::to_value(r) {
        Ok(Value::Object(fields)) => out.extend(fields),
        // Serializing plain data cannot fail; say so in the document rather than panic.
        Ok(_) | Err(_) => {
            out.insert("error".into(), Value::from("the report could not be serialized"));
        }
    }
    Value::Object(out)
}
