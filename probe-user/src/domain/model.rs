//! Aggregation: kernel counters (summed over CPUs) → per-process interval counts, and raw
//! ring-buffer events → event records. Pure logic, no I/O.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use probe_common::{
    counters::{kind, CountKey, DestKey},
    event::{self, Event},
};

use crate::domain::errno;

/// All counters, summed over CPUs, as read at one instant.
pub type Snapshot = BTreeMap<CountKey, u64>;

/// What one process did during one interval (or in total).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub connect_attempts: u64,
    pub connect_ok: u64,
    /// Synchronous and asynchronous failures by errno name.
    pub connect_errors: BTreeMap<String, u64>,
    /// Of `connect_ok` and `connect_errors`, the outcomes of non-blocking connects.
    pub connect_async_ok: u64,
    pub connect_async_errors: u64,
    pub port_assign_failures: u64,
    /// Of `connect_errors`' EADDRNOTAVAIL, those that were not a port search failing (the
    /// address cannot be used). Not in the JSON sample (diagnosis only).
    pub connect_addr_unavailable: u64,
    pub time_wait_created: u64,
    pub emfile: u64,
    pub enfile: u64,
    /// Closes that found the namespace's tw table full (tcp_max_tw_buckets): no TIME_WAIT.
    pub tw_overflows: u64,
    /// Failed bind() calls on TCP sockets, by errno name.
    pub bind_errors: BTreeMap<String, u64>,
    /// Of `bind_errors`, binds to port 0 that found no free port (EADDRINUSE).
    pub bind_failures: u64,
    /// connect() calls on sockets that bind() had already given a port.
    pub bound_connects: u64,
    /// SYNs/ACKs dropped by listeners this process owns (full accept or SYN queue).
    pub listen_drops: u64,
    /// SYNs its listeners answered with syncookies because their SYN queue was full.
    pub syncookies: u64,
    /// listen() calls on TCP sockets.
    pub listens: u64,
    /// Buffer allocations of its sockets refused because TCP memory (tcp_mem) ran out: for
    /// sending (the send waits) and for receiving (the segment is dropped unless pruning
    /// frees room).
    pub tcp_mem_send_refused: u64,
    pub tcp_mem_recv_refused: u64,
    /// The same refused by the socket's memory cgroup while TCP memory was below tcp_mem.
    pub memcg_refused: u64,
    /// Packets of its sockets dropped by netfilter (a rule, or a full conntrack table).
    pub netfilter_drops: u64,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    fn add(&mut self, key: &CountKey, n: u64) {
        match key.kind {
            kind::CONNECT_ATTEMPT => self.connect_attempts += n,
            kind::CONNECT_OK => self.connect_ok += n,
            kind::CONNECT_ASYNC_OK => {
                self.connect_ok += n;
                self.connect_async_ok += n;
            }
            kind::CONNECT_ERROR => *self.connect_errors.entry(errno::name(key.aux)).or_default() += n,
            kind::CONNECT_ASYNC_ERROR => {
                *self.connect_errors.entry(errno::name(key.aux)).or_default() += n;
                self.connect_async_errors += n;
            }
            kind::PORT_ASSIGN_FAILURE => self.port_assign_failures += n,
            kind::CONNECT_ADDR_UNAVAILABLE => self.connect_addr_unavailable += n,
            kind::TIME_WAIT => self.time_wait_created += n,
            kind::EMFILE => self.emfile += n,
            kind::ENFILE => self.enfile += n,
            kind::TW_OVERFLOW => self.tw_overflows += n,
            kind::BIND_ERROR => *self.bind_errors.entry(errno::name(key.aux)).or_default() += n,
            kind::BIND_PORT_EXHAUSTED => self.bind_failures += n,
            kind::CONNECT_BOUND => self.bound_connects += n,
            kind::LISTEN => self.listens += n,
            kind::TCP_MEM_REFUSED if key.aux & 2 != 0 => self.memcg_refused += n,
            kind::TCP_MEM_REFUSED if key.aux & 1 != 0 => self.tcp_mem_recv_refused += n,
            kind::TCP_MEM_REFUSED => self.tcp_mem_send_refused += n,
            kind::NETFILTER_DROP => self.netfilter_drops += n,
            _ => {}
        }
    }

    pub fn connect_error_total(&self) -> u64 {
        self.connect_errors.values().sum()
    }
}

