//! The report over hand-built records (`fixtures`): episodes merged from repeated verdicts,
//! totals, filters, series, and the three renderings (text pinned with insta).

use serde_json::{json, Value};

use super::{
    fixtures::{at, emfile_run, event, header, idle_run, limits, ports_run, resolved, sample, ts, verdict, V},
    to_html, to_json, to_text, Filter, Report, ReportBuilder,
};

fn report(records: &[Value], filter: Filter) -> Report {
    let mut b = ReportBuilder::new(filter);
    for r in records {
        b.add(r);
    }
    b.finish()
}

fn all(records: &[Value]) -> Report {
    report(records, Filter::default())
}

fn active(s: f64, failures: u64, summary: &str) -> Value {
    verdict(V {
        s,
        state: "active",
        cause: "ephemeral_ports",
        pid: 7,
        comm: "client",
        since: 1.0,
        failures,
        destination: Some("10.0.0.5:6379"),
        summary,
        evidence: json!({"usable": 50, "established": 20, "time_wait": 30, "other": 0}),
        fix: vec!["keep connections alive"],
    })
}

#[test]
fn repeated_verdict_records_are_one_episode() {
    let recs = [active(2.0, 10, "first"), active(12.0, 300, "second"), active(22.0, 900, "third")];
    let mut with_end = recs.to_vec();
    with_end.push(resolved(active(30.0, 900, "resolved text"), 29.0, None));
    let r = all(&with_end);
    assert_eq!(r.timeline.len(), 1);
    let e = &r.timeline[0];
    assert_eq!((e.cause.as_str(), e.pid, e.destination.as_deref()), ("ephemeral_ports", 7, Some("10.0.0.5:6379")));
    assert_eq!((e.first_state.as_str(), e.warning, e.records), ("active", false, 4));
    assert_eq!(e.start.0, at(1.0));
    assert_eq!(e.end.map(|t| t.0), Some(at(30.0)));
    assert!(!e.still_active);
    assert_eq!(e.duration_s, 29.0);
    assert_eq!(e.peak_failures, 900);
    // The latest record says what the episode came to (a failure verdict's resolution has
    // its final count; a warning's is covered below).
    assert_eq!(e.summary, "resolved text");
    assert_eq!(e.fix, ["keep connections alive"]);

    // The same records in another order (files read out of order) give the same episode.
    let mut shuffled = with_end.clone();
    shuffled.reverse();
    let again = all(&shuffled);
    assert_eq!(to_json(&again)["timeline"], to_json(&r)["timeline"]);
}

#[test]
fn an_episode_without_its_resolved_record_is_still_active_at_the_end() {
    let mut recs = vec![active(2.0, 10, "a"), active(12.0, 20, "b")];
    recs.push(sample(40.0, 7, "client", json!({"port_assign_failures": 3})));
    let r = all(&recs);
    let e = &r.timeline[0];
    assert!(e.still_active);
    assert_eq!(e.end, None);
    // From its since (1 s) to the last record of the run (40 s).
    assert_eq!(e.duration_s, 39.0);
    assert!(to_text(&r).contains(
        "12:00:01–(still active at the end, 39 s) ephemeral_ports  client[7] toward 10.0.0.5:6379  peak 20 failures"
    ));
    assert_eq!(r.series.periods[0].end.0, at(40.0));
}

#[test]
fn other_destinations_or_another_since_are_other_episodes() {
    let mut other_dest = active(3.0, 5, "x");
    other_dest["destination"] = json!("10.0.0.6:6379");
    let mut later = active(50.0, 5, "y");
    later["since"] = json!(ts(49.0));
    let r = all(&[active(2.0, 1, "a"), other_dest, later]);
    assert_eq!(r.timeline.len(), 3);
    let starts: Vec<_> = r.timeline.iter().map(|e| e.start.0).collect();
    assert_eq!(starts, [at(1.0), at(1.0), at(49.0)]);
}

