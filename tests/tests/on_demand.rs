//! `--syscall-hooks on-demand` (the default): on a kernel without fexit the EMFILE/ENFILE hook
//! is a system-call tracepoint, attached only while a process is near its RLIMIT_NOFILE, so
//! the rest of the time nothing slows the system calls of the host.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use common::*;
use serde_json::Value;

fn fd_signal(v: &Value) -> &Value {
    &v["signals"]["fd_alloc"]
}

fn armed(v: &Value) -> Option<bool> {
    (v["type"] == "status").then(|| fd_signal(v)["armed"].as_bool()).flatten()
}

#[test]
fn the_fd_hook_is_attached_while_a_process_nears_its_limit_and_counts_exactly() {
    let name = "the_fd_hook_is_attached_while_a_process_nears_its_limit_and_counts_exactly";
    if !require_root(name) {
        return;
    }
    let mut ct = Conntrace::start(&["--syscall-hooks", "on-demand"]);
    let first = status(&ct.seen).clone();
    let fd = fd_signal(&first);
    if fd["mode"] != "raw_tracepoint" {
        // fexit or kprobes cost only the calls they hook: nothing to attach on demand.
        assert!(fd["armed"].is_null(), "{fd}");
        eprintln!("SKIPPED {name}: fd_alloc runs in {} mode here (no system-call hook needed)", fd["mode"]);
        ct.stop();
        return;
    }
    assert_eq!(fd["armed"], false, "{fd}");
    assert_eq!(fd["host_cost"], "every_syscall_while_armed", "{fd}");
    assert_eq!(first["slows_every_syscall"], serde_json::json!([]), "{first}");

    // A process with 700 of its 1,024 fds open, quiet (no network activity): found by the
    // scan of the host's fd tables.
    let mut wl = Command::new(workload_bin())
        .args(["emfile", "--nofile", "1024", "--ramp", "700", "--wait-stdin", "--failures", "25"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the workload");
    let mut out = BufReader::new(wl.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready");
    assert!(ct.wait_for(|v| armed(v) == Some(true)), "the hook was never attached: {:?}", ct.seen.last());
    let on = ct.seen.iter().rev().find(|v| armed(v) == Some(true)).cloned().unwrap();
    assert_eq!(on["slows_every_syscall"], serde_json::json!(["fd_alloc"]), "{on}");

    // Now the burst: every EMFILE is counted.
    wl.stdin.take().expect("stdin").write_all(b"go\n").expect("writing to the workload");
    line.clear();
    out.read_line(&mut line).expect("report line");
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(wl.wait().expect("workload exit").success());
    assert_eq!(report["errors"]["EMFILE"], 25, "{report}");
    let pid = report["pid"].as_u64().unwrap();

    // Detached again once no process has been near for 10 s.
    let detached = ct.wait_for(|v| armed(v) == Some(false));
    let lines = ct.stop();
    assert_eq!(total(&lines, pid, "emfile"), 25, "{report}");
    assert!(detached, "still attached 30 s after the process exited");
}

/// A process that goes from a few fds to EMFILE within one interval fails before the hook is
/// attached: what is counted is a floor, and the verdict says "at least" with the attach time.
#[test]
fn a_burst_before_the_hook_is_attached_is_reported_as_a_floor() {
    let name = "a_burst_before_the_hook_is_attached_is_reported_as_a_floor";
    if !require_root(name) {
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "on-demand"]);
    let fd = fd_signal(status(&ct.seen)).clone();
    if fd["mode"] != "raw_tracepoint" {
        eprintln!("SKIPPED {name}: fd_alloc runs in {} mode here (counted all the time)", fd["mode"]);
        ct.stop();
        return;
    }
    // 253 fds in 0.13 s, then EMFILE 2,000 times a second for 3 s.
    let out = in_netns("$WL emfile --nofile 256 --failures 6000 --rate 2000");
    let lines = ct.stop();
    let report = report(&out);
    let pid = report["pid"].as_u64().unwrap();
    assert_eq!(report["errors"]["EMFILE"], 6000, "{report}");
    let counted = total(&lines, pid, "emfile");
    let last = verdicts(&lines, pid, "fd_limit").last().cloned().cloned().expect("an fd_limit verdict");
    let summary = last["summary"].as_str().unwrap_or_default();
    eprintln!("{counted} of 6,000 EMFILE counted; {summary}");
    assert!(counted > 0 && counted <= 6000, "{counted}");
    assert_eq!(last["failures"], counted, "{last}");
    if counted < 6000 {
        let n = counted.to_string();
        let n = if n.len() > 3 { format!("{},{}", &n[..n.len() - 3], &n[n.len() - 3..]) } else { n };
        assert!(summary.contains(&format!("at least {n} calls failed with EMFILE")), "{summary}");
        let note = last["evidence"]["note"].as_str().unwrap_or_default();
        assert!(note.contains("it was attached at ") && note.contains("--syscall-hooks fd"), "{note}");
    }
}

/// `--syscall-hooks fd`: exact EMFILE counts with the fd hook always attached, and no other
/// system-call tracepoint (none at system-call entry): connect and accept come from
/// inet_sock_set_state as in the default.
#[test]
fn fd_mode_attaches_only_the_fd_hook_and_counts_emfile_exactly() {
    let name = "fd_mode_attaches_only_the_fd_hook_and_counts_emfile_exactly";
    if !require_root(name) {
        return;
    }
    let ct = Conntrace::start(&["--syscall-hooks", "fd"]);
    let out = in_netns("$WL emfile --nofile 64 --failures 10");
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!(wl["errors"]["EMFILE"], 10, "workload: {wl}");
    let st = status(&lines);
    let fd = fd_signal(st);
    assert_signal_exact(&lines, "fd_alloc", &["fexit", "tracepoint", "raw_tracepoint", "kprobe"]);
    assert!(fd["armed"].is_null(), "always attached, not on demand: {fd}");
    let hooks: Vec<String> = st["signals"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(s, _)| s.as_str() != "fd_alloc")
        .flat_map(|(_, v)| v["hooks"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h.as_str().map(String::from))
        .filter(|h| h.contains("syscalls/") || h.contains("sys_enter") || h.contains("sys_exit"))
        .collect();
    assert_eq!(hooks, Vec::<String>::new(), "only fd_alloc may use system-call hooks: {st}");
    assert_eq!(total(&lines, pid, "emfile"), 10);
    assert_eq!(events(&lines, pid, "emfile").len(), 10);
}
