//! The `status` and `bpf_stats` records (JSON and text): what runs, how exact it is, what it
//! costs the host, what was lost. Pure functions of the model.

use std::{fmt::Write as _, time::SystemTime};

use serde_json::{json, Map, Value};

use crate::{
    domain::status::{ProgramStats, Status},
    domain::time::rfc3339,
};

pub fn status_json(ts: SystemTime, s: &Status) -> Value {
    let mut signals = Map::new();
    for (name, sig) in &s.signals {
        signals.insert(name.name().to_string(), {
            let mut v = json!({"mode": sig.mode.as_str(), "exact": sig.exact, "hooks": sig.hooks, "note": sig.note,
                                   "host_cost": sig.host_cost().as_str()});
            if let Some(armed) = sig.armed {
                v["armed"] = armed.into();
            }
            v
        });
    }
    let slowing = s.slowing_every_syscall();
    let mut v = json!({
        "type": "status",
        "ts": rfc3339(ts),
        "signals": signals,
        "slows_every_syscall": slowing,
        "dropped_events": s.losses.dropped_events,
        "lost_updates": {
            "counter_map_full": s.losses.counter_map_full,
            "owner_map_full": s.losses.owner_map_full,
            "inflight_map_full": s.losses.inflight_map_full,
            "connect_returns_lost": s.losses.connect_returns_lost,
            "skipped_runs": s.losses.skipped_runs,
            "owners_evicted": s.losses.owners_evicted,
        },
        "kernel": s.kernel,
        "watched": s.watched.iter().map(|(pid, alive)| json!({"pid": pid, "alive": alive})).collect::<Vec<_>>(),
        "btf_missing": s.missing_offsets,
    });
    if let Some(r) = &s.recording {
        let s = &r.stats;
        v["recording"] = json!({"dir": r.dir, "mode": r.mode, "lines": s.lines, "bytes": s.bytes,
            "lines_lost": s.lines_lost, "segments": s.segments, "segments_deleted": s.segments_deleted,
            "last_error": s.last_error, "kept_bytes": r.kept_bytes, "kept_dropped": r.kept_dropped});
    }
    v
}

pub fn status_text(s: &Status) -> String {
    let mut out = format!("conntrace: kernel {}\n", s.kernel);
    for (name, sig) in &s.signals {
        let exact = if sig.exact { "exact" } else { "approximate" };
        let _ = write!(out, "  {:<12} {:<15}", name.name(), sig.mode.as_str());
        if sig.mode != crate::domain::status::Mode::Unavailable {
            let _ = write!(out, " {exact:<11} {}", sig.hooks.join(", "));
        }
        match sig.armed {
            Some(true) => out.push_str(" [attached now: a process is near its RLIMIT_NOFILE]"),
            Some(false) => out.push_str(" [detached until a process nears its RLIMIT_NOFILE]"),
            None => {}
        }
        if let Some(n) = &sig.note {
            let _ = write!(out, "  ({n})");
        }
        out.push('\n');
    }
    let slowing = s.slowing_every_syscall();
    if !slowing.is_empty() {
        let _ = writeln!(
            out,
            "  host cost: system-call tracepoints ({}) put every system call of every process on the kernel's slow \
             path while attached; --syscall-hooks never (--light) does without them",
            slowing.join(", ")
        );
    }
    for (prog, n) in &s.losses.skipped_runs {
        let _ = writeln!(out, "  {prog}: {n} runs skipped or lost by the kernel");
    }
    let l = &s.losses;
    for (n, what) in [
        (l.counter_map_full, "counts not made: the counter map was full"),
        (l.owner_map_full, "socket owners not recorded"),
        (l.owners_evicted, "socket owners evicted by the owner map's LRU (their TIME_WAITs count as unattributed)"),
        (l.inflight_map_full, "connect() calls not tracked: the in-flight map was full"),
        (l.connect_returns_lost, "connect() returns not seen (attempts counted, outcomes not)"),
    ] {
        if n > 0 {
            let _ = writeln!(out, "  lost: {n} {what}");
        }
    }
    if s.losses.dropped_events > 0 {
        let _ = writeln!(out, "  dropped events: {} (counts stay exact)", s.losses.dropped_events);
    }
    if let Some(r) = &s.recording {
        let _ = write!(
            out,
            "  recording ({}) to {}: {} lines, {} bytes in {} segments",
            r.mode, r.dir, r.stats.lines, r.stats.bytes, r.stats.segments
        );
        if r.stats.lines_lost > 0 {
            let _ = write!(
                out,
                "; {} lines NOT written ({})",
                r.stats.lines_lost,
                r.stats.last_error.as_deref().unwrap_or("write error")
            );
        }
        let _ = writeln!(out);
    }
    for (pid, alive) in &s.watched {
        if !alive {
            let _ = writeln!(out, "  pid {pid} has exited; still watching the others");
        }
    }
    out
}

