//! Root-cause verdicts: which limit a process ran into, the numbers that prove it, and the
//! fix. Pure rules over interval counts plus evidence supplied through [`Evidence`] (procfs
//! and sock_diag in production, fixtures in tests). The engine (`engine`) keeps verdicts
//! active and resolves them; each cause family has its own file.

use std::{collections::BTreeMap, time::SystemTime};

pub use crate::domain::net::{Dest, PortReading};
pub use crate::domain::time::thousands;
use crate::domain::{
    listen::{ListenerDelta, NsDelta},
    model::Counts,
    net::NetFacts,
    time::clock,
};

#[cfg(test)]
mod depth_tests;
mod engine;
#[cfg(test)]
pub mod fake;
mod fd_trend;
mod fds;
mod listen;
mod memory;
mod port_pressure;
#[cfg(test)]
mod port_pressure_tests;
mod ports;
mod proof;
mod table_pressure;
#[cfg(test)]
mod table_pressure_tests;
#[cfg(test)]
mod tests;
mod time_wait;

pub use engine::*;
pub use fd_trend::{FdCalm, FdForecast, FdReading, FdTrend, Trend};
pub use fds::*;
use listen::*;
pub use memory::*;
pub use port_pressure::*;
pub use ports::*;
pub use proof::*;
pub use table_pressure::*;
pub use time_wait::*;

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h).
const TIME_WAIT_S: f64 = 60.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    FdLimit,
    /// A prediction: open fds growing toward RLIMIT_NOFILE.
    FdPressure,
    FileMax,
    EphemeralPorts,
    TimeWaitPressure,
    /// A prediction: ports in use toward a destination growing toward the usable range.
    PortPressure,
    /// A prediction: a process binding before connect() while the namespace's ports in use
    /// grow toward the usable range.
    BindPressure,
    /// A prediction: a namespace's TIME_WAIT table filling toward tcp_max_tw_buckets.
    TwTablePressure,
    TwBuckets,
    BindHoarding,
    AddressUnavailable,
    AcceptQueue,
    /// A prediction: a listener's accept queue staying near its backlog.
    AcceptQueuePressure,
    SynQueue,
    TcpMem,
    /// A prediction: TCP memory growing toward tcp_mem's pressure threshold.
    TcpMemPressure,
    ConntrackFull,
    /// A prediction: a namespace's conntrack entries growing toward nf_conntrack_max.
    ConntrackPressure,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::FdLimit => "fd_limit",
            Cause::FdPressure => "fd_pressure",
            Cause::FileMax => "file_max",
            Cause::EphemeralPorts => "ephemeral_ports",
            Cause::TimeWaitPressure => "time_wait_pressure",
            Cause::TwTablePressure => "tw_table_pressure",
            Cause::PortPressure => "port_pressure",
            Cause::BindPressure => "bind_pressure",
            Cause::TwBuckets => "tw_buckets",
            Cause::BindHoarding => "bind_hoarding",
            Cause::AddressUnavailable => "address_unavailable",
            Cause::AcceptQueue => "accept_queue",
            Cause::AcceptQueuePressure => "accept_queue_pressure",
            Cause::SynQueue => "syn_queue",
            Cause::TcpMem => "tcp_mem",
            Cause::ConntrackFull => "conntrack_full",
            Cause::ConntrackPressure => "conntrack_pressure",
            Cause::TcpMemPressure => "tcp_mem_pressure",
        }
    }

    /// For a warning, the verdict of the failures it predicts (same process and destination).
    pub fn realized_by(self) -> Option<Cause> {
        match self {
            Cause::FdPressure => Some(Cause::FdLimit),
            Cause::PortPressure | Cause::TimeWaitPressure => Some(Cause::EphemeralPorts),
            Cause::TwTablePressure => Some(Cause::TwBuckets),
            Cause::AcceptQueuePressure => Some(Cause::AcceptQueue),
            Cause::ConntrackPressure => Some(Cause::ConntrackFull),
            Cause::BindPressure => Some(Cause::BindHoarding),
            Cause::TcpMemPressure => Some(Cause::TcpMem),
            _ => None,
        }
    }

    /// Causes whose verdict is about one of the process's listeners (`Verdict::destination`
    /// holds the listener's address then).
    pub fn is_listener(self) -> bool {
        matches!(self, Cause::AcceptQueue | Cause::AcceptQueuePressure | Cause::SynQueue)
    }
}

/// A verdict is active while its failures go on, a warning while its prediction holds, then
/// resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictState {
    Active,
    /// A limit not reached yet: nothing failed, the trend says it will.
    Warning,
    Resolved,
}

