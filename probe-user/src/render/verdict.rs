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
    if let Some(why) = &v.resolution {
        j["resolution"] = json!(why);
    }
    j
}

pub fn to_text(v: &Verdict) -> String {
    let fixes = |mut s: String| {
        for f in &v.fix {
            s.push_str(&format!("\n    fix: {f}"));
        }
        s
    };
    match v.state {
        VerdictState::Resolved => {
            let who = format!(
                "{}[{}]{}",
                v.comm,
                v.pid,
                v.destination.as_ref().map(|d| format!(" toward {}", d.endpoint())).unwrap_or_default()
            );
            let after = v.duration_s.unwrap_or(0.0);
            match &v.resolution {
                Some(why) => format!("<<< RESOLVED {}: {who} after {after:.1} s: {why}", v.cause.as_str()),
                None => format!(
                    "<<< RESOLVED {}: {who} after {after:.1} s, {}{} failure{}",
                    v.cause.as_str(),
                    // A count that is a floor (`counted_from_attach`) stays one here.
                    if v.tally.contains("at least {n}") { "at least " } else { "" },
                    thousands(v.failures),
                    if v.failures == 1 { "" } else { "s" }
                ),
            }
        }
        VerdictState::Active => fixes(format!(">>> {}: {}", v.cause.as_str().to_uppercase(), v.summary())),
        VerdictState::Warning => fixes(format!("!!! WARNING {}: {}", v.cause.as_str().to_uppercase(), v.summary())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::to_text;
    use crate::{
        diagnosis::verdict::{fake::FakeEvidence, Cause, Engine, VerdictState, Window},
        domain::model::Counts,
    };

    #[test]
    fn a_resolved_floor_count_stays_a_floor_and_one_is_singular() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = FakeEvidence::new(Err(String::new()));
        let mut w = Window { now: Some(t0), interval_s: 1.0, ..Default::default() };
        w.counts.insert(42, Counts { emfile: 18, ..Default::default() });
        // The on-demand hook was attached 0.8 s before: the count is a floor.
        w.fd_counted_from = Some(t0 - Duration::from_millis(800));
        let mut v = e.tick(&w, &mut fake).into_iter().find(|v| v.cause == Cause::FdLimit).expect("fd_limit");
        (v.state, v.duration_s) = (VerdictState::Resolved, Some(3.0));
        let text = to_text(&v);
        assert!(text.ends_with("after 3.0 s, at least 18 failures"), "{text}");
        (v.failures, v.tally) = (1, "{n} calls failed with EMFILE".into());
        let text = to_text(&v);
        assert!(text.ends_with("after 3.0 s, 1 failure"), "{text}");
    }
}
