//! Root-cause verdicts: which limit a process ran into, the numbers that prove it, and the
//! fix. Pure rules over interval counts plus evidence supplied through [`Evidence`] (procfs
//! and sock_diag in production, fixtures in tests).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde_json::{json, Map, Value};

pub use crate::domain::net::Dest;
use crate::{
    diagnosis::check::tw_reuse_applies,
    domain::{
        listen::{ListenerDelta, NsDelta},
        model::Counts,
        net::{self, reserved_strings, usable_ports, NetFacts},
        time::rfc3339,
    },
};

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h).
const TIME_WAIT_S: f64 = 60.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    FdLimit,
    FileMax,
    EphemeralPorts,
    TimeWaitPressure,
    TwBuckets,
    BindHoarding,
    AddressUnavailable,
    AcceptQueue,
    SynQueue,
    TcpMem,
    ConntrackFull,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::FdLimit => "fd_limit",
            Cause::FileMax => "file_max",
            Cause::EphemeralPorts => "ephemeral_ports",
            Cause::TimeWaitPressure => "time_wait_pressure",
            Cause::TwBuckets => "tw_buckets",
            Cause::BindHoarding => "bind_hoarding",
            Cause::AddressUnavailable => "address_unavailable",
            Cause::AcceptQueue => "accept_queue",
            Cause::SynQueue => "syn_queue",
            Cause::TcpMem => "tcp_mem",
            Cause::ConntrackFull => "conntrack_full",
        }
    }

    /// Causes whose verdict is about one of the process's listeners (`Verdict::destination`
    /// holds the listener's address then).
    pub fn is_listener(self) -> bool {
        matches!(self, Cause::AcceptQueue | Cause::SynQueue)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// "active" or "resolved".
    pub state: &'static str,
    pub cause: Cause,
    pub pid: u32,
    pub comm: String,
    pub since: SystemTime,
    pub failures: u64,
    pub destination: Option<Dest>,
    pub summary: String,
    pub evidence: Map<String, Value>,
    pub fix: Vec<String>,
    /// How long it lasted, for resolved verdicts.
    pub duration_s: Option<f64>,
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
}

/// RLIMIT_NOFILE (soft, hard) and the open fd count of a process.
pub type Nofile = (Option<u64>, Option<u64>, Option<u64>);

/// Where evidence comes from.
pub trait Evidence {
    fn comm(&mut self, pid: u32) -> String;
    /// (soft, hard) RLIMIT_NOFILE and open fds.
    fn nofile(&mut self, pid: u32) -> Nofile;
    /// (allocated, fs.file-max).
    fn file_nr(&mut self) -> Option<(u64, u64)>;
    /// Facts of namespace `netns`, entered through `pid` or, if it has exited, any process
    /// still in that namespace. Err says why not (e.g. the namespace is gone).
    fn net(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String>;
    /// Whether the process still runs.
    fn alive(&mut self, pid: u32) -> bool;
    /// Network namespace inode of a running process.
    fn netns(&mut self, pid: u32) -> Option<u32>;
    /// net.ipv4.tcp_mem (low, pressure, high, in pages) and the TCP line of
    /// /proc/net/sockstat (`mem` = pages in use, `orphan`, …): both machine-wide.
    fn tcp_mem(&mut self) -> TcpMemFacts;
}

pub use crate::domain::net::TcpMem as TcpMemFacts;

struct Active {
    verdict: Verdict,
    last_failure: SystemTime,
    last_emit: SystemTime,
    emitted_failures: u64,
}

type Key = (Cause, u32, Option<Dest>);

/// TIME_WAITs created in one interval: (end of the interval, count, its length in seconds).
type TwSample = (SystemTime, u64, f64);

pub struct Engine {
    active: BTreeMap<Key, Active>,
    /// Failures must stop this long before a verdict resolves.
    quiet: Duration,
    /// Recent TIME_WAIT creations per (process, destination): (time, count, interval).
    tw_history: BTreeMap<(u32, Dest), VecDeque<TwSample>>,
    /// Refused conntrack entries per namespace when first looked at.
    ct_refused: BTreeMap<u32, u64>,
    /// (cause, pid) that had failures in the last tick.
    failed: std::collections::BTreeSet<(Cause, u32)>,
}

/// 6823 → "6,823".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clock(t: SystemTime) -> String {
    // HH:MM:SS (UTC) out of the RFC 3339 stamp.
    rfc3339(t).get(11..19).unwrap_or("?").to_string()
}

/// Ports toward `dest` by state (local port in the ephemeral range).
struct PortUse {
    range: (u16, u16),
    usable: u64,
    established: u64,
    time_wait: u64,
    other: u64,
    /// FIN_WAIT1/FIN_WAIT2/CLOSING: this side closed first, TIME_WAIT follows.
    closing: u64,
    states: BTreeMap<&'static str, u64>,
}

impl PortUse {
    fn of(net: &NetFacts, dest: &Dest) -> Option<PortUse> {
        let range = net.port_range?;
        let mut u = PortUse {
            range,
            usable: usable_ports(range, &net.reserved),
            established: 0,
            time_wait: 0,
            other: 0,
            closing: 0,
            states: BTreeMap::new(),
        };
        for s in &net.sockets {
            if s.dst != dest.addr || s.dport != dest.port || s.sport < range.0 || s.sport > range.1 {
                continue;
            }
            if s.state == net::LISTEN {
                continue;
            }
            *u.states.entry(net::state_name(s.state)).or_default() += 1;
            match s.state {
                net::ESTABLISHED => u.established += 1,
                net::TIME_WAIT => u.time_wait += 1,
                4 | 5 | 11 => {
                    u.closing += 1;
                    u.other += 1;
                }
                _ => u.other += 1,
            }
        }
        Some(u)
    }

    fn in_use(&self) -> u64 {
        self.established + self.time_wait + self.other
    }

    /// "2 ESTABLISHED, 48 TIME_WAIT" plus any other state present.
    fn states_text(&self) -> String {
        let mut parts = vec![
            format!("{} ESTABLISHED", thousands(self.established)),
            format!("{} TIME_WAIT", thousands(self.time_wait)),
        ];
        for (name, n) in &self.states {
            if *name != "ESTABLISHED" && *name != "TIME_WAIT" {
                parts.push(format!("{} {name}", thousands(*n)));
            }
        }
        parts.join(", ")
    }

    fn evidence(&self, net: &NetFacts, dest: &Dest) -> Map<String, Value> {
        let mut e = Map::new();
        e.insert("range".into(), json!(format!("{}-{}", self.range.0, self.range.1)));
        e.insert("range_size".into(), json!(self.range.1 as u64 - self.range.0 as u64 + 1));
        e.insert("reserved".into(), json!(reserved_strings(&net.reserved)));
        e.insert("usable".into(), json!(self.usable));
        e.insert("established".into(), json!(self.established));
        e.insert("time_wait".into(), json!(self.time_wait));
        e.insert("other".into(), json!(self.other));
        e.insert("states".into(), json!(self.states));
        e.insert("tcp_tw_reuse".into(), json!(net.tcp_tw_reuse));
        e.insert("tcp_tw_reuse_applies".into(), json!(tw_reuse_applies(net.tcp_tw_reuse, dest.addr)));
        e.insert("netns".into(), json!(dest.netns));
        e
    }
}