impl VerdictState {
    /// The JSON contract's `state`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictState::Active => "active",
            VerdictState::Warning => "warning",
            VerdictState::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub state: VerdictState,
    pub cause: Cause,
    pub pid: u32,
    pub comm: String,
    pub since: SystemTime,
    pub failures: u64,
    pub destination: Option<Dest>,
    /// The tally's template, `{n}` standing for `failures` (kept so later intervals update
    /// the count without touching the rest of the sentence).
    pub tally: String,
    /// What the summary says before the tally.
    pub head: String,
    pub evidence: Proof,
    pub fix: Vec<String>,
    /// How long it lasted, for resolved verdicts.
    pub duration_s: Option<f64>,
    /// Why a warning ended (the rate fell, the limit was raised, ...), for resolved ones.
    pub resolution: Option<String>,
}

/// What one interval brought.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub now: Option<SystemTime>,
    pub interval_s: f64,
    /// Per process.
    pub counts: BTreeMap<u32, Counts>,
    /// Port-assignment failures per (process, destination).
    pub port_failures: BTreeMap<(u32, Dest), u64>,
    /// TIME_WAIT of connected sockets per (process, destination).
    pub time_waits: BTreeMap<(u32, Dest), u64>,
    /// First failure event seen per (process, cause), for `since`.
    pub first_seen: BTreeMap<(u32, Cause), SystemTime>,
    /// Addresses a process asked for that bind() refused with EADDRNOTAVAIL (from events).
    pub unavailable_addrs: BTreeMap<u32, std::collections::BTreeSet<String>>,
    /// Listeners that dropped SYNs/ACKs this interval: (owner pid, the listener, its
    /// namespace's TcpExt growth).
    pub listener_drops: Vec<(u32, ListenerDelta, NsDelta)>,
    /// Open fds and RLIMIT_NOFILE of the processes read this interval (active ones, and
    /// those already at a quarter of their limit), for the fd warning.
    pub fd_readings: Vec<FdReading>,
    /// Each watched namespace's TIME_WAIT table: (sockets in it, tcp_max_tw_buckets).
    pub tw_tables: BTreeMap<u32, (u64, u64)>,
    /// When EMFILE/ENFILE are counted only while their hook is attached (on demand): when it
    /// was last attached. None when they are counted all the time (or not at all).
    pub fd_counted_from: Option<SystemTime>,
    /// (owner pid, listener) of listeners whose accept queue is at least 4/5 full now.
    pub busy_listeners: Vec<(u32, ListenerDelta)>,
    /// Ports in use toward the busiest destinations of the namespaces walked this interval.
    pub port_readings: Vec<PortReading>,
    /// Distinct ports of the ephemeral range in use and the usable count, per namespace
    /// walked this interval (what bind() to port 0 picks from).
    pub range_use: BTreeMap<u32, (u64, u64)>,
    /// Each watched namespace's conntrack table: (entries, nf_conntrack_max).
    pub conntrack_tables: BTreeMap<u32, (u64, u64)>,
    /// TCP memory of the machine: (pages in use, tcp_mem's pressure threshold, page size).
    pub tcp_mem_use: Option<(u64, u64, u64)>,
}

pub use crate::domain::net::Nofile;

