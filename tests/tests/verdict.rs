//! Verdicts against failures the kernel really produces: cause, pid, destination, evidence,
//! fix, and time to verdict (at most one interval after the first failure).

mod common;

use common::*;
use serde_json::Value;

/// The conntrace interval the tests run with (common::Conntrace::start).
const INTERVAL_S: f64 = 0.2;

fn secs(ts: &Value) -> f64 {
    let t = humantime::parse_rfc3339(ts.as_str().expect("timestamp")).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A verdict reports the failures seen up to its interval: all of them where the workload is
/// fast, a first part where it spans intervals (slow machines); the sample counters carry the
/// exact totals (checked in watch.rs).
fn assert_failures_so_far(v: &Value, total: u64) {
    let n = v["failures"].as_u64().unwrap();
    assert!(n >= 1 && n <= total, "verdict says {n} failures, the workload saw {total}: {v}");
    if std::env::var("CONNTRACE_IN_VM").is_err() {
        assert_eq!(n, total, "{v}");
    }
}

/// The verdict came out within one interval of the first failure (plus scheduling slack).
fn assert_prompt(v: &Value) {
    let delay = secs(&v["ts"]) - secs(&v["since"]);
    // Software emulation runs everything ~10x slower: allow it a second more.
    let slack = if std::env::var("CONNTRACE_IN_VM").is_ok() { 1.3 } else { 0.3 };
    assert!(delay <= INTERVAL_S + slack, "verdict {delay:.3} s after the first failure: {v}");
    eprintln!("verdict after {delay:.3} s: {}", v["summary"]);
}

#[test]
fn fd_limit_verdict_with_evidence_then_resolution() {
    if !require_root("fd_limit_verdict_with_evidence_then_resolution") {
        return;
    }
    let ct = Conntrace::start(&[]);
    let out = in_netns("$WL emfile --nofile 64 --failures 10 --hold-ms 1000");
    // Failures stop: the verdict resolves after 5 quiet seconds.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    let vs = verdicts(&lines, pid, "fd_limit");
    assert_eq!(vs.len(), 2, "active then resolved: {vs:?}");
    let (active, resolved) = (vs[0], vs[1]);
    assert_eq!(active["state"], "active");
    assert_prompt(active);
    assert_failures_so_far(active, 10);
    assert_eq!(active["evidence"]["nofile_soft"], 64);
    assert!(active["evidence"]["nofile_hard"].as_u64().unwrap() >= 64);
    assert!(active["evidence"]["open_fds"].as_u64().unwrap() >= 64, "{active}");
    // The plateau in connections: every socket the workload opened, read while it was stuck.
    assert_eq!(active["evidence"]["sockets"], wl["opened"], "{active}");
    let stuck = format!("is stuck at {} concurrent connections", wl["opened"]);
    assert!(active["summary"].as_str().unwrap().contains(&stuck), "{active}");
    assert!(active["fix"][0].as_str().unwrap().contains(&format!("prlimit --pid {pid}")));
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["failures"], 10);
    assert!(resolved["duration_s"].as_f64().is_some());
}

/// A process that exits right after its failures: the verdict still has the limit (carried by
/// the failure itself), says in words what could not be read, and has no "?" or null.
#[test]
fn fd_limit_of_a_process_that_exits_at_once_still_has_numbers() {
    if !require_root("fd_limit_of_a_process_that_exits_at_once_still_has_numbers") {
        return;
    }
    let ct = Conntrace::start(&[]);
    let out = in_netns("$WL emfile --nofile 64 --failures 10");
    let lines = ct.stop();
    let pid = report(&out)["pid"].as_u64().unwrap();
    let vs = activations(&lines, pid, "fd_limit");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let v = vs[0];
    assert_eq!(v["evidence"]["nofile_soft"], 64, "{v}");
    let text = format!("{} {} {}", v["summary"], v["evidence"], v["fix"]);
    assert!(!text.contains('?') && !text.contains("null"), "{v}");
}

#[test]
fn ephemeral_ports_verdict_when_established_connections_hold_the_ports() {
    if !require_root("ephemeral_ports_verdict_when_established_connections_hold_the_ports") {
        return;
    }
    let ct = Conntrace::start(&[]);
    let out = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40003'\n\
         $WL ports --listen 127.0.0.1:9000 --connect 127.0.0.1:9000 --count 10 --hold-ms 1000",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    let vs = activations(&lines, pid, "ephemeral_ports");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let v = vs[0];
    assert_prompt(v);
    assert_eq!(v["destination"], "127.0.0.1:9000");
    assert_failures_so_far(v, wl["errors"]["EADDRNOTAVAIL"].as_u64().unwrap());
    let e = &v["evidence"];
    assert_eq!(e["range"], "40000-40003");
    assert_eq!(e["range_size"], 4);
    assert_eq!(e["established"], 4, "{e}");
    assert_eq!(e["time_wait"], 0);
    assert!(e["netns"].as_u64().unwrap() > 0);
    let fixes = v["fix"].to_string();
    assert!(!fixes.contains("tcp_tw_reuse=1"), "TIME_WAIT is not the problem here: {fixes}");
    assert!(fixes.contains("ip_local_port_range"));
    assert!(v["summary"]
        .as_str()
        .unwrap()
        .contains("4 of 4 ports in 40000-40003 are in use (4 ESTABLISHED, 0 TIME_WAIT)"));
}

