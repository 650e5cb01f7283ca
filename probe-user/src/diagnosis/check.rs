//! `conntrace check`: audits a machine (or one process) against every connection limit,
//! before anything fails, without eBPF. Pure rules over the limits in
//! [`net`](crate::domain::net); the fixes say what is true where common advice is wrong
//! (tcp_tw_recycle is gone since Linux 4.12, tcp_tw_reuse helps outbound connections only,
//! a listen() backlog is capped by somaxconn).

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::domain::net::{self, endpoint, reserved_strings, usable_ports, EphemeralUse, NetFacts, SystemFacts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }

    /// Fail at or above `fail`, warn at or above `warn` (fractions of the limit).
    fn of(used: f64, warn: f64, fail: f64) -> Level {
        if used >= fail {
            Level::Fail
        } else if used >= warn {
            Level::Warn
        } else {
            Level::Ok
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub id: String,
    pub status: Level,
    pub value: Value,
    /// "used / limit" or headroom, when the item has one.
    pub usage: Option<String>,
    pub message: String,
    pub fix: Option<String>,
}

fn item(id: &str, status: Level, value: Value, usage: Option<String>, message: String, fix: Option<&str>) -> Item {
    Item { id: id.into(), status, value, usage, message, fix: fix.map(str::to_string) }
}

/// One process's file descriptors against its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFds {
    pub pid: u32,
    pub comm: String,
    pub open: u64,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

fn pct(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        0.0
    } else {
        used as f64 / limit as f64
    }
}

fn nofile_items(procs: &[ProcFds], nr_open: Option<u64>) -> Vec<Item> {
    procs
        .iter()
        .filter_map(|p| {
            let soft = p.soft?;
            let level = Level::of(pct(p.open, soft), 0.8, 1.0);
            let hard = p.hard.map(|h| h.to_string()).unwrap_or_else(|| "unlimited".into());
            let fix = format!(
                "raise the soft limit up to the hard limit ({hard}): LimitNOFILE= in the systemd unit, \
                 `ulimit -n` before start, or prlimit --pid {} --nofile=N:N; fs.nr_open ({}) caps the hard limit; \
                 if the count only grows, look for an fd leak in /proc/{}/fd",
                p.pid,
                nr_open.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into()),
                p.pid
            );
            Some(item(
                "nofile",
                level,
                json!({"pid": p.pid, "comm": p.comm, "open_fds": p.open, "nofile_soft": soft, "nofile_hard": p.hard}),
                Some(format!("{}/{}", p.open, soft)),
                format!(
                    "{}[{}] has {} of {} file descriptors open (RLIMIT_NOFILE soft limit)",
                    p.comm, p.pid, p.open, soft
                ),
                (level != Level::Ok).then_some(fix.as_str()),
            ))
        })
        .collect()
}

/// Whether tcp_tw_reuse lets connect() take over TIME_WAIT ports toward `dst` (2 = loopback
/// only; it also needs TCP timestamps and >1 s since the last segment).
pub fn tw_reuse_applies(tw_reuse: Option<u32>, dst: IpAddr) -> bool {
    match tw_reuse {
        Some(1) => true,
        Some(2) => dst.is_loopback(),
        _ => false,
    }
}

pub use target::{target_items, LimitSource, Target};

mod recycle;
mod target;

pub fn run(sys: &SystemFacts, net: &NetFacts, procs: &[ProcFds]) -> Vec<Item> {
    let mut items = nofile_items(procs, sys.nr_open);
    items.extend(file_items(sys));
    items.extend(port_items(net));
    items.extend(time_wait_items(sys, net));
    items.extend(listen_items(net));
    items.extend(table_items(sys, net));
    items
}

/// The machine's file table (fs.file-max) and the ceiling of RLIMIT_NOFILE (fs.nr_open).
fn file_items(sys: &SystemFacts) -> Vec<Item> {
    let mut items = Vec::new();
    if let Some((nr, max)) = sys.file_nr {
        let level = Level::of(pct(nr, max), 0.8, 0.95);
        items.push(item(
            "file_max",
            level,
            json!({"file_nr": nr, "file_max": max}),
            Some(format!("{nr}/{max}")),
            format!("{nr} file handles allocated system-wide of fs.file-max {max}"),
            (level != Level::Ok).then_some("raise fs.file-max (sysctl -w fs.file-max=N and in /etc/sysctl.d), and find the process holding most files"),
        ));
    }
    if let Some(n) = sys.nr_open {
        items.push(item(
            "nr_open",
            Level::Ok,
            json!(n),
            None,
            format!(
                "fs.nr_open = {n}: the most RLIMIT_NOFILE can be raised to (there is no fixed 65,536 per-process cap)"
            ),
            None,
        ));
    }
    items
}