#[test]
fn a_warning_keeps_its_first_state_and_how_it_ended() {
    let r = all(&emfile_run());
    assert_eq!(r.timeline.len(), 2);
    let (w, p) = (&r.timeline[0], &r.timeline[1]);
    assert_eq!((w.cause.as_str(), w.first_state.as_str(), w.warning), ("fd_pressure", "warning", true));
    assert_eq!(w.resolution.as_deref(), Some("EMFILE failures began"));
    assert_eq!((w.start.0, w.end.map(|t| t.0), w.duration_s), (at(6.0), Some(at(21.0)), 15.0));
    assert!(w.summary.contains("420 of 512 open"), "the last warning record, not the resolved one: {}", w.summary);
    assert_eq!((p.cause.as_str(), p.first_state.as_str(), p.warning), ("fd_limit", "active", false));
    assert_eq!((p.peak_failures, p.duration_s, p.records), (5_281, 24.4, 4));
    // A lone resolved record of a warning is still known as one.
    let lone = all(&[resolved(active(9.0, 0, "over"), 3.0, Some("the fds stopped growing"))]);
    assert_eq!((lone.timeline[0].first_state.as_str(), lone.timeline[0].warning), ("warning", true));
}

#[test]
fn samples_sum_per_process_with_the_most_fds_and_the_last_limit() {
    let recs = [
        sample(
            2.0,
            9,
            "app",
            json!({"connect_attempts": 5, "emfile": 2, "connect_errors": {"ECONNREFUSED": 1},
            "open_fds": 90, "nofile_limit": 1024, "future_counter": 4}),
        ),
        // Arrives first but is earlier: the limit of the later sample stays.
        sample(
            3.0,
            9,
            "app",
            json!({"connect_attempts": 7, "enfile": 1, "connect_errors": {"ECONNREFUSED": 2, "ETIMEDOUT": 1},
            "open_fds": 60, "nofile_limit": 2048, "future_counter": 1}),
        ),
        sample(1.0, 9, "app", json!({"open_fds": 10, "nofile_limit": 512})),
        sample(2.0, 10, "quiet", json!({"connect_attempts": 1, "open_fds": 900})),
        sample(
            2.0,
            11,
            "ports",
            json!({"port_assign_failures": 4, "connect_errors": {"EADDRNOTAVAIL": 6}, "tw_overflows": 1}),
        ),
    ];
    let r = all(&recs);
    let order: Vec<u32> = r.processes.iter().map(|p| p.pid).collect();
    assert_eq!(order, [11, 9, 10], "most failures first, then most fds");
    let app = &r.processes[1];
    assert_eq!((app.samples, app.counters["connect_attempts"], app.counters["emfile"]), (3, 12, 2));
    assert_eq!(app.counters["future_counter"], 5, "fields of later versions are summed too");
    assert_eq!(app.errors["connect_errors"]["ECONNREFUSED"], 3);
    assert_eq!((app.max_open_fds, app.nofile_limit, app.failures), (Some(90), Some(2048), 3));
    // One failed port search is counted by both port_assign_failures and EADDRNOTAVAIL.
    assert_eq!((r.processes[0].families.ports, r.processes[0].failures), (6, 7));
    assert_eq!((r.samples, r.intervals, r.interval_s), (5, 3, Some(1.0)));
}

#[test]
fn each_event_stands_for_itself_and_its_suppressed_ones() {
    let dest = Some(("10.0.0.5", 6379));
    let recs = [
        event(1.0, "port_assign_failure", 7, "c", "EADDRNOTAVAIL", 0, dest),
        event(2.0, "port_assign_failure", 7, "c", "EADDRNOTAVAIL", 17, dest),
        event(2.5, "connect_error", 8, "d", "ECONNREFUSED", 4, dest),
        event(3.0, "connect_error", 8, "d", "ECONNREFUSED", 0, Some(("fd00::1", 80))),
        event(3.0, "emfile", 8, "d", "EMFILE", 9, None),
    ];
    let r = all(&recs);
    assert_eq!((r.events, r.event_failures), (5, 35));
    let d = &r.destinations[0];
    assert_eq!(
        (d.destination.as_str(), d.failures, d.events, d.pids.as_slice()),
        ("10.0.0.5:6379", 24, 3, &[7, 8][..])
    );
    assert_eq!((d.by_kind["port_assign_failure"], d.by_kind["connect_error"]), (19, 5));
    assert_eq!(r.destinations[1].destination, "[fd00::1]:80");
}