fn port_fixes(u: &PortUse, net: &NetFacts, dest: &Dest) -> Vec<String> {
    let d = dest.endpoint();
    let mut fix = vec![format!(
        "keep connections to {d} alive and reuse them (HTTP keepalive, a connection pool) instead of one connection per request"
    )];
    if u.closing > u.time_wait {
        fix.push(format!(
            "most ports are in FIN_WAIT: this side closed first and {d} has not closed its side yet; each then spends 60 s in TIME_WAIT"
        ));
    }
    if (u.time_wait + u.closing) * 2 >= u.in_use() && u.time_wait + u.closing > 0 {
        if tw_reuse_applies(net.tcp_tw_reuse, dest.addr) {
            fix.push(format!(
                "tcp_tw_reuse={} already lets connect() reuse TIME_WAIT ports toward {d}, but only 1 s after their last segment and with TCP timestamps: the connection rate is above what reuse can absorb",
                net.tcp_tw_reuse.unwrap_or(0)
            ));
        } else {
            fix.push(format!(
                "closing connections hold most ports: sysctl -w net.ipv4.tcp_tw_reuse=1 lets outbound connect() reuse them toward {d} (needs TCP timestamps; tcp_tw_recycle is gone since Linux 4.12)"
            ));
        }
    } else if u.established * 2 >= u.in_use() && u.established > 0 {
        fix.push(format!("open connections hold most ports: close idle ones or cap the pool size toward {d}"));
    }
    fix.push(format!("widen net.ipv4.ip_local_port_range (now {}-{}, e.g. 10240 65535)", u.range.0, u.range.1));
    fix.push("add source addresses or spread over more destination addresses/ports: the limit is per (source IP, destination IP, destination port)".into());
    fix
}

impl Engine {
    pub fn new(interval: Duration) -> Engine {
        Engine {
            active: BTreeMap::new(),
            quiet: (interval * 3).max(Duration::from_secs(5)),
            tw_history: BTreeMap::new(),
            ct_refused: BTreeMap::new(),
            failed: Default::default(),
        }
    }

    /// Whether `pid` had failures of `cause` in the last interval fed to `tick`.
    pub fn failed_last_tick(&self, pid: u32, cause: Cause) -> bool {
        self.failed.contains(&(cause, pid))
    }

    /// Whether a verdict of `cause` is active for `pid` (any destination).
    pub fn is_active(&self, pid: u32, cause: Cause) -> bool {
        self.active.keys().any(|(c, p, _)| *c == cause && *p == pid)
    }

    pub fn active(&self) -> impl Iterator<Item = &Verdict> {
        self.active.values().map(|a| &a.verdict)
    }

    /// Feeds one interval; returns the verdicts to report now (new, updated, resolved).
    pub fn tick(&mut self, w: &Window, ev: &mut dyn Evidence) -> Vec<Verdict> {
        let now = w.now.unwrap_or_else(SystemTime::now);
        let start = now - Duration::from_secs_f64(w.interval_s.max(0.0));
        let mut out = Vec::new();
        let mut seen: Vec<Key> = Vec::new();

        for (&pid, c) in &w.counts {
            if c.emfile > 0 {
                let since = w.first_seen.get(&(pid, Cause::FdLimit)).copied().unwrap_or(start);
                self.failure((Cause::FdLimit, pid, None), c.emfile, now, since, &mut seen, || {
                    let comm = ev.comm(pid);
                    let (soft, hard, open) = ev.nofile(pid);
                    fd_limit(pid, comm, since, c.emfile, soft, hard, open)
                });
            }
            if c.enfile > 0 {
                let since = w.first_seen.get(&(pid, Cause::FileMax)).copied().unwrap_or(start);
                self.failure((Cause::FileMax, pid, None), c.enfile, now, since, &mut seen, || {
                    let comm = ev.comm(pid);
                    file_max(pid, comm, since, c.enfile, ev.file_nr())
                });
            }
        }
        for (&pid, c) in &w.counts {
            let since = |cause| w.first_seen.get(&(pid, cause)).copied().unwrap_or(start);
            if c.tw_overflows > 0 {
                let since = since(Cause::TwBuckets);
                self.failure((Cause::TwBuckets, pid, None), c.tw_overflows, now, since, &mut seen, || {
                    let comm = ev.comm(pid);
                    tw_buckets(pid, comm, since, c.tw_overflows, own_net(ev, pid))
                });
            }
            if c.bind_failures > 0 {
                let since = since(Cause::BindHoarding);
                self.failure((Cause::BindHoarding, pid, None), c.bind_failures, now, since, &mut seen, || {
                    let comm = ev.comm(pid);
                    bind_hoarding(pid, comm, since, c.bind_failures, c.bound_connects, own_net(ev, pid))
                });
            }
            let mem = c.tcp_mem_send_refused + c.tcp_mem_recv_refused;
            if mem > 0 {
                let since = since(Cause::TcpMem);
                self.failure((Cause::TcpMem, pid, None), mem, now, since, &mut seen, || {
                    let comm = ev.comm(pid);
                    let (limits, sockstat) = ev.tcp_mem();
                    tcp_mem(pid, comm, since, c, limits, &sockstat, own_net(ev, pid))
                });
            }
            // Netfilter drops are a plateau cause only when conntrack could not track the
            // packet (table full); a rule dropping them is policy, left to the counters.
            if c.netfilter_drops > 0 {
                let key = (Cause::ConntrackFull, pid, None);
                let active = self.active.contains_key(&key);
                let ct = if active {
                    None
                } else {
                    let facts = own_net(ev, pid).ok().and_then(|f| Some((f.conntrack.clone()?, f.netns)));
                    facts.filter(|(ct, ns)| {
                        // The statistics count since boot: only their growth since conntrace
                        // first looked at this namespace says anything about now.
                        let refused = conntrack_refused(ct);
                        let first = *self.ct_refused.entry(ns.unwrap_or(0)).or_insert(refused);
                        conntrack_at_limit(ct) || refused > first
                    })
                };
                if active || ct.is_some() {
                    let since = since(Cause::ConntrackFull);
                    let n = c.netfilter_drops;
                    self.failure(key, n, now, since, &mut seen, || {
                        let comm = ev.comm(pid);
                        let (ct, netns) = ct.unwrap_or_default();
                        conntrack_verdict(pid, comm, since, n, &ct, netns)
                    });
                }
            }
            // EADDRNOTAVAIL that is not a port search failing: bind() to an address that is not
            // local, or connect() refused before any port was looked for.
            let addr_errors = |m: &BTreeMap<String, u64>| m.get("EADDRNOTAVAIL").copied().unwrap_or(0);
            let bind_n = addr_errors(&c.bind_errors);
            let connect_n = c.connect_addr_unavailable;
            if bind_n + connect_n > 0 {
                let since = since(Cause::AddressUnavailable);
                let addrs = w.unavailable_addrs.get(&pid).cloned().unwrap_or_default();
                self.failure((Cause::AddressUnavailable, pid, None), bind_n + connect_n, now, since, &mut seen, || {
                    let comm = ev.comm(pid);
                    address_unavailable(pid, comm, since, bind_n, connect_n, &addrs)
                });
            }
        }
        for (pid, l, ns) in &w.listener_drops {
            let pid = *pid;
            let cause = listen_cause(l, ns);
            let dest = Dest { netns: l.netns, addr: l.addr, port: l.port };
            let since = w.first_seen.get(&(pid, cause)).copied().unwrap_or(start);
            self.failure((cause, pid, Some(dest)), l.drops + l.cookies, now, since, &mut seen, || {
                let comm = ev.comm(pid);
                listen_queue(cause, pid, comm, since, l, ns, ev.net(pid, l.netns))
            });
        }
        for ((pid, dest), &n) in &w.port_failures {
            let since = w.first_seen.get(&(*pid, Cause::EphemeralPorts)).copied().unwrap_or(start);
            self.failure((Cause::EphemeralPorts, *pid, Some(dest.clone())), n, now, since, &mut seen, || {
                let comm = ev.comm(*pid);
                ephemeral_ports(*pid, comm, since, n, dest, ev.net(*pid, dest.netns))
            });
        }
        self.time_wait_pressure(w, now, ev, &mut seen);

        // Updates of verdicts still active, and resolutions.
        let mut resolved = Vec::new();
        for (key, a) in self.active.iter_mut() {
            let fresh = a.verdict.failures != a.emitted_failures || a.last_emit == a.verdict.since;
            if seen.contains(key) {
                if a.last_emit == SystemTime::UNIX_EPOCH
                    || (fresh && now.duration_since(a.last_emit).unwrap_or_default() >= Duration::from_secs(10))
                {
                    a.last_emit = now;
                    a.emitted_failures = a.verdict.failures;
                    out.push(a.verdict.clone());
                }
            } else if now.duration_since(a.last_failure).unwrap_or_default() >= self.quiet {
                resolved.push(key.clone());
            }
        }
        self.failed = seen.iter().map(|(c, p, _)| (*c, *p)).collect();
        for key in resolved {
            if let Some(a) = self.active.remove(&key) {
                let mut v = a.verdict;
                v.state = "resolved";
                v.duration_s = Some(a.last_failure.duration_since(v.since).unwrap_or_default().as_secs_f64());
                out.push(v);
            }
        }
        out
    }

