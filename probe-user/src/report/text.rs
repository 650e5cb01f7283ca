//! The report as text: what an SRE reads after a load test. The verdict timeline first (what
//! broke, when, for how long, and the fix), then the tables that back it.

use std::fmt::Write as _;

use serde_json::Value;

use super::{families::FAMILIES, Episode, ProcessTotals, Report, Time};
use crate::domain::time::{clock, rfc3339, thousands};

/// Rows of the per-process and per-destination tables; the JSON report has them all.
const TABLE_ROWS: usize = 20;

pub fn to_text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", headline(r));
    if let Some(f) = filter_line(r) {
        let _ = writeln!(out, "{f}");
    }
    if r.failures.total() > 0 {
        let _ = writeln!(out, "Failures by cause: {}", families_text(r));
    }
    for e in &r.timeline {
        let _ = writeln!(out, "  {}", episode_line(e));
        if !e.summary.is_empty() {
            let _ = writeln!(out, "      {}", e.summary);
        }
        for fix in &e.fix {
            let _ = writeln!(out, "      fix: {fix}");
        }
    }
    processes(&mut out, r);
    destinations(&mut out, r);
    limits(&mut out, r);
    sessions(&mut out, r);
    out
}

/// "2 plateaus and 1 warning during this run (12:00:03–12:04:10, 250 intervals):", or
/// "No plateau during this run (…): N intervals, no failure."
pub(super) fn headline(r: &Report) -> String {
    let Some(span) = &r.span else { return "No record to report.".to_string() };
    let when = format!("{}–{}", clock(span.start.0), clock(span.end.0));
    let plateaus = r.timeline.iter().filter(|e| !e.warning).count();
    let warnings = r.timeline.len() - plateaus;
    let intervals = plural(r.intervals, "interval");
    let warned = match warnings {
        0 => String::new(),
        n => format!(" and {}", plural(n as u64, "warning")),
    };
    if plateaus > 0 {
        return format!("{}{warned} during this run ({when}, {intervals}):", plural(plateaus as u64, "plateau"));
    }
    let failures = match r.failures.total() {
        0 => "no failure".to_string(),
        n => format!("{} without a verdict", plural(n, "failure")),
    };
    let tail = if warnings > 0 { format!("; {}:", plural(warnings as u64, "warning")) } else { ".".to_string() };
    format!("No plateau during this run ({when}): {intervals}, {failures}{tail}")
}

fn filter_line(r: &Report) -> Option<String> {
    let f = &r.filter;
    let mut parts = Vec::new();
    if let Some(pid) = f.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(s) = f.since {
        parts.push(format!("since {}", rfc3339(s.0)));
    }
    if let Some(u) = f.until {
        parts.push(format!("until {}", rfc3339(u.0)));
    }
    (!parts.is_empty()).then(|| format!("Only {}.", parts.join(", ")))
}

/// "fds 5,021, ports 30": the run's failures by family, those with any.
pub(super) fn families_text(r: &Report) -> String {
    let parts: Vec<String> = FAMILIES
        .iter()
        .filter(|(_, get)| get(&r.failures) > 0)
        .map(|(name, get)| format!("{name} {}", thousands(get(&r.failures))))
        .collect();
    parts.join(", ")
}

/// "12:01:07–12:02:30 (83 s) fd_limit  python3[1904]  peak 5,021 failures", or for a warning
/// "warning 12:00:50–12:01:07 (17 s) fd_pressure  python3[1904]  resolved: …".
pub(super) fn episode_line(e: &Episode) -> String {
    if e.warning {
        format!("warning {} {}", when(e), what(e))
    } else {
        format!("{} {}", when(e), what(e))
    }
}

/// "fd_limit  python3[1904]  peak 5,021 failures" (a warning: how it ended, if it did).
pub(super) fn what(e: &Episode) -> String {
    let mut line = format!("{}  {}", e.cause, who(e));
    if !e.warning {
        let _ = write!(line, "  peak {}", plural(e.peak_failures, "failure"));
    } else if let Some(r) = &e.resolution {
        let _ = write!(line, "  resolved: {r}");
    }
    line
}

