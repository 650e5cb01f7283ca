//! The header of a recording's segments: what makes each readable on its own, after its
//! predecessors were rotated away: the machine, the kernel, conntrace and how it attached, and
//! a snapshot of every limit `check` reads.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};

use crate::{
    commands::host::nofile_now,
    domain::status::Status,
    system::{facts, netdiag, procinfo},
};

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The header object (the recorder adds `type`, `format`, `segment`, `ts`).
pub fn header(status: &Status, pids: &[u32]) -> Value {
    let modes: Map<String, Value> =
        status.signals.iter().map(|(n, s)| (n.name().to_string(), json!(s.mode.as_str()))).collect();
    let sys = facts::read_system();
    let mut limits = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            limits.insert(k.to_string(), v);
        }
    };
    put("fs.file-max", json!(sys.file_nr.map(|f| f.1)));
    put("fs.nr_open", json!(sys.nr_open));
    put("net.netfilter.nf_conntrack_max", json!(sys.conntrack.map(|c| c.1)));
    put("net.ipv4.tcp_mem", json!(sys.tcp_mem.map(|(a, b, c)| format!("{a} {b} {c}"))));
    // Per namespace (conntrace's own, and the watched processes'), one flat key each so a
    // report lists them as it lists the machine's.
    let mut seen = std::collections::BTreeSet::new();
    for pid in std::iter::once(None).chain(pids.iter().map(|p| Some(*p))) {
        let ns = match pid {
            Some(p) => netdiag::netns_inode(p),
            None => netdiag::ns_link_inode("/proc/self/ns/net"),
        };
        let Some(ns) = ns.filter(|ns| seen.insert(*ns)) else { continue };
        let Ok(net) = netdiag::in_netns_of(pid, facts::read_port_limits_and_tables) else { continue };
        let at = |k: &str| format!("{k} (netns {ns})");
        put(&at("net.ipv4.ip_local_port_range"), json!(net.port_range.map(|(l, h)| format!("{l} {h}"))));
        let reserved = crate::domain::net::reserved_strings(&net.reserved);
        if !reserved.is_empty() {
            put(&at("net.ipv4.ip_local_reserved_ports"), json!(reserved.join(",")));
        }
        put(&at("net.ipv4.tcp_tw_reuse"), json!(net.tcp_tw_reuse));
        put(&at("net.ipv4.tcp_max_tw_buckets"), json!(net.tcp_max_tw_buckets));
        put(&at("net.core.somaxconn"), json!(net.somaxconn));
    }
    for &pid in pids {
        let n = nofile_now(pid);
        let comm = procinfo::comm(pid).unwrap_or_default();
        let fmt = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
        put(&format!("RLIMIT_NOFILE of {comm}[{pid}] (soft hard)"), json!(format!("{} {}", fmt(n.soft), fmt(n.hard))));
    }
    json!({
        "hostname": read_trim("/proc/sys/kernel/hostname"),
        "boot_id": read_trim("/proc/sys/kernel/random/boot_id"),
        "kernel": status.kernel,
        "version": env!("CARGO_PKG_VERSION"),
        "attach_modes": modes,
        "limits": limits,
    })
}

/// Fails with one line naming `dir` and the fix when a recording could not be written there
/// (the flight recorder writes only later, at a trigger).
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!("cannot create the recording directory {}: choose another --record DIR", dir.display())
    })?;
    let probe = dir.join(".conntrace-write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!("cannot write in {}: choose another --record DIR or fix its permissions", dir.display())
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
