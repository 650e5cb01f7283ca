//! Warnings before a limit is reached: a process leaking sockets under a low RLIMIT_NOFILE is
//! warned about (fd_pressure) before its first EMFILE, with the time left; the warning ends
//! when the failures begin, saying so.

mod common;

use common::*;
use serde_json::Value;

fn unix_s(ts: &Value) -> f64 {
    let t = humantime::parse_rfc3339(ts.as_str().expect("timestamp")).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_leaking_process_is_warned_before_its_first_emfile() {
    let name = "a_leaking_process_is_warned_before_its_first_emfile";
    if !require_root(name) {
        return;
    }
    if std::env::var("CONNTRACE_IN_VM").is_ok() {
        eprintln!(
            "SKIPPED {name}: a 25 s leak under TCG emulation; the rule reads /proc (the same on every kernel) and \
             EMFILE counting is proven by the other fd tests in every row"
        );
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "on-demand"]);
    // 20 sockets a second under a limit of 512: EMFILE after ~25 s.
    let out = in_netns("$WL emfile --nofile 512 --failures 5 --rate 20 --hold-ms 7000");
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    let first_failure = wl["first_failure_ms"].as_u64().expect("the workload failed") as f64 / 1000.0;
    assert_eq!(wl["errors"]["EMFILE"], 5, "{wl}");

    let warnings: Vec<&Value> = verdicts(&lines, pid, "fd_pressure");
    let first = warnings.iter().find(|v| v["state"] == "warning").unwrap_or_else(|| panic!("no warning: {warnings:?}"));
    let warned_at = unix_s(&first["ts"]);
    let ev = &first["evidence"];
    let left = ev["seconds_left"].as_f64().unwrap();
    eprintln!(
        "warned {:.1} s before the first EMFILE, predicting {left} s: {}",
        first_failure - warned_at,
        first["summary"]
    );
    assert!(warned_at < first_failure, "the warning came after the first failure");
    assert_eq!(ev["nofile_soft"], 512, "{ev}");
    let rate = ev["rate_per_s"].as_f64().unwrap();
    assert!((15.0..=25.0).contains(&rate), "the workload opens 20 fds/s: {ev}");
    // The prediction holds: the failure came when it said, give or take the readings' delay.
    let predicted = warned_at + left;
    assert!(
        (predicted - first_failure).abs() <= 3.0,
        "predicted at {predicted:.1}, failed at {first_failure:.1}: {ev}"
    );
    // Then the failures: the fd_limit verdict, and the warning ends saying why.
    assert_eq!(activations(&lines, pid, "fd_limit").len(), 1);
    let resolved = warnings.iter().find(|v| v["state"] == "resolved").expect("the warning resolves");
    let why = resolved["resolution"].as_str().unwrap_or_default();
    assert!(why.contains("EMFILE failures began"), "{resolved}");
}

/// A process holding a steady number of fds, however close to its limit, is not warned.
#[test]
fn a_steady_process_is_not_warned() {
    let name = "a_steady_process_is_not_warned";
    if !require_root(name) {
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "on-demand"]);
    // 400 of 512 opened at once, held for 8 s (near the limit, not moving), then the rest at
    // once up to EMFILE.
    let out = in_netns("(sleep 8; echo) | $WL emfile --nofile 512 --failures 1 --ramp 400 --wait-stdin");
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert!(verdicts(&lines, pid, "fd_pressure").is_empty(), "{:?}", verdicts(&lines, pid, "fd_pressure"));
}