/// Growth of a counter between two reads. Counters only grow; a smaller value means the entry
/// was deleted and re-created in between, so all of it is new.
fn delta(before: u64, now: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// Per-process change between two snapshots; processes with no change are left out.
/// A counter missing from `prev` started at zero. Retracted TIME_WAITs/overflows (aborts
/// the set_state fallback first took for TIME_WAIT) are taken back.
pub fn diff(prev: &Snapshot, cur: &Snapshot) -> BTreeMap<u32, Counts> {
    let mut out: BTreeMap<u32, Counts> = BTreeMap::new();
    let mut retracted: Vec<(u32, u16, u64)> = Vec::new();
    for (key, &now) in cur {
        let d = delta(prev.get(key).copied().unwrap_or(0), now);
        if d > 0 {
            let c = out.entry(key.tgid).or_default();
            if key.kind == kind::TW_RETRACTED {
                retracted.push((key.tgid, key.aux, d));
            } else {
                c.add(key, d);
            }
        }
    }
    for (tgid, what, n) in retracted {
        let c = out.entry(tgid).or_default();
        if what == kind::TW_OVERFLOW {
            c.tw_overflows = c.tw_overflows.saturating_sub(n);
        } else {
            c.time_wait_created = c.time_wait_created.saturating_sub(n);
        }
    }
    out.retain(|_, c| !c.is_empty());
    out
}

/// Per-destination change between two snapshots, with the destination decoded.
pub fn diff_dest(
    prev: &BTreeMap<DestKey, u64>,
    cur: &BTreeMap<DestKey, u64>,
) -> Vec<(DestKey, crate::domain::net::Dest, u64)> {
    cur.iter()
        .filter_map(|(k, &now)| {
            let d = delta(prev.get(k).copied().unwrap_or(0), now);
            let addr = match k.family as i32 {
                libc::AF_INET => IpAddr::V4(Ipv4Addr::new(k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3])),
                libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(k.daddr)),
                _ => return None,
            };
            (d > 0).then_some((*k, crate::domain::net::Dest { netns: k.netns, addr, port: k.dport }, d))
        })
        .collect()
}

/// One failure as reported to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub ts: SystemTime,
    pub kind: &'static str,
    pub pid: u32,
    /// 0 when the failure was seen in softirq (asynchronous connect outcomes).
    pub tid: u32,
    pub comm: String,
    pub errno: String,
    pub netns: Option<u32>,
    pub saddr: Option<String>,
    pub sport: Option<u16>,
    pub daddr: Option<String>,
    pub dport: Option<u16>,
    /// RLIMIT_NOFILE in force, for EMFILE.
    pub limit: Option<u64>,
    pub syscall_nr: Option<i32>,
    pub is_async: bool,
    pub suppressed: u32,
}

pub fn comm_str(raw: &[u8]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn addr(family: u16, raw: &[u8; 16]) -> Option<String> {
    match family as i32 {
        libc::AF_INET => Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).to_string()),
        libc::AF_INET6 => Some(Ipv6Addr::from(*raw).to_string()),
        _ => None,
    }
}

/// The contract's name of an event kind.
pub fn event_kind_name(kind: u16) -> &'static str {
    match kind {
        event::kind::PORT_ASSIGN_FAILURE => "port_assign_failure",
        event::kind::EMFILE => "emfile",
        event::kind::ENFILE => "enfile",
        event::kind::CONNECT_ERROR => "connect_error",
        event::kind::BIND_ERROR => "bind_error",
        _ => "unknown",
    }
}