    /// Records `n` failures for `key`; builds the verdict (and its evidence) the first time.
    fn failure(
        &mut self,
        key: Key,
        n: u64,
        now: SystemTime,
        _since: SystemTime,
        seen: &mut Vec<Key>,
        build: impl FnOnce() -> Verdict,
    ) {
        match self.active.get_mut(&key) {
            Some(a) => {
                a.verdict.failures += n;
                a.last_failure = now;
                refresh_summary(&mut a.verdict);
            }
            None => {
                let verdict = build();
                self.active.insert(
                    key.clone(),
                    Active { verdict, last_failure: now, last_emit: SystemTime::UNIX_EPOCH, emitted_failures: 0 },
                );
            }
        }
        seen.push(key);
    }

    fn time_wait_pressure(&mut self, w: &Window, now: SystemTime, ev: &mut dyn Evidence, seen: &mut Vec<Key>) {
        // Per process and destination: namespace inode numbers are reused as soon as a
        // namespace dies, so a destination alone could mix two unrelated namespaces' churn.
        for ((pid, dest), &n) in &w.time_waits {
            self.tw_history.entry((*pid, dest.clone())).or_default().push_back((now, n, w.interval_s));
        }
        // Keep ~10 s of history; forget quiet ones.
        let horizon = Duration::from_secs(10);
        self.tw_history.retain(|_, h| {
            while h.front().is_some_and(|(t, _, _)| now.duration_since(*t).unwrap_or_default() > horizon) {
                h.pop_front();
            }
            !h.is_empty()
        });
        let active: Vec<(u32, Dest)> = w.time_waits.keys().cloned().collect();
        for (pid, dest) in active {
            let Some(h) = self.tw_history.get(&(pid, dest.clone())) else { continue };
            let total: u64 = h.iter().map(|(_, n, _)| n).sum();
            let span: f64 = h.iter().map(|(_, _, s)| s).sum::<f64>().max(0.001);
            let rate = total as f64 / span;
            // A prediction is about a process still churning; an exited one's namespace may
            // even be gone, its inode number taken by another.
            if !ev.alive(pid) {
                continue;
            }
            let Ok(net) = ev.net(pid, dest.netns) else { continue };
            let Some(u) = PortUse::of(&net, &dest) else { continue };
            // TIME_WAIT ports toward this destination stay taken for 60 s: at this rate the
            // range fills when rate × 60 exceeds it, unless connect() may reuse them.
            if tw_reuse_applies(net.tcp_tw_reuse, dest.addr) || rate * TIME_WAIT_S < u.usable as f64 {
                continue;
            }
            let left = u.usable.saturating_sub(u.in_use()) as f64 / rate;
            let key = (Cause::TimeWaitPressure, pid, Some(dest.clone()));
            let mut evidence = u.evidence(&net, &dest);
            evidence.insert("rate_per_s".into(), json!((rate * 10.0).round() / 10.0));
            evidence.insert("seconds_left".into(), json!(left.round() as u64));
            evidence.insert("predicted_time_wait".into(), json!((rate * TIME_WAIT_S).round() as u64));
            let comm = ev.comm(pid);
            let summary = format!(
                "{comm}[{pid}] is creating {:.0} TIME_WAIT sockets/s toward {}: at 60 s each that needs {} ports but {}-{} has {} ({} in use now); ports run out in about {:.0} s",
                rate,
                dest.endpoint(),
                thousands((rate * TIME_WAIT_S) as u64),
                u.range.0,
                u.range.1,
                thousands(u.usable),
                thousands(u.in_use()),
                left
            );
            let mut fix = vec![format!(
                "reuse connections to {} (keepalive, pooling): each short connection keeps its port in TIME_WAIT for 60 s",
                dest.endpoint()
            )];
            fix.push(format!(
                "sysctl -w net.ipv4.tcp_tw_reuse=1 lets outbound connect() reuse TIME_WAIT ports toward {} (needs TCP timestamps)",
                dest.endpoint()
            ));
            fix.push(format!("widen net.ipv4.ip_local_port_range (now {}-{})", u.range.0, u.range.1));
            fix.push(
                "the side that closes first keeps the TIME_WAIT: let the server close first where the protocol allows"
                    .into(),
            );
            match self.active.get_mut(&key) {
                Some(a) => {
                    a.last_failure = now;
                    a.verdict.summary = summary;
                    a.verdict.evidence = evidence;
                }
                None => {
                    let verdict = Verdict {
                        state: "active",
                        cause: Cause::TimeWaitPressure,
                        pid,
                        comm,
                        since: now,
                        failures: 0,
                        destination: Some(dest.clone()),
                        summary,
                        evidence,
                        fix,
                        duration_s: None,
                    };
                    self.active.insert(
                        key.clone(),
                        Active { verdict, last_failure: now, last_emit: SystemTime::UNIX_EPOCH, emitted_failures: 0 },
                    );
                }
            }
            seen.push(key);
        }
    }
}