/// 150 TIME_WAITs a second into a table of 3,000 (tcp_max_tw_buckets), for 15 s: full in
/// ~20 s; a warning comes while it fills, charged to the process closing first, and nothing
/// overflows (the churn stops at 2,250).
#[test]
fn a_filling_time_wait_table_is_warned_before_it_overflows() {
    let name = "a_filling_time_wait_table_is_warned_before_it_overflows";
    if !require_root(name) {
        return;
    }
    if std::env::var("CONNTRACE_IN_VM").is_ok() {
        eprintln!("SKIPPED {name}: 150 connections a second is more than TCG emulation sustains (the rule reads /proc/net/sockstat, the same on every kernel)");
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "never"]);
    let out = in_netns(
        "sysctl -qw net.ipv4.tcp_max_tw_buckets=3000\n\
         sysctl -qw net.ipv4.tcp_tw_reuse=0\n\
         $WL tw --addr 127.0.0.1:9000 --count 2250 --rate 150",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!(wl["ok"], 2250, "{wl}");
    let ws = warnings(&lines, pid, "tw_table_pressure");
    let w = ws.first().unwrap_or_else(|| panic!("no warning: {:?}", verdicts(&lines, pid, "tw_table_pressure")));
    let e = &w["evidence"];
    eprintln!("{}", w["summary"]);
    assert_eq!(e["tcp_max_tw_buckets"], 3000, "{e}");
    let rate = e["rate_per_s"].as_f64().unwrap();
    assert!((100.0..=200.0).contains(&rate), "the workload closes 150 a second: {e}");
    // Full at ~20 s from the start; the warning needs 3 s of readings.
    let left = e["seconds_left"].as_u64().unwrap();
    assert!((3..=20).contains(&left), "{e}");
    assert!(verdicts(&lines, pid, "tw_buckets").is_empty(), "nothing overflowed");
}

/// A listener (backlog 16) that never accepts and 15 clients: its accept queue stays at 15 of
/// 16 without overflowing: `accept_queue_pressure` on the listener's process after 3 s, no
/// `accept_queue` verdict (nothing dropped).
#[test]
fn an_accept_queue_staying_near_its_backlog_is_warned() {
    let name = "an_accept_queue_staying_near_its_backlog_is_warned";
    if !require_root(name) {
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "never"]);
    let out = in_netns("$WL backlog --listen 127.0.0.1:9000 --backlog 16 --clients 15 --wait-ms 5000");
    let lines = ct.stop();
    let wl = report(&out);
    let server = wl["server_pid"].as_u64().unwrap();
    assert_eq!(wl["listen_drops"], 0, "{wl}");
    let ws = warnings(&lines, server, "accept_queue_pressure");
    let w = ws.first().unwrap_or_else(|| panic!("no warning: {:?}", verdicts(&lines, server, "accept_queue_pressure")));
    eprintln!("{}", w["summary"]);
    assert_eq!(w["listener"], "127.0.0.1:9000");
    let e = &w["evidence"];
    assert_eq!((e["queue_len"].as_u64(), e["backlog"].as_u64()), (Some(15), Some(16)), "{e}");
    assert!(e["for_s"].as_u64().unwrap() >= 3, "{e}");
    assert!(verdicts(&lines, server, "accept_queue").is_empty());
}

/// A process opening 25 connections a second toward one destination and keeping them, in a
/// namespace with 400 usable ports: `port_pressure` before its first EADDRNOTAVAIL (~16 s),
/// charged to it, with the time left; then the ephemeral_ports verdict, and the warning ends
/// saying the ports ran out.
#[test]
fn connections_growing_toward_the_port_range_are_warned_before_connect_fails() {
    let name = "connections_growing_toward_the_port_range_are_warned_before_connect_fails";
    if !require_root(name) {
        return;
    }
    if std::env::var("CONNTRACE_IN_VM").is_ok() {
        eprintln!(
            "SKIPPED {name}: a 16 s ramp under TCG emulation; the rule reads sock_diag (the same on every kernel) and \
             port exhaustion is counted in every row by the ports tests"
        );
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "never"]);
    let out = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40399'\n\
         $WL ports --listen 127.0.0.1:9000 --connect 127.0.0.1:9000 --count 410 --rate 25 --hold-ms 3000",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!((wl["ok"].as_u64(), wl["errors"]["EADDRNOTAVAIL"].as_u64()), (Some(400), Some(10)), "{wl}");
    let first_failure = wl["first_failure_ms"].as_u64().expect("connect failed") as f64 / 1000.0;
    let ws = warnings(&lines, pid, "port_pressure");
    let w = ws.first().unwrap_or_else(|| panic!("no warning: {:?}", verdicts(&lines, pid, "port_pressure")));
    let warned_at = unix_s(&w["ts"]);
    let e = &w["evidence"];
    let left = e["seconds_left"].as_f64().unwrap();
    eprintln!(
        "warned {:.1} s before the first EADDRNOTAVAIL, predicting {left} s: {}",
        first_failure - warned_at,
        w["summary"]
    );
    assert_eq!(w["destination"], "127.0.0.1:9000", "{w}");
    assert_eq!((e["usable"].as_u64(), e["range"].as_str()), (Some(400), Some("40000-40399")), "{e}");
    assert!(warned_at < first_failure, "the warning came after the first failure");
    let rate = e["rate_per_s"].as_f64().unwrap();
    assert!((18.0..=32.0).contains(&rate), "the workload connects 25 times a second: {e}");
    let predicted = warned_at + left;
    assert!((predicted - first_failure).abs() <= 3.0, "predicted at {predicted:.1}, failed at {first_failure:.1}: {e}");
    assert_eq!(activations(&lines, pid, "ephemeral_ports").len(), 1);
    let all = verdicts(&lines, pid, "port_pressure");
    let resolved = all.iter().find(|v| v["state"] == "resolved").expect("the warning resolves");
    let why = resolved["resolution"].as_str().unwrap_or_default();
    assert!(why.contains("ran out"), "{resolved}");
}