/// Converts a kernel event; `boot_offset` maps CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall
/// time.
pub fn decode(ev: &Event, boot_offset: Duration) -> EventRecord {
    let kind = event_kind_name(ev.kind);
    let network = ev.family != 0;
    // A bind has no destination: saddr/sport are what was asked for.
    let has_dest = network && ev.kind != event::kind::BIND_ERROR;
    EventRecord {
        ts: SystemTime::UNIX_EPOCH + boot_offset + Duration::from_nanos(ev.ts_ns),
        kind,
        pid: ev.pid,
        tid: ev.tid,
        comm: comm_str(&ev.comm),
        errno: errno::name(ev.errno),
        netns: (ev.netns != 0).then_some(ev.netns),
        saddr: if network { addr(ev.family, &ev.saddr) } else { None },
        sport: network.then_some(ev.sport),
        daddr: if has_dest { addr(ev.family, &ev.daddr) } else { None },
        dport: has_dest.then_some(ev.dport),
        limit: (ev.kind == event::kind::EMFILE && ev.limit != 0).then_some(ev.limit),
        syscall_nr: (ev.syscall_nr >= 0).then_some(ev.syscall_nr),
        is_async: ev.flags & event::flag::ASYNC != 0,
        suppressed: ev.suppressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::net::endpoint;

    fn key(tgid: u32, kind: u16, aux: u16) -> CountKey {
        CountKey { tgid, kind, aux }
    }

    #[test]
    fn diff_merges_sync_and_async_outcomes_per_process() {
        let prev: Snapshot = [(key(10, kind::CONNECT_ATTEMPT, 0), 4), (key(10, kind::CONNECT_OK, 0), 4)].into();
        let cur: Snapshot = [
            (key(10, kind::CONNECT_ATTEMPT, 0), 14),
            (key(10, kind::CONNECT_OK, 0), 4),
            (key(10, kind::CONNECT_ASYNC_OK, 0), 2),
            (key(10, kind::CONNECT_ERROR, 99), 6),
            (key(10, kind::CONNECT_ASYNC_ERROR, 111), 2),
            (key(10, kind::PORT_ASSIGN_FAILURE, 0), 6),
            (key(20, kind::TIME_WAIT, 0), 30),
            (key(20, kind::TW_OVERFLOW, 0), 5),
            (key(30, kind::BIND_ERROR, 98), 4),
            (key(30, kind::BIND_ERROR, 99), 1),
            (key(30, kind::BIND_PORT_EXHAUSTED, 0), 4),
            (key(30, kind::CONNECT_BOUND, 0), 50),
            (key(40, kind::TIME_WAIT, 0), 5),
            (key(40, kind::TW_RETRACTED, kind::TIME_WAIT), 2),
            (key(50, kind::TIME_WAIT, 0), 1),
            (key(50, kind::TW_RETRACTED, kind::TIME_WAIT), 1),
        ]
        .into();
        let d = diff(&prev, &cur);
        let a = &d[&10];
        assert_eq!(a.connect_attempts, 10);
        assert_eq!(a.connect_ok, 2);
        assert_eq!(a.connect_async_ok, 2);
        assert_eq!(a.connect_errors["EADDRNOTAVAIL"], 6);
        assert_eq!(a.connect_errors["ECONNREFUSED"], 2);
        assert_eq!(a.connect_async_errors, 2);
        assert_eq!(a.connect_error_total(), 8);
        assert_eq!(a.port_assign_failures, 6);
        assert_eq!(d[&20].time_wait_created, 30);
        assert_eq!(d[&20].tw_overflows, 5);
        let b = &d[&30];
        assert_eq!(b.bind_errors["EADDRINUSE"], 4);
        assert_eq!(b.bind_errors["EADDRNOTAVAIL"], 1);
        assert_eq!(b.bind_failures, 4);
        assert_eq!(b.bound_connects, 50);
        // Aborts first counted as TIME_WAIT are taken back; nothing left, no sample.
        assert_eq!(d[&40].time_wait_created, 3);
        assert!(!d.contains_key(&50));
    }

    #[test]
    fn diff_leaves_out_idle_processes_and_survives_recreated_entries() {
        let prev: Snapshot = [(key(1, kind::EMFILE, 0), 5), (key(2, kind::ENFILE, 0), 9)].into();
        let cur: Snapshot = [(key(1, kind::EMFILE, 0), 5), (key(2, kind::ENFILE, 0), 3)].into();
        let d = diff(&prev, &cur);
        assert!(!d.contains_key(&1));
        assert_eq!(d[&2].enfile, 3);
    }

    fn raw_event() -> Event {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"client");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        Event {
            ts_ns: 1_500_000_000,
            limit: 0,
            kind: event::kind::PORT_ASSIGN_FAILURE,
            family: libc::AF_INET as u16,
            errno: 99,
            dport: 9000,
            sport: 0,
            _pad: 0,
            pid: 42,
            tid: 43,
            netns: 4026531840,
            syscall_nr: -1,
            flags: 0,
            suppressed: 3,
            saddr,
            daddr,
            comm,
        }
    }

    #[test]
    fn decodes_network_events() {
        let r = decode(&raw_event(), Duration::from_secs(1000));
        assert_eq!(r.kind, "port_assign_failure");
        assert_eq!(r.errno, "EADDRNOTAVAIL");
        assert_eq!(r.comm, "client");
        assert_eq!(r.saddr.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.daddr.as_deref(), Some("127.0.0.2"));
        assert_eq!(r.dport, Some(9000));
        assert_eq!(r.netns, Some(4026531840));
        assert_eq!(r.suppressed, 3);
        assert_eq!(r.ts, SystemTime::UNIX_EPOCH + Duration::from_millis(1_001_500));
    }

    #[test]
    fn decodes_fd_events_without_addresses() {
        let mut ev = raw_event();
        ev.kind = event::kind::EMFILE;
        ev.family = 0;
        ev.errno = 24;
        ev.limit = 64;
        ev.syscall_nr = 41;
        let r = decode(&ev, Duration::ZERO);
        assert_eq!(r.kind, "emfile");
        assert_eq!(r.limit, Some(64));
        assert_eq!(r.saddr, None);
        assert_eq!(r.dport, None);
        assert_eq!(r.syscall_nr, Some(41));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint("::1", 80), "[::1]:80");
        assert_eq!(endpoint("10.0.0.1", 80), "10.0.0.1:80");
    }
}

/// One process's line for one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub pid: u32,
    pub comm: String,
    pub interval_s: f64,
    pub counts: Counts,
    pub nofile_limit: Option<u64>,
    pub open_fds: Option<u64>,
}
