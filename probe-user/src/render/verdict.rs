//! A verdict as its NDJSON line and as text.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::{
    diagnosis::verdict::{Dest, Verdict, VerdictState},
    domain::time::{rfc3339, thousands},
};

pub fn to_json(v: &Verdict) -> Value {
    let mut j = json!({
        "type": "verdict",
        "ts": rfc3339(SystemTime::now()),
        "state": v.state.as_str(),
        "cause": v.cause.as_str(),
        "pid": v.pid,
        "comm": v.comm,
        "since": rfc3339(v.since),
        "failures": v.failures,
        "destination": v.destination.as_ref().filter(|_| !v.cause.is_listener()).map(Dest::endpoint),
        "summary": v.summary(),
        "evidence": v.evidence,
        "fix": v.fix,
    });
    if v.cause.is_listener() {
        j["listener"] = json!(v.destination.as_ref().map(Dest::endpoint));
    }
    if let Some(d) = v.duration_s {
        j["duration_s"] = json!((d * 10.0).round() / 10.0);
    }
    j
}

pub fn to_text(v: &Verdict) -> String {
    match v.state {
        VerdictState::Resolved => format!(
            "<<< RESOLVED {}: {}[{}]{} after {:.1} s, {} failures",
            v.cause.as_str(),
            v.comm,
            v.pid,
            v.destination.as_ref().map(|d| format!(" toward {}", d.endpoint())).unwrap_or_default(),
            v.duration_s.unwrap_or(0.0),
            thousands(v.failures)
        ),
        VerdictState::Active => {
            let mut s = format!(">>> {}: {}", v.cause.as_str().to_uppercase(), v.summary());
            for f in &v.fix {
                s.push_str(&format!("\n    fix: {f}"));
            }
            s
        }
    }
}