/// "12:01:07–12:02:30 (83 s)" or "12:03:00–(still active at the end, 70 s)".
pub(super) fn when(e: &Episode) -> String {
    let d = duration(e.duration_s);
    match e.end {
        Some(end) => format!("{}–{} ({d})", clock(e.start.0), clock(end.0)),
        None => format!("{}–(still active at the end, {d})", clock(e.start.0)),
    }
}

/// "python3[1904] toward 10.0.0.5:6379" (or "on" a listener).
pub(super) fn who(e: &Episode) -> String {
    let mut s = format!("{}[{}]", e.comm, e.pid);
    if let Some(d) = &e.destination {
        let _ = write!(s, " toward {d}");
    } else if let Some(l) = &e.listener {
        let _ = write!(s, " on {l}");
    }
    s
}

/// "0.4 s", "83 s", "4 min 7 s", "2 h 5 min".
pub(super) fn duration(s: f64) -> String {
    let s = if s.is_finite() { s.max(0.0) } else { 0.0 };
    if s < 10.0 {
        return format!("{s:.1} s");
    }
    let n = s.round() as u64;
    match n {
        0..120 => format!("{n} s"),
        120..3600 => format!("{} min {} s", n / 60, n % 60),
        _ => format!("{} h {} min", n / 3600, n % 3600 / 60),
    }
}

