//! Rendering: NDJSON records (the documented contract) and the text table. Pure functions of
//! the model, so they are tested without a kernel. `status` and `bpf_stats` records are in
//! `render::status`.

use std::{fmt::Write as _, time::SystemTime};

use serde_json::{json, Value};

use crate::{
    domain::model::{EventRecord, Sample},
    domain::net::endpoint,
    domain::time::{rfc3339, thousands},
};

pub fn sample_json(ts: SystemTime, s: &Sample) -> Value {
    let c = &s.counts;
    json!({
        "type": "sample",
        "ts": rfc3339(ts),
        "pid": s.pid,
        "comm": s.comm,
        "interval_s": (s.interval_s * 1000.0).round() / 1000.0,
        "connect_attempts": c.connect_attempts,
        "connect_ok": c.connect_ok,
        "connect_errors": c.connect_errors,
        "connect_async_ok": c.connect_async_ok,
        "connect_async_errors": c.connect_async_errors,
        "port_assign_failures": c.port_assign_failures,
        "time_wait_created": c.time_wait_created,
        "emfile": c.emfile,
        "enfile": c.enfile,
        "tw_overflows": c.tw_overflows,
        "bind_errors": c.bind_errors,
        "bind_failures": c.bind_failures,
        "bound_connects": c.bound_connects,
        "listen_drops": c.listen_drops,
        "syncookies": c.syncookies,
        "listens": c.listens,
        "tcp_mem_send_refused": c.tcp_mem_send_refused,
        "tcp_mem_recv_refused": c.tcp_mem_recv_refused,
        "memcg_refused": c.memcg_refused,
        "netfilter_drops": c.netfilter_drops,
        "nofile_limit": s.nofile_limit,
        "open_fds": s.open_fds,
    })
}

/// Failures of one process and kind the event rate limit kept off the stream since its last
/// event (the process went quiet, or the run ended): with them, a stream's events add up.
pub fn suppressed_json(now: SystemTime, pid: u32, comm: &str, kind: &str, count: u64) -> Value {
    json!({"type": "suppressed", "ts": rfc3339(now), "pid": pid, "comm": comm, "kind": kind, "count": count})
}

pub fn suppressed_text(pid: u32, comm: &str, kind: &str, count: u64) -> String {
    format!("  … {} more {kind} failures of {comm}[{pid}] not shown (--events-per-sec)", thousands(count))
}

pub fn event_json(e: &EventRecord) -> Value {
    let mut v = json!({
        "type": "event",
        "ts": rfc3339(e.ts),
        "kind": e.kind,
        "pid": e.pid,
        "tid": e.tid,
        "comm": e.comm,
        "errno": e.errno,
        "netns": e.netns,
        "suppressed": e.suppressed,
    });
    let o = v.as_object_mut().expect("json! object");
    if e.daddr.is_some() {
        o.insert("saddr".into(), json!(e.saddr));
        o.insert("sport".into(), json!(e.sport));
        o.insert("daddr".into(), json!(e.daddr));
        o.insert("dport".into(), json!(e.dport));
        o.insert("async".into(), json!(e.is_async));
    } else if e.saddr.is_some() {
        // bind(): the address and port that were asked for.
        o.insert("saddr".into(), json!(e.saddr));
        o.insert("sport".into(), json!(e.sport));
    }
    if let Some(limit) = e.limit {
        o.insert("nofile_limit".into(), json!(limit));
    }
    if let Some(nr) = e.syscall_nr {
        o.insert("syscall_nr".into(), json!(nr));
    }
    v
}

fn errors_text(s: &Sample) -> String {
    let c = &s.counts;
    let connect = c.connect_errors.iter().map(|(k, v)| format!("{k}:{v}"));
    let bind = c.bind_errors.iter().map(|(k, v)| format!("bind:{k}:{v}"));
    let all: Vec<String> = connect.chain(bind).collect();
    if all.is_empty() {
        return "-".into();
    }
    all.join(",")
}

fn fds_text(s: &Sample) -> String {
    match (s.open_fds, s.nofile_limit) {
        (Some(o), Some(l)) => format!("{o}/{l}"),
        (None, Some(l)) => format!("?/{l}"),
        (Some(o), None) => format!("{o}/?"),
        (None, None) => "-".into(),
    }
}