/// Keeps the failure count in the summary current.
fn refresh_summary(v: &mut Verdict) {
    if let Some(i) = v.summary.rfind("; ") {
        if let Some(rest) = v.summary[i + 2..].split_once(' ') {
            if rest.0.chars().all(|c| c.is_ascii_digit() || c == ',') {
                v.summary = format!("{}; {} {}", &v.summary[..i], thousands(v.failures), rest.1);
            }
        }
    }
}

fn base(cause: Cause, pid: u32, comm: String, since: SystemTime, failures: u64) -> Verdict {
    Verdict {
        state: "active",
        cause,
        pid,
        comm,
        since,
        failures,
        destination: None,
        summary: String::new(),
        evidence: Map::new(),
        fix: Vec::new(),
        duration_s: None,
    }
}

/// Facts of the namespace `pid` runs in.
fn own_net(ev: &mut dyn Evidence, pid: u32) -> Result<NetFacts, String> {
    match ev.netns(pid) {
        Some(ns) => ev.net(pid, ns),
        None => Err(format!("process {pid} has exited: its namespace cannot be inspected")),
    }
}

fn net_error(v: &mut Verdict, net: &Result<NetFacts, String>) {
    if let Err(e) = net {
        v.evidence.insert("error".into(), json!(e));
    }
}

/// Why a listener dropped: the SYN queue when only the namespace's request-queue counters
/// grew, the accept queue otherwise (ListenOverflows, or the queue is full right now).
fn listen_cause(l: &ListenerDelta, ns: &NsDelta) -> Cause {
    let get = |k: &str| ns.get(k).copied().unwrap_or(0);
    let syn = l.cookies > 0 || get("TCPReqQFullDrop") > 0;
    if syn && get("ListenOverflows") == 0 && !l.accept_queue_full() {
        Cause::SynQueue
    } else {
        Cause::AcceptQueue
    }
}

fn listen_queue(
    cause: Cause,
    pid: u32,
    comm: String,
    since: SystemTime,
    l: &ListenerDelta,
    ns: &NsDelta,
    net: Result<NetFacts, String>,
) -> Verdict {
    let mut v = base(cause, pid, comm.clone(), since, l.drops + l.cookies);
    let listener = Dest { netns: l.netns, addr: l.addr, port: l.port };
    v.destination = Some(listener.clone());
    net_error(&mut v, &net);
    let f = net.as_ref().ok();
    let somaxconn = f.and_then(|f| f.somaxconn);
    v.evidence.insert("listener".into(), json!(listener.endpoint()));
    v.evidence.insert("backlog".into(), json!(l.backlog));
    v.evidence.insert("queue_len".into(), json!(l.queue_len));
    v.evidence.insert("drops".into(), json!(l.drops));
    v.evidence.insert("syn_recv".into(), json!(l.syn_recv));
    v.evidence.insert("syncookies".into(), json!(l.cookies));
    v.evidence.insert("somaxconn".into(), json!(somaxconn));
    v.evidence.insert("netns".into(), json!(l.netns));
    v.evidence.insert("netns_counters".into(), json!(ns));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "?".into());
    let ep = listener.endpoint();
    if cause == Cause::AcceptQueue {
        v.summary = format!(
            "{comm}[{pid}] is not accepting fast enough on {ep}: accept queue {}/{} (backlog = min(listen() backlog, net.core.somaxconn {})); {} SYNs/ACKs dropped since {}",
            l.queue_len,
            l.backlog,
            of(somaxconn),
            thousands(l.drops),
            clock(since)
        );
        v.fix.push(format!(
            "accept faster on {ep}: more accepting threads/workers, or drain the queue in a loop on each readiness event"
        ));
        v.fix.push(format!(
            "raise the listen() backlog (now {}) and net.core.somaxconn (now {}): the smaller of the two is used",
            l.backlog,
            of(somaxconn)
        ));
        v.fix.push(
            "clients do not get an error: their SYNs are retransmitted after 1, 3, 7… s, seen as slow connects".into(),
        );
    } else {
        let what = match (l.drops, l.cookies) {
            (d, 0) => format!("{} SYNs dropped", thousands(d)),
            (0, c) => format!("{} SYNs answered with syncookies", thousands(c)),
            (d, c) => format!("{} SYNs dropped and {} answered with syncookies", thousands(d), thousands(c)),
        };
        v.summary = format!(
            "the SYN queue of {ep} ({comm}[{pid}]) is full: {} handshakes pending, backlog {}; {what} since {}",
            l.syn_recv,
            l.backlog,
            clock(since)
        );
        if l.drops > 0 {
            v.fix.push(
                "net.ipv4.tcp_syncookies=1 answers SYNs beyond the queue with cookies instead of dropping them".into(),
            );
        } else {
            v.fix.push(
                "syncookies keep connections working but lose TCP options (window scaling, SACK) unless timestamps carry them"
                    .into(),
            );
        }
        v.fix.push(format!(
            "raise the listen() backlog (now {}), net.core.somaxconn and net.ipv4.tcp_max_syn_backlog",
            l.backlog
        ));
        v.fix.push("if the SYNs never complete (spoofed sources), it is a SYN flood: filter it upstream".into());
    }
    v
}

/// The namespace's conntrack table is at its limit now.
fn conntrack_at_limit(ct: &crate::domain::net::Conntrack) -> bool {
    matches!((ct.count, ct.max), (Some(c), Some(m)) if m > 0 && c >= m)
}

/// Entries __nf_conntrack_alloc refused since boot: the `drop` statistic less the clashes,
/// which count in `insert_failed` as well.
fn conntrack_refused(ct: &crate::domain::net::Conntrack) -> u64 {
    let get = |k: &str| ct.stats.get(k).copied().unwrap_or(0);
    get("drop").saturating_sub(get("insert_failed"))
}

fn conntrack_verdict(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    ct: &crate::domain::net::Conntrack,
    netns: Option<u32>,
) -> Verdict {
    let mut v = base(Cause::ConntrackFull, pid, comm.clone(), since, n);
    let stat = |k: &str| ct.stats.get(k).copied().unwrap_or(0);
    v.evidence.insert("count".into(), json!(ct.count));
    v.evidence.insert("max".into(), json!(ct.max));
    v.evidence.insert("drop".into(), json!(stat("drop")));
    v.evidence.insert("early_drop".into(), json!(stat("early_drop")));
    v.evidence.insert("insert_failed".into(), json!(stat("insert_failed")));
    v.evidence.insert("netns".into(), json!(netns));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "?".into());
    v.summary = format!(
        "the conntrack table is full (\"nf_conntrack: table full, dropping packet\"): {} of {} entries in {comm}[{pid}]'s namespace; {} of its packets dropped since {}",
        of(ct.count),
        of(ct.max),
        thousands(n),
        clock(since)
    );
    v.fix.push(format!(
        "raise net.netfilter.nf_conntrack_max (now {}; about 300 bytes per entry) and net.netfilter.nf_conntrack_buckets with it",
        of(ct.max)
    ));
    v.fix.push("shorten how long closed connections stay tracked: net.netfilter.nf_conntrack_tcp_timeout_time_wait (120 s by default)".into());
    v.fix.push(
        "exempt traffic that needs no tracking (e.g. a busy local port) with a `notrack` rule in the raw table".into(),
    );
    v
}

