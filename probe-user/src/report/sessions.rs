//! Sessions (one per `header` record) with what their `status` records said, and the limits in
//! force from the headers' `limits` objects.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::{Map, Value};

use super::{build::text, LimitChange, Limits, Session, Time};

pub struct HeaderRec {
    ts: Option<SystemTime>,
    session: Session,
}

impl HeaderRec {
    pub fn read(ts: Option<SystemTime>, o: &Map<String, Value>) -> HeaderRec {
        let attach = ["attach_modes", "attach_mode", "attach"].iter().find_map(|k| o.get(*k)).cloned();
        let limits = match o.get("limits") {
            Some(Value::Object(l)) => l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => BTreeMap::new(),
        };
        let session = Session {
            start: ts.map(Time),
            header: true,
            hostname: text(o, "hostname"),
            boot_id: text(o, "boot_id"),
            kernel: text(o, "kernel"),
            version: text(o, "version"),
            attach,
            limits,
            ..Default::default()
        };
        HeaderRec { ts, session }
    }
}

pub struct StatusRec {
    ts: Option<SystemTime>,
    kernel: Option<String>,
    /// (signal, mode) in the record's order.
    modes: Vec<(String, String)>,
}

impl StatusRec {
    pub fn read(ts: Option<SystemTime>, o: &Map<String, Value>) -> StatusRec {
        let modes = match o.get("signals") {
            Some(Value::Object(s)) => s
                .iter()
                .filter_map(|(signal, st)| {
                    let mode = st.get("mode").and_then(Value::as_str)?;
                    Some((signal.clone(), mode.to_string()))
                })
                .collect(),
            _ => Vec::new(),
        };
        StatusRec { ts, kernel: text(o, "kernel"), modes }
    }
}

/// Sessions by start, each status record charged to the latest header at or before it (status
/// records before any header make a session of their own), and the limits.
pub fn finish(mut headers: Vec<HeaderRec>, mut statuses: Vec<StatusRec>) -> (Vec<Session>, Limits) {
    // Stable sorts: records without a ts keep their order, ahead of those with one.
    headers.sort_by_key(|h| h.ts);
    statuses.sort_by_key(|s| s.ts);
    let limits = limits(&headers);
    let mut before: Option<Session> = None;
    let mut sessions: Vec<Session> = headers.iter().map(|h| h.session.clone()).collect();
    for st in statuses {
        let at = headers.partition_point(|h| h.ts <= st.ts);
        let s = match at.checked_sub(1).and_then(|i| sessions.get_mut(i)) {
            Some(s) => s,
            None => before.get_or_insert_with(|| Session { start: st.ts.map(Time), ..Default::default() }),
        };
        s.status_records += 1;
        if s.kernel.is_none() {
            s.kernel = st.kernel;
        }
        for (signal, mode) in st.modes {
            let modes = s.signals.entry(signal).or_default();
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
    }
    if let Some(b) = before {
        sessions.insert(0, b);
    }
    (sessions, limits)
}

/// Each limit's value in the last header that has it, and every change between headers.
fn limits(headers: &[HeaderRec]) -> Limits {
    let mut out = Limits::default();
    for h in headers {
        let l = &h.session.limits;
        if l.is_empty() {
            continue;
        }
        for (name, value) in l {
            match out.values.get(name) {
                Some(old) if old != value => out.changes.push(LimitChange {
                    at: h.ts.map(Time),
                    name: name.clone(),
                    from: old.clone(),
                    to: value.clone(),
                }),
                _ => {}
            }
            out.values.insert(name.clone(), value.clone());
        }
        out.from = h.ts.map(Time);
    }
    out
}