/// A process binding to port 0 before each connect, 25 times a second toward 4 destinations,
/// in a namespace with 400 usable ports: every bind() takes a port of the range whatever the
/// destination, so the range runs out at 400 connections (~16 s): `bind_pressure` before the
/// first EADDRINUSE, no per-destination warning, then the bind_hoarding verdict.
#[test]
fn binding_before_connect_toward_the_port_range_is_warned_before_bind_fails() {
    let name = "binding_before_connect_toward_the_port_range_is_warned_before_bind_fails";
    if !require_root(name) {
        return;
    }
    if std::env::var("CONNTRACE_IN_VM").is_ok() {
        eprintln!(
            "SKIPPED {name}: a 16 s ramp under TCG emulation; the rule reads sock_diag, the same on every kernel"
        );
        return;
    }
    // With the bind() hooks, for the failures that end the warning.
    let ct = Conntrace::start(&["--syscall-hooks", "always"]);
    let out = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40399'\n\
         $WL bind-connect --bind 0.0.0.0:0 --dests 127.0.0.1:9000,127.0.0.2:9000,127.0.0.3:9000,127.0.0.4:9000 \
         --count 410 --rate 25 --hold-ms 1500",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!((wl["ok"].as_u64(), wl["bind_errors"]["EADDRINUSE"].as_u64()), (Some(400), Some(10)), "{wl}");
    let first_failure = wl["first_failure_ms"].as_u64().expect("bind failed") as f64 / 1000.0;
    let ws = warnings(&lines, pid, "bind_pressure");
    let w = ws.first().unwrap_or_else(|| panic!("no warning: {:?}", verdicts(&lines, pid, "bind_pressure")));
    let warned_at = unix_s(&w["ts"]);
    let e = &w["evidence"];
    let left = e["seconds_left"].as_f64().unwrap();
    eprintln!(
        "warned {:.1} s before the first EADDRINUSE, predicting {left} s: {}",
        first_failure - warned_at,
        w["summary"]
    );
    assert_eq!((e["limit"].as_u64(), e["unit"].as_str()), (Some(400), Some("ports")), "{e}");
    assert!(warned_at < first_failure, "the warning came after the first failure");
    let predicted = warned_at + left;
    assert!((predicted - first_failure).abs() <= 3.0, "predicted at {predicted:.1}, failed at {first_failure:.1}: {e}");
    assert!(warnings(&lines, pid, "port_pressure").is_empty(), "{:?}", warnings(&lines, pid, "port_pressure"));
    assert_eq!(activations(&lines, pid, "bind_hoarding").len(), 1);
    let resolved = verdicts(&lines, pid, "bind_pressure").into_iter().find(|v| v["state"] == "resolved");
    let why = resolved.expect("the warning ends")["resolution"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("bind() failures began"), "{why}");
}
