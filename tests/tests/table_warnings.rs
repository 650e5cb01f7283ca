//! Warnings for tables of the machine or a namespace: conntrack entries rising toward
//! nf_conntrack_max, TCP memory rising toward tcp_mem's pressure threshold. Both lower a
//! global sysctl, so they run only in the kernel-matrix VM, and in one row of it: the rules
//! read /proc, the same on every kernel and attach mode.

mod common;

use common::*;

/// 10 connections a second kept open in a namespace whose conntrack is on, against
/// nf_conntrack_max 300: a warning charged to the connecting process, with the time left, and
/// nothing dropped (it stops at 150).
#[test]
fn conntrack_entries_rising_toward_the_limit_are_warned() {
    let name = "conntrack_entries_rising_toward_the_limit_are_warned";
    if !require_root(name) || !the_row(name) {
        return;
    }
    let loaded = std::process::Command::new("modprobe").arg("nf_conntrack").status().map(|s| s.success());
    assert_eq!(loaded.ok(), Some(true), "modprobe nf_conntrack");
    const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
    let _restore = Sysctl(MAX, std::fs::read_to_string(MAX).unwrap());
    std::fs::write(MAX, "300").unwrap();
    let ct = Conntrace::start(&[]);
    let out = in_netns(
        "nft add table ip t\n\
         nft add chain ip t out '{ type filter hook output priority 0; }'\n\
         nft add rule ip t out ct state new counter\n\
         $WL ports --listen 127.0.0.1:9000 --connect 127.0.0.1:9000 --count 150 --rate 10",
    );
    drop(_restore);
    let lines = ct.stop();
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    assert_eq!(wl["ok"], 150, "{wl}");
    let ws = warnings(&lines, pid, "conntrack_pressure");
    let w = ws.first().unwrap_or_else(|| panic!("no warning: {:?}", verdicts(&lines, pid, "conntrack_pressure")));
    eprintln!("{}", w["summary"]);
    let e = &w["evidence"];
    assert_eq!((e["limit"].as_u64(), e["unit"].as_str()), (Some(300), Some("entries")), "{e}");
    let rate = e["rate_per_s"].as_f64().unwrap();
    assert!((6.0..=14.0).contains(&rate), "10 connections a second: {e}");
    let left = e["seconds_left"].as_u64().unwrap();
    assert!((10..=30).contains(&left), "about (300 - 30..110) / 10 s: {e}");
    assert!(verdicts(&lines, pid, "conntrack_full").is_empty(), "nothing was dropped");
}

/// Unread data piling up in loopback receive queues at 2 MiB a second, against a tcp_mem
/// pressure threshold of 8,000 pages: a warning for every socket (pid 0) with the time left,
/// before any allocation fails.
#[test]
fn tcp_memory_rising_toward_pressure_is_warned() {
    let name = "tcp_memory_rising_toward_pressure_is_warned";
    if !require_root(name) || !the_row(name) {
        return;
    }
    const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";
    let _restore = Sysctl(TCP_MEM, std::fs::read_to_string(TCP_MEM).unwrap());
    std::fs::write(TCP_MEM, "4000 8000 16000").unwrap();
    let ct = Conntrace::start(&[]);
    let out = in_netns("$WL mem-ramp --addr 127.0.0.1:9000 --conns 4 --bytes-per-s 2097152 --seconds 9");
    let lines = ct.stop();
    drop(_restore);
    let wl = report(&out);
    let ws = warnings(&lines, 0, "tcp_mem_pressure");
    let w = ws.first().unwrap_or_else(|| panic!("no warning: {:?}; {wl}", verdicts(&lines, 0, "tcp_mem_pressure")));
    eprintln!("{}", w["summary"]);
    let e = &w["evidence"];
    assert_eq!((e["limit"].as_u64(), e["unit"].as_str()), (Some(8000), Some("pages")), "{e}");
    let rate = e["rate_per_s"].as_f64().unwrap();
    assert!((250.0..=800.0).contains(&rate), "2 MiB a second is 512 pages of 4 KiB: {e}");
    assert_eq!(w["comm"], "(all TCP sockets)");
    assert!(activations(&lines, wl["pid"].as_u64().unwrap(), "tcp_mem").is_empty(), "nothing failed yet: {wl}");
}