/// Where evidence comes from.
pub trait Evidence {
    fn comm(&mut self, pid: u32) -> String;
    /// (soft, hard) RLIMIT_NOFILE and open fds.
    fn nofile(&mut self, pid: u32) -> Nofile;
    /// How many of its open fds are sockets (its concurrent connections).
    fn socket_fds(&mut self, _pid: u32) -> Option<u64> {
        None
    }
    /// (allocated, fs.file-max).
    fn file_nr(&mut self) -> Option<(u64, u64)>;
    /// Facts of namespace `netns`, entered through `pid` or, if it has exited, any process
    /// still in that namespace. Err says why not (e.g. the namespace is gone).
    fn net(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String>;
    /// The same namespace's port sysctls alone (range, reserved ports, tcp_tw_reuse), no
    /// sockets: cheap where `net` walks every TCP socket of the host.
    fn port_limits(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String> {
        self.net(pid, netns)
    }
    /// The process holding the socket with this inode (looked up for a warning only: it reads
    /// every process's fd table).
    fn socket_owner(&mut self, _inode: u32) -> Option<u32> {
        None
    }
    /// Whether the process still runs.
    fn alive(&mut self, pid: u32) -> bool;
    /// Network namespace inode of a running process.
    fn netns(&mut self, pid: u32) -> Option<u32>;
    /// net.ipv4.tcp_mem (low, pressure, high, in pages) and the TCP line of
    /// /proc/net/sockstat (`mem` = pages in use, `orphan`, …): both machine-wide.
    fn tcp_mem(&mut self) -> TcpMemFacts;
    /// The TIME_WAIT table of the process's namespace as the kernel saw it at the process's
    /// latest close that found it full (recorded in the kernel: known after the process exits).
    fn tw_table(&mut self, pid: u32) -> Option<TwTable>;
}

pub use probe_common::counters::TwTable;

pub use crate::domain::net::TcpMem as TcpMemFacts;

impl Verdict {
    /// Sets what the summary says: `head` (the limit and its numbers), then `tally` with
    /// `{n}` for the failure count.
    pub fn set_summary(&mut self, head: String, tally: String) {
        self.head = head;
        self.tally = tally;
    }

    /// `head; tally since HH:MM:SS`, with the current failure count.
    pub fn summary(&self) -> String {
        let tally = if self.failures == 1 { singular(&self.tally) } else { self.tally.clone() };
        let tally = tally.replace("{n}", &thousands(self.failures));
        if tally.is_empty() {
            self.head.clone()
        } else {
            format!("{}; {tally} since {}", self.head, clock(self.since))
        }
    }
}

/// A tally for a count of one: "1 call failed", not "1 calls failed".
fn singular(tally: &str) -> String {
    const ONE: [(&str, &str); 9] = [
        ("{n} calls failed", "{n} call failed"),
        ("{n} connects failed", "{n} connect failed"),
        ("{n} binds to port 0 failed", "{n} bind to port 0 failed"),
        ("{n} SYNs/ACKs dropped", "{n} SYN/ACK dropped"),
        ("{n} SYNs dropped", "{n} SYN dropped"),
        ("{n} SYNs answered", "{n} SYN answered"),
        ("{n} times", "once"),
        ("{n} buffer allocations", "{n} buffer allocation"),
        (" were refused", " was refused"),
    ];
    ONE.iter().fold(tally.to_string(), |t, (many, one)| t.replacen(many, one, 1))
}

fn base(cause: Cause, pid: u32, comm: String, since: SystemTime, failures: u64, evidence: Proof) -> Verdict {
    Verdict {
        state: VerdictState::Active,
        cause,
        pid,
        comm,
        since,
        failures,
        destination: None,
        tally: String::new(),
        head: String::new(),
        evidence,
        fix: Vec::new(),
        duration_s: None,
        resolution: None,
    }
}

/// Facts of the namespace `pid` runs in.
fn own_net(ev: &mut dyn Evidence, pid: u32) -> Result<NetFacts, String> {
    match ev.netns(pid) {
        Some(ns) => ev.net(pid, ns),
        None => Err(format!("process {pid} has exited: its namespace cannot be inspected")),
    }
}

/// Why the namespace could not be read, for the evidence's `error`.
fn net_error(net: &Result<NetFacts, String>) -> Option<String> {
    net.as_ref().err().cloned()
}

/// Failures counted only since `counted_from` (a hook attached on demand), first seen at
/// `since`: when they began within `interval_s` of the attachment, some may have come before
/// it, unseen. Then the count is a floor: the tally says "at least" and the time is returned.
pub(crate) fn counted_from_attach(
    v: &mut Verdict,
    counted_from: Option<SystemTime>,
    since: SystemTime,
    interval_s: f64,
) -> Option<SystemTime> {
    let from = counted_from?;
    // A `since` before the attachment (an interval without events) is right after it too.
    let after = since.duration_since(from).map_or(0.0, |d| d.as_secs_f64());
    if after > interval_s.max(1.0) {
        return None;
    }
    v.tally = v.tally.replace("{n}", "at least {n}");
    Some(from)
}

/// "in about 12 s", or "within a second" when less is left (never "in about 0 s").
pub(crate) fn in_about(seconds: f64) -> String {
    if seconds < 1.0 {
        "within a second".to_string()
    } else {
        format!("in about {seconds:.0} s")
    }
}

#[cfg(test)]
mod in_about_tests {
    use super::in_about;

    #[test]
    fn a_count_of_one_is_singular() {
        use super::singular;
        assert_eq!(singular("{n} calls failed with EMFILE"), "{n} call failed with EMFILE");
        assert_eq!(singular("at least {n} calls failed with EMFILE"), "at least {n} call failed with EMFILE");
        assert_eq!(singular("python3[7] got ENFILE {n} times"), "python3[7] got ENFILE once");
        assert_eq!(
            singular("{n} buffer allocations of x[1] were refused"),
            "{n} buffer allocation of x[1] was refused"
        );
        assert_eq!(
            singular("{n} SYNs dropped or answered with syncookies"),
            "{n} SYN dropped or answered with syncookies"
        );
        assert_eq!(singular("{n} of its packets dropped"), "{n} of its packets dropped");
    }

    #[test]
    fn less_than_a_second_is_said_in_words() {
        assert_eq!(in_about(0.2), "within a second");
        assert_eq!(in_about(0.0), "within a second");
        assert_eq!(in_about(1.0), "in about 1 s");
        assert_eq!(in_about(41.6), "in about 42 s");
    }
}