#[test]
fn ephemeral_ports_verdict_when_time_wait_holds_the_ports() {
    if !require_root("ephemeral_ports_verdict_when_time_wait_holds_the_ports") {
        return;
    }
    let ct = Conntrace::start(&[]);
    let out = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40049'\n\
         sysctl -qw net.ipv4.tcp_tw_reuse=0\n\
         $WL tw --addr 127.0.0.2:9000 --count 60 --hold-ms 1000",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    // 50 ports, 60 attempts (a slow peer can free a port or two before the last attempts).
    let failed = wl["errors"]["EADDRNOTAVAIL"].as_u64().unwrap_or(0);
    assert_eq!(wl["ok"].as_u64().unwrap() + failed, 60, "{wl}");
    assert!(failed > 0, "{wl}");
    let vs = activations(&lines, pid, "ephemeral_ports");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let v = vs[0];
    assert_prompt(v);
    assert_eq!(v["destination"], "127.0.0.2:9000");
    assert_failures_so_far(v, wl["errors"]["EADDRNOTAVAIL"].as_u64().unwrap());
    let e = &v["evidence"];
    // At the moment of failure every port of the range is taken by connections this side
    // closed first: TIME_WAIT, or FIN_WAIT2 while the server has not closed its side yet.
    let held = |k: &str| e[k].as_u64().unwrap();
    assert_eq!(held("established") + held("time_wait") + held("other"), 50, "{e}");
    let closing = e["states"]["FIN_WAIT2"].as_u64().unwrap_or(0) + e["states"]["FIN_WAIT1"].as_u64().unwrap_or(0);
    assert_eq!(held("time_wait") + closing, 50, "{e}");
    assert_eq!(e["tcp_tw_reuse"], 0);
    assert_eq!(e["tcp_tw_reuse_applies"], false);
    let fixes = v["fix"].to_string();
    assert!(fixes.contains("net.ipv4.tcp_tw_reuse=1"), "{fixes}");
    assert!(!fixes.contains("tcp_tw_recycle=1"));
}

#[test]
fn time_wait_pressure_is_predicted_before_the_ports_run_out() {
    if !require_root("time_wait_pressure_is_predicted_before_the_ports_run_out") {
        return;
    }
    let ct = Conntrace::start(&[]);
    // 25 connections/s × 60 s of TIME_WAIT = 1,500 ports needed, 200 available: the range
    // would fill in ~8 s; the workload stops after 3 s (75 connections), before any failure.
    let out = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40199'\n\
         sysctl -qw net.ipv4.tcp_tw_reuse=0\n\
         $WL tw --addr 127.0.0.1:9000 --count 75 --rate 25",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!(wl["ok"], 75, "no failure yet: {wl}");
    assert!(verdicts(&lines, pid, "ephemeral_ports").is_empty());
    let vs = warnings(&lines, pid, "time_wait_pressure");
    assert!(!vs.is_empty(), "no prediction: {:?}", verdicts(&lines, pid, "time_wait_pressure"));
    let v = vs[0];
    assert_eq!(v["destination"], "127.0.0.1:9000");
    let e = &v["evidence"];
    // The first interval may catch the churn half-way (a lower rate, a later exhaustion):
    // the prediction only has to come before the failures, with a plausible rate.
    let rate = e["rate_per_s"].as_f64().unwrap();
    assert!((2.0..=40.0).contains(&rate), "rate {rate}: {e}");
    let left = e["seconds_left"].as_u64().unwrap();
    assert!(left > 0 && left <= 100, "seconds_left {left}: {e}");
    assert!(e["predicted_time_wait"].as_u64().unwrap() > 200, "{e}");
    eprintln!("prediction: {}", v["summary"]);
}

#[test]
fn healthy_churn_gets_no_verdict() {
    if !require_root("healthy_churn_gets_no_verdict") {
        return;
    }
    let ct = Conntrace::start(&[]);
    // Full speed with the defaults (loopback: tcp_tw_reuse=2 applies), and a slow churn with
    // reuse off whose TIME_WAITs (5/s × 60 s = 300) fit easily in 28,232 ports. A new
    // namespace's tcp_max_tw_buckets is half the established hash (256 in a small VM, where
    // full-speed churn really overflows it and tw_buckets would be right): set it high, so the
    // churn is healthy by construction.
    let fast = in_netns(
        "sysctl -qw net.ipv4.tcp_max_tw_buckets=262144
$WL churn --addr 127.0.0.1:9000 --seconds 2",
    );
    let slow = in_netns("sysctl -qw net.ipv4.tcp_tw_reuse=0\n$WL tw --addr 127.0.0.1:9000 --count 10 --rate 5");
    let lines = ct.stop();
    for out in [&fast, &slow] {
        let pid = report(out)["pid"].as_u64().unwrap();
        let vs: Vec<_> = lines.iter().filter(|v| v["type"] == "verdict" && v["pid"] == pid).collect();
        assert!(vs.is_empty(), "healthy churn got a verdict: {vs:?}");
        assert!(total(&lines, pid, "time_wait_created") > 0, "the churn ran");
    }
}
