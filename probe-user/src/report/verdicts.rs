//! Verdict records merged into episodes. `watch` repeats an active verdict (same cause, pid,
//! destination or listener, since) at most every 10 s while its failures grow, then prints one
//! `resolved` record; a report shows one line per episode.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::{Map, Value};

use super::{
    build::{number, text},
    series::PortPoint,
    Episode, Time,
};

/// (cause, pid, destination or listener, since as written).
type Key = (String, u32, String, String);

/// What a non-resolved record says: the episode keeps its latest (by `ts`).
struct Said {
    ts: SystemTime,
    summary: String,
    evidence: Value,
    fix: Vec<String>,
}

struct Acc {
    comm: Option<(SystemTime, String)>,
    destination: Option<String>,
    listener: Option<String>,
    since: Option<SystemTime>,
    first_ts: SystemTime,
    /// The earliest non-resolved record's state.
    first_state: Option<(SystemTime, String)>,
    warning: bool,
    end: Option<SystemTime>,
    duration_s: Option<f64>,
    resolution: Option<String>,
    peak: u64,
    said: Option<Said>,
    /// What the resolved record said, for an episode seen only through it.
    resolved_said: Option<Said>,
    records: u64,
}

#[derive(Default)]
pub struct Episodes {
    map: BTreeMap<Key, Acc>,
}

impl Episodes {
    /// Adds one verdict record (its `ts` and `pid` already read). Records without a `cause`
    /// name no episode: left out, the caller counts them.
    pub fn add(&mut self, ts: SystemTime, pid: u32, o: &Map<String, Value>) -> bool {
        let Some(cause) = text(o, "cause") else { return false };
        let destination = text(o, "destination");
        let listener = text(o, "listener");
        let since_text = text(o, "since").unwrap_or_default();
        let since = crate::domain::time::parse_rfc3339(&since_text);
        let place = destination.clone().or_else(|| listener.clone()).unwrap_or_default();
        let acc = self.map.entry((cause, pid, place, since_text)).or_insert_with(|| Acc {
            comm: None,
            destination,
            listener,
            since,
            first_ts: ts,
            first_state: None,
            warning: false,
            end: None,
            duration_s: None,
            resolution: None,
            peak: 0,
            said: None,
            resolved_said: None,
            records: 0,
        });
        acc.records += 1;
        acc.first_ts = acc.first_ts.min(ts);
        if let Some(comm) = text(o, "comm").filter(|c| !c.is_empty()) {
            if acc.comm.as_ref().is_none_or(|(t, _)| ts >= *t) {
                acc.comm = Some((ts, comm));
            }
        }
        acc.peak = acc.peak.max(number(o, "failures").unwrap_or(0));
        let said = Said {
            ts,
            summary: text(o, "summary").unwrap_or_default(),
            evidence: o.get("evidence").cloned().unwrap_or(Value::Null),
            fix: o
                .get("fix")
                .and_then(Value::as_array)
                .map(|f| f.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        };
        // A record without a state is taken for an active one: the state is the contract's,
        // but a partial record should still show up.
        let state = text(o, "state").unwrap_or_else(|| "active".to_string());
        if state == "resolved" {
            acc.end = Some(acc.end.map_or(ts, |e| e.max(ts)));
            acc.duration_s = o.get("duration_s").and_then(Value::as_f64).filter(|d| d.is_finite() && *d >= 0.0);
            if let Some(r) = text(o, "resolution") {
                acc.resolution = Some(r);
                acc.warning = true;
            }
            acc.resolved_said = Some(said);
        } else {
            acc.warning |= state == "warning";
            if acc.first_state.as_ref().is_none_or(|(t, _)| ts < *t) {
                acc.first_state = Some((ts, state));
            }
            if acc.said.as_ref().is_none_or(|s| ts >= s.ts) {
                acc.said = Some(said);
            }
        }
        true
    }

    /// The episodes by start; `span_end` ends those still active.
    pub fn finish(self, span_end: Option<SystemTime>) -> Vec<Episode> {
        let mut out: Vec<Episode> = self
            .map
            .into_iter()
            .map(|((cause, pid, _, _), a)| {
                let start = a.since.unwrap_or(a.first_ts);
                let till = |end: SystemTime| end.duration_since(start).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                let duration_s = match a.end {
                    Some(end) => a.duration_s.unwrap_or_else(|| till(end)),
                    None => span_end.map(till).unwrap_or(0.0),
                };
                let first_state = match a.first_state {
                    Some((_, s)) => s,
                    None if a.warning => "warning".to_string(),
                    None => "active".to_string(),
                };
                // A warning's resolution says only why it ended: its last warning record says
                // what it predicted. A failure verdict's records differ only in their count,
                // so the latest one (the resolution, with the final count) says it best.
                let said = match (a.said, a.resolved_said) {
                    (Some(s), Some(r)) if !a.warning && r.ts >= s.ts => Some(r),
                    (s, r) => s.or(r),
                };
                let (summary, evidence, fix) = said.map(|s| (s.summary, s.evidence, s.fix)).unwrap_or_default();
                Episode {
                    cause,
                    pid,
                    comm: a.comm.map(|(_, c)| c).unwrap_or_else(|| "?".to_string()),
                    destination: a.destination,
                    listener: a.listener,
                    warning: a.warning || first_state == "warning",
                    first_state,
                    start: Time(start),
                    end: a.end.map(Time),
                    still_active: a.end.is_none(),
                    duration_s: (duration_s * 1000.0).round() / 1000.0,
                    peak_failures: a.peak,
                    summary,
                    evidence,
                    fix,
                    resolution: a.resolution,
                    records: a.records,
                }
            })
            .collect();
        out.sort_by(|a, b| (a.start, &a.cause, a.pid).cmp(&(b.start, &b.cause, b.pid)));
        out
    }
}

/// Ports in use toward the record's destination and the usable ones, from its evidence:
/// `in_use` (port_pressure), else `established + time_wait + other` (ephemeral_ports,
/// time_wait_pressure); `None` when the record has no destination or no such numbers.
pub fn port_use(ts: SystemTime, o: &Map<String, Value>) -> Option<(String, PortPoint)> {
    let destination = text(o, "destination")?;
    let ev = o.get("evidence")?.as_object()?;
    let usable = number(ev, "usable")?;
    let in_use = match number(ev, "in_use") {
        Some(n) => n,
        None => {
            let parts = ["established", "time_wait", "other"].map(|k| number(ev, k));
            if parts.iter().all(Option::is_none) {
                return None;
            }
            parts.iter().flatten().fold(0u64, |s, n| s.saturating_add(*n))
        }
    };
    Some((destination, PortPoint { ts: Time(ts), in_use, usable }))
}