pub fn tcp_mem(
    pid: u32,
    comm: String,
    since: SystemTime,
    c: &Counts,
    limits: Option<(u64, u64, u64)>,
    sockstat: &BTreeMap<String, u64>,
    net: Result<NetFacts, String>,
) -> Verdict {
    let n = c.tcp_mem_send_refused + c.tcp_mem_recv_refused;
    let mut v = base(Cause::TcpMem, pid, comm.clone(), since, n);
    net_error(&mut v, &net);
    v.evidence.insert("tcp_mem".into(), json!(limits.map(|(a, b, c)| [a, b, c])));
    v.evidence.insert("mem_pages".into(), json!(sockstat.get("mem")));
    v.evidence.insert("orphans".into(), json!(sockstat.get("orphan")));
    v.evidence.insert("send_refused".into(), json!(c.tcp_mem_send_refused));
    v.evidence.insert("recv_refused".into(), json!(c.tcp_mem_recv_refused));
    if let Ok(f) = &net {
        let ext: BTreeMap<&str, u64> =
            ["TCPMemoryPressures", "TCPAbortOnMemory", "TCPRcvQDrop", "PruneCalled", "TCPOrphanOverflow"]
                .iter()
                .filter_map(|k| Some((*k, *f.tcp_ext.get(*k)?)))
                .collect();
        v.evidence.insert("netns_counters".into(), json!(ext));
    }
    let pages = |p: u64| format!("{} pages ({} MiB)", thousands(p), p * 4096 / (1 << 20));
    let (limit_text, high) = match limits {
        Some((lo, pr, hi)) => (format!("tcp_mem is {lo} {pr} {hi} pages"), Some(hi)),
        None => ("tcp_mem unknown".into(), None),
    };
    let used = sockstat.get("mem").map(|m| pages(*m)).unwrap_or_else(|| "?".into());
    v.summary = format!(
        "TCP memory is exhausted machine-wide: {used} in use, {limit_text}; {} buffer allocations of {comm}[{pid}] were refused ({} for sending, {} for receiving) since {}",
        thousands(n),
        thousands(c.tcp_mem_send_refused),
        thousands(c.tcp_mem_recv_refused),
        clock(since)
    );
    v.fix.push(format!(
        "find the sockets holding the memory: `ss -tmn` (large Recv-Q: a reader that does not read; large Send-Q: a slow peer){}",
        high.map(|h| format!("; the limit is {}", pages(h))).unwrap_or_default()
    ));
    v.fix.push(
        "if the memory is legitimately needed, raise net.ipv4.tcp_mem (pages, all three values) within what RAM allows"
            .into(),
    );
    v.fix.push("lower net.ipv4.tcp_rmem/tcp_wmem maxima if many connections each buffer megabytes".into());
    v
}

pub fn tw_buckets(pid: u32, comm: String, since: SystemTime, n: u64, net: Result<NetFacts, String>) -> Verdict {
    let mut v = base(Cause::TwBuckets, pid, comm.clone(), since, n);
    net_error(&mut v, &net);
    let f = net.as_ref().ok();
    let max = f.and_then(|f| f.tcp_max_tw_buckets);
    let tw = f.map(|f| f.sockets.iter().filter(|s| s.state == net::TIME_WAIT).count() as u64);
    let overflows = f.and_then(|f| f.tcp_ext.get("TCPTimeWaitOverflow").copied());
    v.evidence.insert("tcp_max_tw_buckets".into(), json!(max));
    v.evidence.insert("time_wait".into(), json!(tw));
    v.evidence.insert("netns_tw_overflows".into(), json!(overflows));
    v.evidence.insert("netns".into(), json!(f.and_then(|f| f.netns)));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "?".into());
    v.summary = format!(
        "the TIME_WAIT table of {comm}[{pid}]'s namespace is full: {} TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets is {}; {} of its connections closed without TIME_WAIT since {}",
        of(tw),
        of(max),
        thousands(n),
        clock(since)
    );
    v.fix.push(format!(
        "raise net.ipv4.tcp_max_tw_buckets (now {}; a TIME_WAIT socket costs a few hundred bytes), e.g. sysctl -w net.ipv4.tcp_max_tw_buckets=262144",
        of(max)
    ));
    v.fix.push(
        "create fewer TIME_WAITs: reuse connections (keepalive, pooling); the side that closes first keeps the TIME_WAIT".into(),
    );
    v.fix.push("skipping TIME_WAIT is not a fix: late segments of an old connection can then land in a new one on the same ports".into());
    v
}

/// Sockets of a namespace whose local port is in the ephemeral range.
struct RangeUse {
    range: (u16, u16),
    usable: u64,
    states: BTreeMap<&'static str, u64>,
}

impl RangeUse {
    fn of(f: &NetFacts) -> Option<RangeUse> {
        let range = f.port_range?;
        let mut states = BTreeMap::new();
        for s in f.sockets.iter().filter(|s| s.sport >= range.0 && s.sport <= range.1) {
            *states.entry(net::state_name(s.state)).or_default() += 1;
        }
        Some(RangeUse { range, usable: usable_ports(range, &f.reserved), states })
    }
}

pub fn bind_hoarding(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    bound_connects: u64,
    net: Result<NetFacts, String>,
) -> Verdict {
    let mut v = base(Cause::BindHoarding, pid, comm.clone(), since, n);
    net_error(&mut v, &net);
    v.evidence.insert("bound_connects".into(), json!(bound_connects));
    let usage = net.as_ref().ok().and_then(RangeUse::of);
    let range_text = match &usage {
        Some(RangeUse { range, usable, states }) => {
            let in_use: u64 = states.values().sum();
            v.evidence.insert("range".into(), json!(format!("{}-{}", range.0, range.1)));
            v.evidence.insert("usable".into(), json!(usable));
            v.evidence.insert("in_use".into(), json!(in_use));
            v.evidence.insert("states".into(), json!(states));
            format!(": {} of {} ports in {}-{} are taken", thousands(in_use), thousands(*usable), range.0, range.1)
        }
        None => String::new(),
    };
    let bound = if bound_connects > 0 {
        format!(" ({} of its connects this interval used a port bound beforehand)", thousands(bound_connects))
    } else {
        String::new()
    };
    v.summary = format!(
        "{comm}[{pid}] cannot bind an ephemeral port{range_text}; bind-before-connect makes each port exclusive for every destination{bound}; {} binds to port 0 failed with EADDRINUSE since {}",
        thousands(n),
        clock(since)
    );
    v.fix.push(
        "set IP_BIND_ADDRESS_NO_PORT on the socket before bind(): the port is then chosen at connect() and shared across destinations (Linux 4.2+)".into(),
    );
    v.fix.push("or do not bind() before connect() unless a source address must be chosen".into());
    v.fix.push("IP_LOCAL_PORT_RANGE (Linux 6.3+) gives a socket its own port range".into());
    if let Some(RangeUse { range, .. }) = usage {
        v.fix.push(format!("widen net.ipv4.ip_local_port_range (now {}-{})", range.0, range.1));
    }
    v
}