pub fn interval_text(ts: SystemTime, samples: &[Sample]) -> String {
    let mut out = String::new();
    let stamp = rfc3339(ts);
    let _ = writeln!(
        out,
        "{:<7} {:<15} {:>7} {:>7} {:>6} {:>8} {:>7} {:>5} {:>8} {:>6} {:>6} {:>6} {:>11}  ERRORS   [{stamp}]",
        "PID",
        "COMM",
        "CONNECT",
        "OK",
        "ERR",
        "PORTFAIL",
        "TW",
        "TWOVF",
        "BINDFAIL",
        "LDROP",
        "EMFILE",
        "ENFILE",
        "FDS/LIMIT"
    );
    if samples.is_empty() {
        let _ = writeln!(out, "(no activity)");
    }
    for s in samples {
        let c = &s.counts;
        let _ = writeln!(
            out,
            "{:<7} {:<15} {:>7} {:>7} {:>6} {:>8} {:>7} {:>5} {:>8} {:>6} {:>6} {:>6} {:>11}  {}",
            s.pid,
            s.comm,
            c.connect_attempts,
            c.connect_ok,
            c.connect_error_total(),
            c.port_assign_failures,
            c.time_wait_created,
            c.tw_overflows,
            c.bind_failures,
            c.listen_drops,
            c.emfile,
            c.enfile,
            fds_text(s),
            errors_text(s)
        );
    }
    out
}

pub fn event_text(e: &EventRecord) -> String {
    let mut out = format!("  ! {} {}[{}]", e.kind, e.comm, e.pid);
    if let (Some(d), Some(p)) = (&e.daddr, e.dport) {
        let src = e.saddr.as_deref().unwrap_or("?");
        let _ = write!(out, " {} -> {}", src, endpoint(d, p));
    }
    if e.kind == "bind_error" {
        if let (Some(a), Some(p)) = (&e.saddr, e.sport) {
            let _ = write!(out, " bind {}", endpoint(a, p));
        }
    }
    let _ = write!(out, " {}", e.errno);
    if e.is_async {
        out.push_str(" (after EINPROGRESS)");
    }
    if let Some(l) = e.limit {
        let _ = write!(out, " limit {l}");
    }
    if let Some(ns) = e.netns {
        let _ = write!(out, " netns {ns}");
    }
    if e.suppressed > 0 {
        let _ = write!(out, " (+{} similar not shown)", e.suppressed);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::model::Counts;

    fn ts() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn sample() -> Sample {
        let mut counts = Counts { connect_attempts: 10, connect_ok: 4, port_assign_failures: 6, ..Default::default() };
        counts.connect_errors.insert("EADDRNOTAVAIL".into(), 6);
        Sample {
            pid: 42,
            comm: "client".into(),
            interval_s: 1.0004,
            counts,
            nofile_limit: Some(1024),
            open_fds: Some(9),
        }
    }

    #[test]
    fn sample_json_has_the_contract_fields() {
        let v = sample_json(ts(), &sample());
        assert_eq!(v["type"], "sample");
        assert_eq!(v["ts"], "2026-09-21T14:13:20.000Z");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["interval_s"], 1.0);
        assert_eq!(v["connect_attempts"], 10);
        assert_eq!(v["connect_ok"], 4);
        assert_eq!(v["connect_errors"]["EADDRNOTAVAIL"], 6);
        assert_eq!(v["port_assign_failures"], 6);
        assert_eq!(v["time_wait_created"], 0);
        assert_eq!(v["emfile"], 0);
        assert_eq!(v["enfile"], 0);
        assert_eq!(v["nofile_limit"], 1024);
        assert_eq!(v["open_fds"], 9);
    }

    #[test]
    fn text_rendering_snapshot() {
        let t = interval_text(ts(), &[sample()]);
        let mut lines = t.lines();
        assert!(lines.next().unwrap().starts_with("PID     COMM            CONNECT"));
        assert_eq!(
            lines.next().unwrap(),
            "42      client               10       4      6        6       0     0        0      0      0      0      9/1024  EADDRNOTAVAIL:6"
        );
    }

    #[test]
    fn event_rendering() {
        let e = EventRecord {
            ts: ts(),
            kind: "port_assign_failure",
            pid: 42,
            tid: 43,
            comm: "client".into(),
            errno: "EADDRNOTAVAIL".into(),
            netns: Some(4026531840),
            saddr: Some("127.0.0.1".into()),
            sport: Some(0),
            daddr: Some("127.0.0.2".into()),
            dport: Some(9000),
            limit: None,
            syscall_nr: None,
            is_async: false,
            suppressed: 2,
        };
        let v = event_json(&e);
        assert_eq!(v["kind"], "port_assign_failure");
        assert_eq!(v["daddr"], "127.0.0.2");
        assert_eq!(v["dport"], 9000);
        assert_eq!(v["suppressed"], 2);
        assert_eq!(
            event_text(&e),
            "  ! port_assign_failure client[42] 127.0.0.1 -> 127.0.0.2:9000 EADDRNOTAVAIL netns 4026531840 (+2 similar not shown)"
        );
    }
}