/// The ephemeral port range and the destinations using the most of it.
fn port_items(net: &NetFacts) -> Vec<Item> {
    let mut items = Vec::new();
    let usable = net.port_range.map(|r| usable_ports(r, &net.reserved));
    if let (Some((lo, hi)), Some(usable)) = (net.port_range, usable) {
        let level = if usable < 1024 { Level::Warn } else { Level::Ok };
        items.push(item(
            "ip_local_port_range",
            level,
            json!({"range": format!("{lo}-{hi}"), "range_size": hi as u64 - lo as u64 + 1, "reserved": reserved_strings(&net.reserved), "usable": usable}),
            None,
            format!("{usable} ephemeral ports usable per (source IP, destination IP, destination port); bind() before connect() makes them host-wide"),
            (level != Level::Ok).then_some("widen net.ipv4.ip_local_port_range (e.g. 10240 65535)"),
        ));
        let busiest = EphemeralUse::of(net).map(|u| u.busiest(3)).unwrap_or_default();
        if busiest.is_empty() {
            items.push(item(
                "ephemeral_port_usage",
                Level::Ok,
                json!([]),
                Some(format!("0/{usable}")),
                "no outbound connections use ephemeral ports".into(),
                None,
            ));
        }
        for ((dst, dport), states) in busiest {
            let used: u64 = states.values().sum();
            let level = Level::of(pct(used, usable), 0.5, 0.9);
            let tw = states.get("TIME_WAIT").copied().unwrap_or(0);
            let fix = if tw * 2 >= used && !tw_reuse_applies(net.tcp_tw_reuse, dst) {
                "reuse connections (keepalive/pooling); TIME_WAIT holds most ports: net.ipv4.tcp_tw_reuse=1 lets outbound connects reuse them; widen ip_local_port_range"
            } else {
                "reuse connections (keepalive/pooling), widen net.ipv4.ip_local_port_range, or spread over more source/destination addresses"
            };
            items.push(item(
                "ephemeral_port_usage",
                level,
                json!({"destination": endpoint(&dst.to_string(), dport), "in_use": used, "usable": usable, "states": states}),
                Some(format!("{used}/{usable}")),
                format!("{used} of {usable} ephemeral ports in use toward {} ({tw} in TIME_WAIT)", endpoint(&dst.to_string(), dport)),
                (level != Level::Ok).then_some(fix),
            ));
        }
    }
    items
}

/// TIME_WAIT: reuse, the long-gone recycle, the bucket limit.
fn time_wait_items(sys: &SystemFacts, net: &NetFacts) -> Vec<Item> {
    let mut items = Vec::new();
    if let Some(r) = net.tcp_tw_reuse {
        let meaning = match r {
            0 => "off",
            1 => "on for outbound connections",
            2 => "loopback destinations only (the default)",
            _ => "unknown value",
        };
        // Off, TIME_WAIT holds an outbound connection's port for 60 s: a narrow range (or one
        // already taken a tenth by TIME_WAIT) runs out under churn.
        let usable = net.port_range.map(|r| usable_ports(r, &net.reserved)).unwrap_or(0);
        let tw = net.time_wait.unwrap_or(0);
        let tight = r == 0 && usable > 0 && (usable < 10_000 || tw * 10 >= usable);
        items.push(item(
            "tcp_tw_reuse",
            if tight { Level::Warn } else { Level::Ok },
            json!(r),
            None,
            format!(
                "net.ipv4.tcp_tw_reuse = {r}: {meaning}; it only helps connect() (never the server side or bind()), and \
                 needs TCP timestamps{}",
                if tight {
                    format!(
                        "; off, each outbound connection keeps its port 60 s in TIME_WAIT after it closes: {usable} \
                         usable ports allow about {} new connections a second toward one destination",
                        usable / 60
                    )
                } else {
                    String::new()
                }
            ),
            tight.then_some("sysctl -w net.ipv4.tcp_tw_reuse=1 (outbound connections may reuse TIME_WAIT ports), and persist it in /etc/sysctl.d"),
        ));
    }
    items.extend(recycle::tw_recycle_items(sys));

    if let (Some(max), Some(time_wait)) = (net.tcp_max_tw_buckets, net.time_wait) {
        let level = Level::of(pct(time_wait, max), 0.8, 1.0);
        items.push(item(
            "tcp_max_tw_buckets",
            level,
            json!({"time_wait": time_wait, "tcp_max_tw_buckets": max}),
            Some(format!("{time_wait}/{max}")),
            format!("{time_wait} TIME_WAIT sockets of net.ipv4.tcp_max_tw_buckets {max}; above it, closing sockets skip TIME_WAIT (TCPTimeWaitOverflow)"),
            (level != Level::Ok).then_some("reuse connections; raise net.ipv4.tcp_max_tw_buckets if memory allows"),
        ));
    }
    items
}