pub fn address_unavailable(
    pid: u32,
    comm: String,
    since: SystemTime,
    bind_n: u64,
    connect_n: u64,
    addrs: &std::collections::BTreeSet<String>,
) -> Verdict {
    let mut v = base(Cause::AddressUnavailable, pid, comm.clone(), since, bind_n + connect_n);
    v.evidence.insert("bind_eaddrnotavail".into(), json!(bind_n));
    v.evidence.insert("connect_eaddrnotavail".into(), json!(connect_n));
    v.evidence.insert("addresses".into(), json!(addrs));
    let what = match (bind_n, connect_n) {
        (b, 0) => format!("{} binds", thousands(b)),
        (0, c) => format!("{} connects", thousands(c)),
        (b, c) => format!("{} binds and {} connects", thousands(b), thousands(c)),
    };
    let which = if addrs.is_empty() {
        // Every counted failure sends its event first; none here means the events were
        // suppressed by --events-per-sec or the ring buffer was full.
        let why = "not captured: their events were rate-limited (--events-per-sec) or dropped";
        v.evidence.insert("addresses_missing".into(), json!(why));
        format!(" (addresses {why})")
    } else {
        format!(" ({})", addrs.iter().cloned().collect::<Vec<_>>().join(", "))
    };
    v.summary = format!(
        "{comm}[{pid}] asks for a source address that is not configured here{which}: not port exhaustion; {} failed with EADDRNOTAVAIL since {}",
        what,
        clock(since)
    );
    v.fix.push("check the configured bind/source address against `ip addr` in the process's network namespace".into());
    v.fix.push(
        "if the address comes up later (VIP, DHCP), set IP_FREEBIND on the socket or net.ipv4.ip_nonlocal_bind=1"
            .into(),
    );
    v
}

pub fn fd_limit(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    soft: Option<u64>,
    hard: Option<u64>,
    open: Option<u64>,
) -> Verdict {
    let mut v = base(Cause::FdLimit, pid, comm.clone(), since, n);
    v.evidence.insert("nofile_soft".into(), json!(soft));
    v.evidence.insert("nofile_hard".into(), json!(hard));
    v.evidence.insert("open_fds".into(), json!(open));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "?".into());
    v.summary = format!(
        "{comm}[{pid}] hit its open-file limit: {} of {} file descriptors open (RLIMIT_NOFILE, hard limit {}); {} calls failed with EMFILE since {}",
        of(open),
        of(soft),
        of(hard),
        thousands(n),
        clock(since)
    );
    let hard_s = hard.map(|h| h.to_string()).unwrap_or_else(|| "unlimited".into());
    if soft.is_some() && soft == hard {
        v.fix.push(format!(
            "the hard limit ({hard_s}) is reached too: raise both (LimitNOFILE=N in the systemd unit, or prlimit --pid {pid} --nofile=N:N as root); fs.nr_open caps N"
        ));
    } else {
        v.fix.push(format!(
            "raise the soft limit up to the hard limit ({hard_s}): LimitNOFILE= in the systemd unit, `ulimit -n` before start, or now: prlimit --pid {pid} --nofile={hard_s}:{hard_s}"
        ));
    }
    v.fix.push(format!("if the open count only grows, it is an fd leak: see what is open in /proc/{pid}/fd"));
    v
}

pub fn file_max(pid: u32, comm: String, since: SystemTime, n: u64, file_nr: Option<(u64, u64)>) -> Verdict {
    let mut v = base(Cause::FileMax, pid, comm.clone(), since, n);
    v.evidence.insert("file_nr".into(), json!(file_nr.map(|f| f.0)));
    v.evidence.insert("file_max".into(), json!(file_nr.map(|f| f.1)));
    let (nr, max) = file_nr.map(|(a, b)| (thousands(a), thousands(b))).unwrap_or(("?".into(), "?".into()));
    v.summary = format!(
        "the system-wide file table is full: {nr} of {max} file handles in use (fs.file-nr, fs.file-max); {comm}[{pid}] got ENFILE {} times since {}",
        thousands(n),
        clock(since)
    );
    v.fix.push("raise fs.file-max: sysctl -w fs.file-max=N, and persist it in /etc/sysctl.d".into());
    v.fix.push("find the process holding the most files (conntrace check lists those closest to their limit)".into());
    v
}

pub fn ephemeral_ports(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    dest: &Dest,
    net: Result<NetFacts, String>,
) -> Verdict {
    let mut v = base(Cause::EphemeralPorts, pid, comm.clone(), since, n);
    v.destination = Some(dest.clone());
    let d = dest.endpoint();
    let usage = net.as_ref().ok().and_then(|f| PortUse::of(f, dest).map(|u| (u, f)));
    match usage {
        Some((u, f)) => {
            v.evidence = u.evidence(f, dest);
            v.summary = format!(
                "{comm}[{pid}] cannot get an ephemeral port toward {d}: {} of {} ports in {}-{} are in use ({}); {} connects failed since {}",
                thousands(u.in_use()),
                thousands(u.usable),
                u.range.0,
                u.range.1,
                u.states_text(),
                thousands(n),
                clock(since)
            );
            v.fix = port_fixes(&u, f, dest);
        }
        None => {
            let why = net.err().unwrap_or_else(|| "no port range".into());
            v.evidence.insert("netns".into(), json!(dest.netns));
            v.evidence.insert("error".into(), json!(why));
            v.summary = format!(
                "{comm}[{pid}] cannot get an ephemeral port toward {d} ({why}); {} connects failed since {}",
                thousands(n),
                clock(since)
            );
            v.fix.push(format!("keep connections to {d} alive and reuse them instead of one per request"));
            v.fix.push("widen net.ipv4.ip_local_port_range".into());
        }
    }
    v
}

pub fn to_json(v: &Verdict) -> Value {
    let mut j = json!({
        "type": "verdict",
        "ts": rfc3339(SystemTime::now()),
        "state": v.state,
        "cause": v.cause.as_str(),
        "pid": v.pid,
        "comm": v.comm,
        "since": rfc3339(v.since),
        "failures": v.failures,
        "destination": v.destination.as_ref().filter(|_| !v.cause.is_listener()).map(Dest::endpoint),
        "summary": v.summary,
        "evidence": v.evidence,
        "fix": v.fix,
    });
    if v.cause.is_listener() {
        j["listener"] = json!(v.destination.as_ref().map(Dest::endpoint));
    }
    if let Some(d) = v.duration_s {
        j["duration_s"] = json!((d * 10.0).round() / 10.0);
    }
    j
}