pub(super) fn plural(n: u64, what: &str) -> String {
    format!("{} {what}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// "1,021/1,024" (most open, last limit), "-" when never read.
pub(super) fn fds_text(p: &ProcessTotals) -> String {
    let n = |v: Option<u64>| v.map(thousands).unwrap_or_else(|| "?".to_string());
    match (p.max_open_fds, p.nofile_limit) {
        (None, None) => "-".to_string(),
        (o, l) => format!("{}/{}", n(o), n(l)),
    }
}

/// What a process failed with: "EMFILE 5,021, no ephemeral port 30, connect ECONNREFUSED 10".
pub(super) fn failed_with(p: &ProcessTotals) -> String {
    let c = |k: &str| p.counters.get(k).copied().unwrap_or(0);
    let mut parts = Vec::new();
    let mut add = |label: &str, n: u64| {
        if n > 0 {
            parts.push(format!("{label} {}", thousands(n)));
        }
    };
    add("EMFILE", c("emfile"));
    add("ENFILE", c("enfile"));
    add("no ephemeral port", p.families.ports);
    add("TIME_WAIT overflow", p.families.tw_overflows);
    add("listen drops", p.families.listen_drops);
    add("syncookies", c("syncookies"));
    add("tcp_mem refused", p.families.tcp_mem);
    add("memcg refused", c("memcg_refused"));
    add("netfilter drops", p.families.netfilter_drops);
    let binds = p.errors.get("bind_errors").filter(|b| b.values().any(|n| *n > 0));
    if binds.is_none() {
        add("port-0 binds refused", p.families.bind_failures);
    }
    for (what, by) in &p.errors {
        for (errno, n) in by {
            // EADDRNOTAVAIL from connect() is the failed port search counted above.
            if what == "connect_errors" && errno == "EADDRNOTAVAIL" && *n <= p.families.ports {
                continue;
            }
            let label = match what.as_str() {
                "connect_errors" => format!("connect {errno}"),
                "bind_errors" => format!("bind {errno}"),
                other => format!("{other} {errno}"),
            };
            add(&label, *n);
        }
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

fn processes(out: &mut String, r: &Report) {
    if r.processes.is_empty() {
        return;
    }
    // FAILURES counts limits hit (the cause families); connect() errors such as ECONNREFUSED
    // are the peer's answer, listed beside them but not counted.
    let _ = writeln!(out, "\nPer process (most failures first; connect errors listed, not counted as failures):");
    let _ = writeln!(
        out,
        "  {:<7} {:<16} {:>9} {:>10} {:>10} {:>10} {:>14}  FAILED WITH",
        "PID", "COMM", "FAILURES", "CONNECTS", "OK", "TIME_WAIT", "FDS MAX/LIMIT"
    );
    for p in r.processes.iter().take(TABLE_ROWS) {
        let c = |k: &str| thousands(p.counters.get(k).copied().unwrap_or(0));
        let _ = writeln!(
            out,
            "  {:<7} {:<16} {:>9} {:>10} {:>10} {:>10} {:>14}  {}",
            p.pid,
            p.comm,
            thousands(p.failures),
            c("connect_attempts"),
            c("connect_ok"),
            c("time_wait_created"),
            fds_text(p),
            failed_with(p)
        );
    }
    more(out, r.processes.len(), "processes");
}

fn more(out: &mut String, n: usize, what: &str) {
    if n > TABLE_ROWS {
        let _ = writeln!(out, "  … and {} more {what} (in the JSON report)", thousands((n - TABLE_ROWS) as u64));
    }
}

fn destinations(out: &mut String, r: &Report) {
    if r.destinations.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nPer destination (failure events, each with its suppressed ones):");
    let _ = writeln!(
        out,
        "  {:<24} {:>9} {:>7} {:>13}  BY KIND; VERDICTS",
        "DESTINATION", "FAILURES", "EVENTS", "PORTS PEAK"
    );
    for d in r.destinations.iter().take(TABLE_ROWS) {
        let kinds: Vec<String> = d.by_kind.iter().map(|(k, n)| format!("{k} {}", thousands(*n))).collect();
        let mut what = if kinds.is_empty() { "-".to_string() } else { kinds.join(", ") };
        if !d.verdicts.is_empty() {
            let _ = write!(what, "; {}", d.verdicts.join(", "));
        }
        let peak = d
            .peak_port_use
            .map(|p| format!("{}/{}", thousands(p.in_use), thousands(p.usable)))
            .unwrap_or_else(|| "-".to_string());
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>7} {:>13}  {what}",
            d.destination,
            thousands(d.failures),
            thousands(d.events),
            peak
        );
    }
    more(out, r.destinations.len(), "destinations");
}

/// A limit's value: numbers with thousands separators, strings as written.
pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_u64().map(thousands).unwrap_or_else(|| n.to_string()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn at_text(t: Option<Time>) -> String {
    t.map(|t| clock(t.0)).unwrap_or_else(|| "?".to_string())
}

fn limits(out: &mut String, r: &Report) {
    let l = &r.limits;
    if l.values.is_empty() {
        let _ = writeln!(out, "\nLimits: none recorded (no header record with limits).");
        return;
    }
    let _ = writeln!(out, "\nLimits (header of {}):", at_text(l.from));
    for (name, v) in &l.values {
        let _ = writeln!(out, "  {name:<40} {}", value_text(v));
    }
    for c in &l.changes {
        let _ =
            writeln!(out, "  changed at {}: {} {} → {}", at_text(c.at), c.name, value_text(&c.from), value_text(&c.to));
    }
}

fn sessions(out: &mut String, r: &Report) {
    if r.sessions.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nSessions:");
    for s in &r.sessions {
        let start = s.start.map(|t| rfc3339(t.0)).unwrap_or_else(|| "?".to_string());
        let mut line = format!("  {start}");
        let mut field = |label: &str, v: &Option<String>| {
            if let Some(v) = v {
                let _ = write!(line, "  {label}{v}");
            }
        };
        field("", &s.hostname);
        field("kernel ", &s.kernel);
        field("conntrace ", &s.version);
        field("attach ", &s.attach.as_ref().map(compact));
        field("boot ", &s.boot_id);
        if !s.header {
            line.push_str("  (no header record)");
        }
        let _ = writeln!(out, "{line}");
        if !s.signals.is_empty() {
            let hooks: Vec<String> =
                s.signals.iter().map(|(sig, modes)| format!("{sig} {}", modes.join("→"))).collect();
            let _ = writeln!(out, "    hooks: {}", hooks.join(", "));
        }
    }
}

/// An attach mode as recorded: a string as is, an object as "signal mode, …".
pub(super) fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k} {}", value_text(v))).collect::<Vec<_>>().join(", "),
        Value::Array(a) => a.iter().map(value_text).collect::<Vec<_>>().join(", "),
        other => value_text(other),
    }
}