#[test]
fn the_pid_filter_keeps_headers_and_status() {
    let r = report(&emfile_run(), Filter { pid: Some(2100), ..Default::default() });
    assert!(r.processes.iter().all(|p| p.pid == 2100) && r.processes.len() == 1);
    assert!(r.timeline.is_empty(), "the verdicts are python3's");
    assert_eq!(r.sessions.len(), 1);
    assert_eq!(r.sessions[0].signals["fd_alloc"], ["fexit"]);
    assert_eq!(r.limits.values["net.ipv4.ip_local_port_range"], "32768 60999");
    assert_eq!(r.destinations[0].failures, 19 * 20);
    assert!(to_text(&r).contains("Only pid 2100."));
}

#[test]
fn the_time_filter_keeps_records_between_since_and_until() {
    let filter = Filter { since: Some(at(30.0)), until: Some(at(42.0)), pid: None };
    let r = report(&emfile_run(), filter);
    let span = r.span.as_ref().map(|s| (s.start.0, s.end.0));
    assert_eq!(span, Some((at(30.0), at(42.0))), "the header at 0 s is kept but outside the span");
    assert_eq!(r.intervals, 13);
    assert_eq!(r.sessions.len(), 1);
    // Only the fd_limit records of 31 and 41 s: its resolution at 45 s is after `until`.
    assert_eq!(r.timeline.len(), 1);
    assert!(r.timeline[0].still_active);
    assert_eq!(r.processes.iter().find(|p| p.pid == 1904).map(|p| p.counters["emfile"]), Some(255 * 11 + 256));
}

#[test]
fn records_missing_fields_or_wrong_typed_are_left_out_without_panicking() {
    let recs = [
        json!(null),
        json!([1, 2]),
        json!("sample"),
        json!({"type": "sample"}),
        json!({"type": "sample", "ts": "not a time", "pid": 1}),
        json!({"type": "sample", "ts": ts(1.0), "pid": -4}),
        json!({"type": "sample", "ts": ts(1.0), "pid": 5_000_000_000u64}),
        json!({"type": "sample", "ts": ts(1.0), "pid": 3, "comm": 7, "emfile": "9", "open_fds": -1,
            "interval_s": "1", "connect_errors": ["EADDRNOTAVAIL"], "enfile": 2.5, "nofile_limit": {}}),
        json!({"type": "event", "ts": ts(2.0), "pid": 3, "suppressed": "lots", "daddr": 5, "dport": 70000}),
        json!({"type": "verdict", "ts": ts(2.0), "pid": 3}),
        json!({"type": "verdict", "ts": ts(2.0), "pid": 3, "cause": "fd_limit", "since": 12, "failures": "many",
            "fix": "not a list", "state": 4, "duration_s": "x", "evidence": {"usable": "all"}, "destination": 9}),
        json!({"type": "header", "limits": [1], "hostname": {"a": 1}}),
        json!({"type": "status", "ts": 5, "signals": [{"mode": "fexit"}], "kernel": null}),
        json!({"type": "status", "ts": ts(0.0), "signals": {"connect": "fexit", "bind": {"mode": 3}}}),
        json!({"type": "bpf_stats", "ts": ts(9.0)}),
        json!({"type": 12}),
    ];
    let r = all(&recs);
    // Not an object ×3, no type-less sample ts/pid ×4 (the typed one but no ts, bad ts, pid
    // negative, pid too large), a verdict without cause.
    assert_eq!(r.skipped, 8);
    assert_eq!(r.processes.len(), 1);
    let p = &r.processes[0];
    assert_eq!((p.pid, p.comm.as_str(), p.failures, p.max_open_fds), (3, "?", 0, None));
    assert_eq!(r.timeline.len(), 1);
    assert_eq!(r.timeline[0].peak_failures, 0);
    assert!(r.destinations.is_empty(), "a destination needs a daddr string and a port");
    // The header without a ts and both status records (one without a readable ts).
    assert_eq!((r.sessions.len(), r.sessions[0].status_records), (1, 2));
    assert!(r.sessions[0].signals.is_empty() && r.sessions[0].hostname.is_none());
    let _ = (to_text(&r), to_json(&r), to_html(&r));
    let empty = all(&[]);
    assert_eq!(to_text(&empty), "No record to report.\n\nLimits: none recorded (no header record with limits).\n");
    let _ = (to_json(&empty), to_html(&empty));
}