pub fn to_text(v: &Verdict) -> String {
    match v.state {
        "resolved" => format!(
            "<<< RESOLVED {}: {}[{}]{} after {:.1} s, {} failures",
            v.cause.as_str(),
            v.comm,
            v.pid,
            v.destination.as_ref().map(|d| format!(" toward {}", d.endpoint())).unwrap_or_default(),
            v.duration_s.unwrap_or(0.0),
            thousands(v.failures)
        ),
        _ => {
            let mut s = format!(">>> {}: {}", v.cause.as_str().to_uppercase(), v.summary);
            for f in &v.fix {
                s.push_str(&format!("\n    fix: {f}"));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::domain::net::TcpSocket;

    struct Fake {
        net: Result<NetFacts, String>,
        calls: u32,
    }

    impl Evidence for Fake {
        fn comm(&mut self, _pid: u32) -> String {
            "nginx".into()
        }
        fn nofile(&mut self, _pid: u32) -> Nofile {
            (Some(1024), Some(4096), Some(1024))
        }
        fn file_nr(&mut self) -> Option<(u64, u64)> {
            Some((99_990, 100_000))
        }
        fn net(&mut self, _pid: u32, _netns: u32) -> Result<NetFacts, String> {
            self.calls += 1;
            self.net.clone()
        }
        fn alive(&mut self, _pid: u32) -> bool {
            true
        }
        fn netns(&mut self, _pid: u32) -> Option<u32> {
            Some(7)
        }
        fn tcp_mem(&mut self) -> TcpMemFacts {
            (Some((8, 16, 24)), [("mem".to_string(), 30), ("orphan".to_string(), 0)].into())
        }
    }

    fn dest() -> Dest {
        Dest { netns: 7, addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port: 9000 }
    }

    fn net(established: u16, time_wait: u16, tw_reuse: u32) -> NetFacts {
        let mk = |state, sport| TcpSocket {
            state,
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport,
            dst: dest().addr,
            dport: 9000,
            rqueue: 0,
            wqueue: 0,
            inode: 0,
            drops: None,
        };
        let mut sockets: Vec<_> = (0..established).map(|i| mk(net::ESTABLISHED, 40000 + i)).collect();
        sockets.extend((0..time_wait).map(|i| mk(net::TIME_WAIT, 40000 + established + i)));
        NetFacts {
            port_range: Some((40000, 40049)),
            tcp_tw_reuse: Some(tw_reuse),
            sockets,
            netns: Some(7),
            ..Default::default()
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
    }

    fn window(t: u64) -> Window {
        Window { now: Some(at(t)), interval_s: 1.0, ..Default::default() }
    }

    #[test]
    fn port_exhaustion_by_time_wait_names_tw_reuse() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(2, 48, 0)), calls: 0 };
        let mut w = window(0);
        w.port_failures.insert((5688, dest()), 10);
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 1);
        let v = &out[0];
        assert_eq!((v.state, v.cause, v.pid, v.failures), ("active", Cause::EphemeralPorts, 5688, 10));
        assert_eq!(v.destination.as_ref().unwrap().endpoint(), "127.0.0.2:9000");
        assert!(v.summary.starts_with(
            "nginx[5688] cannot get an ephemeral port toward 127.0.0.2:9000: 50 of 50 ports in 40000-40049 are in use (2 ESTABLISHED, 48 TIME_WAIT); 10 connects failed"
        ), "{}", v.summary);
        assert_eq!(v.evidence["time_wait"], 48);
        assert_eq!(v.evidence["range_size"], 50);
        assert_eq!(v.evidence["tcp_tw_reuse"], 0);
        assert!(v.fix.iter().any(|f| f.contains("tcp_tw_reuse=1")));
        assert!(!v.fix.iter().any(|f| f.contains("tcp_tw_recycle=")));
        let j = to_json(v);
        assert_eq!(j["cause"], "ephemeral_ports");
        assert_eq!(j["destination"], "127.0.0.2:9000");
        assert_eq!(j["evidence"]["established"], 2);

        // More failures next interval: same verdict, not re-reported yet, no new evidence.
        let mut w = window(1);
        w.port_failures.insert((5688, dest()), 5);
        assert!(e.tick(&w, &mut fake).is_empty());
        assert_eq!(fake.calls, 1);
        assert_eq!(e.active().next().unwrap().failures, 15);
        // Quiet for 5 s: resolved, with its duration.
        assert!(e.tick(&window(4), &mut fake).is_empty());
        let out = e.tick(&window(6), &mut fake);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state, "resolved");
        assert_eq!(out[0].failures, 15);
        // From the start of the first failing interval (t-1 s) to the last failure (t+1 s).
        assert_eq!(out[0].duration_s, Some(2.0));
        assert!(to_text(&out[0]).starts_with("<<< RESOLVED ephemeral_ports: nginx[5688] toward 127.0.0.2:9000"));
    }

    #[test]
    fn tw_bucket_overflow_names_the_limit_and_the_namespace_counter() {
        let mut n = net(0, 10, 0);
        n.tcp_max_tw_buckets = Some(10);
        n.tcp_ext.insert("TCPTimeWaitOverflow".into(), 20);
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(n), calls: 0 };
        let mut w = window(0);
        w.counts.insert(9, Counts { tw_overflows: 20, time_wait_created: 10, ..Default::default() });
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 1, "{out:?}");
        let v = &out[0];
        assert_eq!((v.cause, v.pid, v.failures), (Cause::TwBuckets, 9, 20));
        assert!(v.summary.contains("10 TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets is 10; 20 of its connections"));
        assert_eq!(v.evidence["netns_tw_overflows"], 20);
        assert!(v.fix[0].contains("tcp_max_tw_buckets (now 10"));
    }

    #[test]
    fn refused_tcp_memory_names_tcp_mem_and_the_usage() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(0, 0, 0)), calls: 0 };
        let mut w = window(0);
        w.counts.insert(5, Counts { tcp_mem_send_refused: 3, tcp_mem_recv_refused: 40, ..Default::default() });
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 1, "{out:?}");
        let v = &out[0];
        assert_eq!((v.cause, v.failures), (Cause::TcpMem, 43));
        assert!(
            v.summary.contains("30 pages (0 MiB) in use, tcp_mem is 8 16 24 pages; 43 buffer allocations"),
            "{}",
            v.summary
        );
        assert_eq!(v.evidence["recv_refused"], 40);
        assert!(v.fix.iter().any(|f| f.contains("net.ipv4.tcp_mem")));
    }

    #[test]
    fn netfilter_drops_are_conntrack_full_only_when_the_table_is() {
        let mut n = net(0, 0, 0);
        n.conntrack = Some(crate::domain::net::Conntrack {
            count: Some(16),
            max: Some(16),
            stats: [("drop".to_string(), 20), ("insert_failed".to_string(), 0)].into(),
        });
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(n.clone()), calls: 0 };
        let mut w = window(0);
        w.counts.insert(6, Counts { netfilter_drops: 20, ..Default::default() });
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].cause, Cause::ConntrackFull);
        assert!(out[0].summary.contains("16 of 16 entries"), "{}", out[0].summary);
        assert!(out[0].fix[0].contains("nf_conntrack_max (now 16"));
        // Room in the table and no refused entries: a rule dropped them, no verdict.
        n.conntrack = Some(crate::domain::net::Conntrack { count: Some(3), max: Some(16), stats: BTreeMap::new() });
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(n), calls: 0 };
        assert!(e.tick(&w, &mut fake).is_empty());
    }

    #[test]
    fn failed_port_zero_binds_are_bind_hoarding_not_ephemeral_ports() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(50, 0, 0)), calls: 0 };
        let mut w = window(0);
        let mut c = Counts { bind_failures: 10, bound_connects: 50, ..Default::default() };
        c.bind_errors.insert("EADDRINUSE".into(), 10);
        w.counts.insert(3, c);
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].cause, Cause::BindHoarding);
        assert!(out[0].summary.contains("50 of 50 ports in 40000-40049 are taken"), "{}", out[0].summary);
        assert_eq!(out[0].evidence["bound_connects"], 50);
        assert!(out[0].fix[0].contains("IP_BIND_ADDRESS_NO_PORT"));
    }

    #[test]
    fn eaddrnotavail_without_a_port_search_is_address_unavailable() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(0, 0, 0)), calls: 0 };
        let mut w = window(0);
        // 4 connect EADDRNOTAVAIL, 3 of them port-search failures; 2 binds to a foreign address.
        let mut c = Counts { port_assign_failures: 3, connect_addr_unavailable: 1, ..Default::default() };
        c.connect_errors.insert("EADDRNOTAVAIL".into(), 4);
        c.bind_errors.insert("EADDRNOTAVAIL".into(), 2);
        w.counts.insert(4, c);
        w.unavailable_addrs.insert(4, ["192.0.2.1:80".to_string()].into());
        let out = e.tick(&w, &mut fake);
        let v = out.iter().find(|v| v.cause == Cause::AddressUnavailable).expect("address_unavailable");
        assert_eq!(v.failures, 3);
        assert_eq!(v.evidence["bind_eaddrnotavail"], 2);
        assert_eq!(v.evidence["connect_eaddrnotavail"], 1);
        assert!(v.summary.contains("(192.0.2.1:80)"), "{}", v.summary);
        // Port failures alone make no such verdict.
        let mut e = Engine::new(Duration::from_secs(1));
        let mut w = window(0);
        let mut c = Counts { port_assign_failures: 3, ..Default::default() };
        c.connect_errors.insert("EADDRNOTAVAIL".into(), 3);
        w.counts.insert(4, c);
        assert!(e.tick(&w, &mut fake).iter().all(|v| v.cause != Cause::AddressUnavailable));
        // The counters read between a port failure and its connect error (they are counted at
        // different moments): the error alone in the next interval is still no such verdict.
        let mut w = window(1);
        let mut c = Counts::default();
        c.connect_errors.insert("EADDRNOTAVAIL".into(), 1);
        w.counts.insert(4, c);
        assert!(e.tick(&w, &mut fake).iter().all(|v| v.cause != Cause::AddressUnavailable));
    }

    #[test]
    fn port_exhaustion_by_established_connections_does_not_suggest_tw_reuse() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(50, 0, 0)), calls: 0 };
        let mut w = window(0);
        w.port_failures.insert((1, dest()), 3);
        let v = &e.tick(&w, &mut fake)[0];
        assert!(v.summary.contains("(50 ESTABLISHED, 0 TIME_WAIT)"), "{}", v.summary);
        assert!(!v.fix.iter().any(|f| f.contains("tcp_tw_reuse=1")));
        assert!(v.fix.iter().any(|f| f.contains("open connections hold most ports")));
    }

    #[test]
    fn ports_held_in_fin_wait2_are_named() {
        let mut n = net(0, 0, 0);
        for i in 0..50 {
            n.sockets.push(TcpSocket {
                state: 5,
                src: IpAddr::V4(Ipv4Addr::LOCALHOST),
                sport: 40000 + i,
                dst: dest().addr,
                dport: 9000,
                rqueue: 0,
                wqueue: 0,
                inode: 0,
                drops: None,
            });
        }
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(n), calls: 0 };
        let mut w = window(0);
        w.port_failures.insert((1, dest()), 3);
        let v = &e.tick(&w, &mut fake)[0];
        assert!(v.summary.contains("(0 ESTABLISHED, 0 TIME_WAIT, 50 FIN_WAIT2)"), "{}", v.summary);
        assert_eq!(v.evidence["states"]["FIN_WAIT2"], 50);
        assert_eq!(v.evidence["other"], 50);
        assert!(v.fix.iter().any(|f| f.contains("has not closed its side yet")));
        assert!(v.fix.iter().any(|f| f.contains("tcp_tw_reuse=1")));
    }

    #[test]
    fn gone_namespace_is_said() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Err("network namespace 7 is gone".into()), calls: 0 };
        let mut w = window(0);
        w.port_failures.insert((1, dest()), 3);
        let v = &e.tick(&w, &mut fake)[0];
        assert!(v.summary.contains("namespace 7 is gone"));
        assert_eq!(v.evidence["netns"], 7);
    }

    #[test]
    fn fd_limit_and_file_max() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Err(String::new()), calls: 0 };
        let mut w = window(0);
        w.counts.insert(42, Counts { emfile: 10, enfile: 2, ..Default::default() });
        w.first_seen.insert((42, Cause::FdLimit), at(0) - Duration::from_millis(300));
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 2);
        let fd = out.iter().find(|v| v.cause == Cause::FdLimit).unwrap();
        assert_eq!(fd.evidence["nofile_soft"], 1024);
        assert_eq!(fd.evidence["nofile_hard"], 4096);
        assert_eq!(fd.evidence["open_fds"], 1024);
        assert!(fd.summary.contains("1,024 of 1,024 file descriptors open"), "{}", fd.summary);
        assert!(fd.fix[0].contains("prlimit --pid 42 --nofile=4096:4096"));
        assert_eq!(fd.since, at(0) - Duration::from_millis(300));
        let fm = out.iter().find(|v| v.cause == Cause::FileMax).unwrap();
        assert_eq!(fm.evidence["file_nr"], 99_990);
        assert_eq!(fm.evidence["file_max"], 100_000);
    }

    #[test]
    fn failed_last_tick_names_the_failures_of_that_interval_only() {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Err(String::new()), calls: 0 };
        let mut w = window(0);
        w.counts.insert(42, Counts { emfile: 1, ..Default::default() });
        e.tick(&w, &mut fake);
        assert!(e.failed_last_tick(42, Cause::FdLimit));
        assert!(!e.failed_last_tick(42, Cause::FileMax));
        assert!(!e.failed_last_tick(43, Cause::FdLimit));
        // Still active (quiet period), but no failure in this interval.
        e.tick(&window(1), &mut fake);
        assert!(e.is_active(42, Cause::FdLimit));
        assert!(!e.failed_last_tick(42, Cause::FdLimit));
    }

    #[test]
    fn time_wait_pressure_predicts_exhaustion_and_healthy_churn_stays_silent() {
        // 50 usable ports, 20 TIME_WAIT/s: 1,200 needed → exhaustion; 10 in use → 2 s left.
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(0, 10, 0)), calls: 0 };
        let mut w = window(0);
        w.time_waits.insert((9, dest()), 20);
        let out = e.tick(&w, &mut fake);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cause, Cause::TimeWaitPressure);
        assert_eq!(out[0].evidence["rate_per_s"], 20.0);
        assert_eq!(out[0].evidence["seconds_left"], 2);

        // Same rate where tcp_tw_reuse applies (loopback with 2): silent.
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(0, 10, 2)), calls: 0 };
        assert!(e.tick(&w, &mut fake).is_empty());

        // Healthy churn: 0.5/s × 60 = 30 < 50 usable: silent.
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake { net: Ok(net(0, 10, 0)), calls: 0 };
        let mut w = Window { now: Some(at(0)), interval_s: 2.0, ..Default::default() };
        w.time_waits.insert((9, dest()), 1);
        assert!(e.tick(&w, &mut fake).is_empty());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(6823), "6,823");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