pub fn bpf_stats_json(ts: SystemTime, stats: &[ProgramStats]) -> Value {
    let programs: Vec<Value> = stats
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "run_count": p.run_count,
                "run_time_ns": p.run_time_ns,
                "avg_ns": p.run_time_ns.checked_div(p.run_count).unwrap_or(0),
            })
        })
        .collect();
    json!({"type": "bpf_stats", "ts": rfc3339(ts), "programs": programs})
}

pub fn bpf_stats_text(stats: &[ProgramStats]) -> String {
    let mut out = format!("{:<22} {:>12} {:>14} {:>8}\n", "PROGRAM", "RUNS", "TOTAL_NS", "NS/RUN");
    for p in stats {
        let avg = p.run_time_ns.checked_div(p.run_count).unwrap_or(0);
        let _ = writeln!(out, "{:<22} {:>12} {:>14} {:>8}", p.name, p.run_count, p.run_time_ns, avg);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::status::{Losses, Mode, Signal, SignalStatus};

    fn ts() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn status() -> Status {
        Status {
            kernel: "6.18.0".into(),
            signals: vec![
                (
                    Signal::PortAssign,
                    SignalStatus {
                        mode: Mode::TpBtf,
                        exact: true,
                        hooks: vec!["tp_btf/inet_sock_set_state".into()],
                        note: None,
                        armed: None,
                    },
                ),
                (Signal::FdAlloc, SignalStatus::unavailable("no hook")),
            ],
            losses: Losses { dropped_events: 3, ..Default::default() },
            watched: vec![(7, false)],
            missing_offsets: vec![],
            recording: None,
        }
    }

    #[test]
    fn status_json_reports_modes_and_drops() {
        let v = status_json(ts(), &status());
        assert_eq!(v["type"], "status");
        assert_eq!(v["signals"]["port_assign"]["mode"], "tp_btf");
        assert_eq!(v["signals"]["port_assign"]["exact"], true);
        assert_eq!(v["signals"]["fd_alloc"]["mode"], "unavailable");
        assert_eq!(v["dropped_events"], 3);
        assert_eq!(v["kernel"], "6.18.0");
        assert_eq!(v["watched"][0]["alive"], false);
    }

    #[test]
    fn status_text_lists_modes_losses_and_exited_pids() {
        let s = status_text(&status());
        assert!(s.contains("port_assign  tp_btf          exact"));
        assert!(s.contains("fd_alloc     unavailable      (no hook)"), "{s}");
        assert!(s.contains("dropped events: 3"));
        assert!(s.contains("pid 7 has exited"));
    }

    #[test]
    fn bpf_stats_rendering() {
        let stats = [ProgramStats { name: "set_state_btf".into(), run_count: 4, run_time_ns: 400 }];
        let v = bpf_stats_json(ts(), &stats);
        assert_eq!(v["type"], "bpf_stats");
        assert_eq!(v["programs"][0]["avg_ns"], 100);
        assert!(bpf_stats_text(&stats).lines().nth(1).unwrap().ends_with(" 100"));
    }
}