#[test]
fn limits_come_from_the_last_header_and_changes_are_noted() {
    let mut wider = limits();
    wider["net.ipv4.ip_local_port_range"] = json!("1024 65535");
    let r = all(&[header(0.0, limits()), header(100.0, wider), header(50.0, json!({}))]);
    assert_eq!(r.sessions.len(), 3);
    assert_eq!(r.limits.values["net.ipv4.ip_local_port_range"], "1024 65535");
    assert_eq!(r.limits.values["fs.nr_open"], 1048576);
    assert_eq!(r.limits.changes.len(), 1);
    let c = &r.limits.changes[0];
    assert_eq!((c.name.as_str(), c.at.map(|t| t.0)), ("net.ipv4.ip_local_port_range", Some(at(100.0))));
    assert!(to_text(&r).contains("changed at 12:01:40: net.ipv4.ip_local_port_range 32768 60999 → 1024 65535"));
}

#[test]
fn series_per_interval_and_port_use_from_evidence() {
    let r = all(&emfile_run());
    let s = &r.series;
    assert_eq!((s.bucket, s.intervals.len()), (1, 60));
    let i22 = &s.intervals[21];
    assert_eq!((i22.failures.fds, i22.time_wait_created, i22.time_wait_per_s), (255, 480, 480.0));
    assert_eq!(s.fds.iter().map(|f| f.pid).collect::<Vec<_>>(), [1904, 2100]);
    assert_eq!(s.periods.len(), 2);
    assert!(s.ports.is_empty());

    let r = all(&ports_run());
    let p = &r.series.ports[0];
    assert_eq!(p.destination, "10.0.0.5:6379");
    let used: Vec<u64> = p.points.iter().map(|p| p.in_use).collect();
    assert_eq!(used, [20_750, 23_250, 25_750, 28_232]);
    assert_eq!(r.destinations[0].peak_port_use.map(|p| (p.in_use, p.usable)), Some((28_232, 28_232)));
    assert_eq!(r.destinations[0].verdicts, ["port_pressure", "ephemeral_ports"]);
}

#[test]
fn a_long_run_is_merged_into_bounded_series_keeping_sums_and_peaks() {
    let recs: Vec<Value> = (0..3000)
        .map(|i| {
            sample(i as f64, 1, "p", json!({"emfile": 1, "time_wait_created": 2, "open_fds": i, "nofile_limit": 4096}))
        })
        .collect();
    let r = all(&recs);
    let s = &r.series;
    assert_eq!(s.bucket, 3);
    assert_eq!(s.intervals.len(), 1000);
    assert_eq!(s.intervals.iter().map(|p| p.failures.fds).sum::<u64>(), 3000);
    assert!(s.intervals.iter().all(|p| (p.time_wait_per_s - 2.0).abs() < 1e-9));
    assert!(s.fds[0].points.len() <= super::series::MAX_POINTS);
    assert_eq!(s.fds[0].points.iter().filter_map(|p| p.open_fds).max(), Some(2999));
}