/// Listen queues: somaxconn, syncookies, and every listener's accept queue now.
fn listen_items(net: &NetFacts) -> Vec<Item> {
    let mut items = Vec::new();
    if let Some(m) = net.somaxconn {
        items.push(item(
            "somaxconn",
            Level::Ok,
            json!(m),
            None,
            format!("net.core.somaxconn = {m}: the cap on every listen() backlog"),
            None,
        ));
    }
    if let Some(c) = net.tcp_syncookies {
        let level = if c == 0 { Level::Warn } else { Level::Ok };
        items.push(item(
            "tcp_syncookies",
            level,
            json!(c),
            None,
            if c == 0 {
                "net.ipv4.tcp_syncookies = 0: SYNs beyond a full SYN queue are dropped (TCPReqQFullDrop)".into()
            } else {
                format!("net.ipv4.tcp_syncookies = {c}: a full SYN queue answers with syncookies instead of dropping")
            },
            (level != Level::Ok).then_some("sysctl -w net.ipv4.tcp_syncookies=1"),
        ));
    }
    for l in net.sockets.iter().filter(|s| s.state == net::LISTEN) {
        let level = Level::of(pct(l.rqueue as u64, (l.wqueue as u64).max(1)), 0.8, 1.0);
        let fill = if l.wqueue == 0 && l.rqueue == 0 { Level::Ok } else { level };
        items.push(item(
            "accept_queue",
            fill,
            json!({"listener": endpoint(&l.src.to_string(), l.sport), "queue_len": l.rqueue, "backlog": l.wqueue}),
            Some(format!("{}/{}", l.rqueue, l.wqueue)),
            format!(
                "listener {} has {} of {} connections waiting for accept()",
                endpoint(&l.src.to_string(), l.sport),
                l.rqueue,
                l.wqueue
            ),
            (fill != Level::Ok).then_some(
                "accept faster (more workers), and raise the listen() backlog together with net.core.somaxconn",
            ),
        ));
    }
    items
}

/// Kernel tables and timers: conntrack entries, TCP memory, FIN_WAIT2 orphans.
fn table_items(sys: &SystemFacts, net: &NetFacts) -> Vec<Item> {
    let mut items = Vec::new();
    if let Some((count, max)) = sys.conntrack {
        let level = Level::of(pct(count, max), 0.8, 0.95);
        items.push(item(
            "nf_conntrack",
            level,
            json!({"count": count, "max": max}),
            Some(format!("{count}/{max}")),
            format!("{count} of net.netfilter.nf_conntrack_max {max} conntrack entries"),
            (level != Level::Ok).then_some(
                "raise net.netfilter.nf_conntrack_max (and the hash size), or exempt high-rate flows with NOTRACK",
            ),
        ));
    }
    if let (Some((_low, pressure, high)), Some(mem)) = (sys.tcp_mem, sys.sockstat.get("mem").copied()) {
        let level = if mem >= high {
            Level::Fail
        } else if mem >= pressure {
            Level::Warn
        } else {
            Level::Ok
        };
        items.push(item(
            "tcp_mem",
            level,
            json!({"pages": mem, "pressure": pressure, "high": high}),
            Some(format!("{mem}/{high} pages")),
            format!("TCP buffers use {mem} pages; pressure starts at {pressure}, allocations fail at {high} (net.ipv4.tcp_mem)"),
            (level != Level::Ok).then_some("find sockets with large queues (ss -tm); raise net.ipv4.tcp_mem only with memory to back it"),
        ));
    }
    if let Some(t) = net.tcp_fin_timeout {
        items.push(item(
            "tcp_fin_timeout",
            Level::Ok,
            json!(t),
            None,
            format!("net.ipv4.tcp_fin_timeout = {t}s: how long an orphaned socket may stay in FIN_WAIT2; it does not shorten TIME_WAIT (fixed at 60 s)"),
            None,
        ));
    }
    items
}

/// 0 when nothing fails, 1 when an item fails.
pub fn exit_code(items: &[Item]) -> u8 {
    if items.iter().any(|i| i.status == Level::Fail) {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