#[test]
fn json_is_one_deterministic_document() {
    let (a, b) = (to_json(&all(&emfile_run())), to_json(&all(&emfile_run())));
    assert_eq!(a, b);
    assert_eq!(a["type"], "report");
    assert_eq!(a["span"]["start"], "2026-09-21T12:00:00.000Z");
    assert_eq!(a["span"]["end"], "2026-09-21T12:01:00.000Z");
    assert_eq!(a["timeline"][1]["cause"], "fd_limit");
    assert_eq!(a["timeline"][1]["end"], "2026-09-21T12:00:45.000Z");
    assert_eq!(a["failures"]["fds"], 5_281);
    assert!(a.get("generated").is_none());
}

#[test]
fn text_of_an_emfile_plateau_after_a_warning() {
    insta::assert_snapshot!("report_emfile", to_text(&all(&emfile_run())));
}

#[test]
fn text_of_a_run_where_nothing_failed() {
    insta::assert_snapshot!("report_idle", to_text(&all(&idle_run())));
}

/// The `<svg data-chart="name">…</svg>` of each chart.
fn chart<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let start = html.find(&format!("<svg data-chart=\"{name}\""))?;
    let len = html[start..].find("</svg>")?;
    Some(&html[start..start + len])
}

/// Whether a chart draws a series with a non-empty path.
fn has_series(svg: &str) -> bool {
    svg.match_indices("<path class=\"series\" d=\"").any(|(i, m)| svg[i + m.len()..].starts_with('M'))
}

#[test]
fn html_has_every_chart_with_a_drawn_series() {
    let mut recs = emfile_run();
    recs.extend(ports_run().into_iter().skip(1));
    let html = to_html(&all(&recs));
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(html.contains("<meta charset=\"utf-8\">") && html.contains("<title>conntrace report: web-1, "));
    assert!(html.trim_end().ends_with("</html>"));
    for name in ["failures", "fds", "time_wait", "listen_drops", "port_use"] {
        let svg = chart(&html, name).unwrap_or_else(|| panic!("no {name} chart"));
        assert!(has_series(svg), "{name} draws no series");
    }
    assert!(chart(&html, "fds").is_some_and(|s| s.contains("stroke-dasharray")), "the limit is dashed");
    assert!(chart(&html, "failures").is_some_and(|s| s.matches("class=\"period\"").count() == 4));
    // Nothing fetched: no URL but the SVG namespace.
    assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count());
    assert!(!html.contains("<script"));
    // Without port evidence there is no port chart; the others are drawn from the samples.
    let idle = to_html(&all(&idle_run()));
    assert!(chart(&idle, "port_use").is_none());
    assert!(["failures", "fds", "time_wait", "listen_drops"].iter().all(|n| chart(&idle, n).is_some_and(has_series)));
}

#[test]
fn html_escapes_text_from_records() {
    let evil = "<script>alert(1)</script>";
    let mut recs = vec![sample(1.0, 66, evil, json!({"emfile": 3, "open_fds": 10, "nofile_limit": 10}))];
    recs.push(verdict(V {
        s: 1.0,
        state: "active",
        cause: "fd_limit\"><img src=x>",
        pid: 66,
        comm: evil,
        since: 0.5,
        failures: 3,
        destination: Some("<b>1.2.3.4:80</b>"),
        summary: "summary with <script>",
        evidence: json!({}),
        fix: vec!["fix & <i>more</i>"],
    }));
    recs.push(header(0.0, json!({"<evil>": "'quoted' & \"double\""})));
    let html = to_html(&all(&recs));
    assert!(!html.contains("<script") && !html.contains("<img") && !html.contains("<b>") && !html.contains("<i>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&#39;quoted&#39; &amp; &quot;double&quot;"));
}

#[test]
fn the_text_counts_plateaus_and_warnings() {
    let text = to_text(&all(&ports_run()));
    assert!(text.starts_with("1 plateau and 1 warning during this run (12:00:00–12:00:45, 11 intervals):"), "{text}");
    let warned = to_text(&all(&ports_run()[..4]));
    assert!(
        warned.starts_with("No plateau during this run (12:00:00–12:00:30): 0 intervals, no failure; 1 warning:"),
        "{warned}"
    );
}
