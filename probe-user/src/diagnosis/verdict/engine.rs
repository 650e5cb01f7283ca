//! The verdict engine: turns each interval's counts into verdicts, keeps them active while
//! failures go on, resolves them after a quiet period; its predictions (warnings) are in
//! `predict`.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, SystemTime},
};

use super::*;

mod predict;
mod predict_tables;

pub(super) struct Active {
    verdict: Verdict,
    last_failure: SystemTime,
    last_emit: SystemTime,
    emitted_failures: u64,
}

pub(super) type Key = (Cause, u32, Option<Dest>);

/// TIME_WAITs created in one interval: (end of the interval, count, its length in seconds).
pub(super) type TwSample = (SystemTime, u64, f64);

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
    /// Open fds over time per process, for the fd warning.
    fd_trend: FdTrend,
    /// TIME_WAIT sockets over time per namespace, and the process each warning is charged to.
    tw_trend: Trend<u32>,
    tw_charged: BTreeMap<u32, u32>,
    /// Since when each listener (namespace, inode) has been read at least 4/5 full, every poll.
    queue_busy: BTreeMap<(u32, u32), SystemTime>,
    /// Ports in use over time per destination, and the process each warning is charged to.
    port_trend: Trend<PortKey>,
    port_charged: BTreeMap<PortKey, u32>,
    /// Conntrack entries over time per namespace, and the process each warning is charged to.
    ct_trend: Trend<u32>,
    ct_charged: BTreeMap<u32, u32>,
    /// The machine's TCP memory pages over time (one key).
    tcp_mem_trend: Trend<u32>,
    /// Distinct ports of the range in use per namespace, and the connects on bound sockets
    /// per (namespace, process) seen so far.
    range_trend: Trend<u32>,
    binders: BTreeMap<(u32, u32), u64>,
}

/// The process of namespace `ns` with the most of `count` this interval, with that count;
/// None when none has any (whom a namespace-wide warning is charged to).
pub(super) fn busiest_in(
    w: &Window,
    ev: &mut dyn Evidence,
    ns: u32,
    count: impl Fn(&crate::domain::model::Counts) -> u64,
) -> Option<(u32, u64)> {
    w.counts
        .iter()
        .map(|(&pid, c)| (pid, count(c)))
        .filter(|&(_, n)| n > 0)
        .filter(|&(pid, _)| ev.netns(pid) == Some(ns))
        .max_by_key(|&(_, n)| n)
}

/// A destination as a trend key: (namespace, address, port).
pub(super) type PortKey = (u32, std::net::IpAddr, u16);

/// One interval being diagnosed: its window, its end and start, and the (cause, process,
/// destination) keys that failed in it.
struct Tick<'a> {
    w: &'a Window,
    now: SystemTime,
    start: SystemTime,
    seen: Vec<Key>,
}

impl Tick<'_> {
    /// When `pid`'s failures of `cause` began: its first event this interval, else the
    /// interval's start.
    fn since(&self, pid: u32, cause: Cause) -> SystemTime {
        self.w.first_seen.get(&(pid, cause)).copied().unwrap_or(self.start)
    }
}

impl Engine {
    pub fn new(interval: Duration) -> Engine {
        Engine {
            active: BTreeMap::new(),
            quiet: (interval * 3).max(Duration::from_secs(5)),
            tw_history: BTreeMap::new(),
            ct_refused: BTreeMap::new(),
            failed: Default::default(),
            fd_trend: FdTrend::default(),
            tw_trend: Trend::default(),
            tw_charged: BTreeMap::new(),
            queue_busy: BTreeMap::new(),
            port_trend: Trend::default(),
            port_charged: BTreeMap::new(),
            ct_trend: Trend::default(),
            ct_charged: BTreeMap::new(),
            tcp_mem_trend: Trend::default(),
            range_trend: Trend::default(),
            binders: BTreeMap::new(),
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

    /// At the end of a run: the active verdicts whose failures grew since they were last
    /// reported (repeats are spaced 10 s apart), so the stream's last word on each has its
    /// final count.
    pub fn unreported(&mut self, now: SystemTime) -> Vec<Verdict> {
        let mut out = Vec::new();
        for a in self.active.values_mut() {
            if a.verdict.failures != a.emitted_failures && a.last_emit != SystemTime::UNIX_EPOCH {
                a.last_emit = now;
                a.emitted_failures = a.verdict.failures;
                out.push(a.verdict.clone());
            }
        }
        out
    }

    /// Feeds one interval; returns the verdicts to report now (new, updated, resolved).
    pub fn tick(&mut self, w: &Window, ev: &mut dyn Evidence) -> Vec<Verdict> {
        let now = w.now.unwrap_or_else(SystemTime::now);
        let start = now - Duration::from_secs_f64(w.interval_s.max(0.0));
        let mut t = Tick { w, now, start, seen: Vec::new() };
        // Port exhaustion first: address failures of the same process may join it.
        self.port_failures(&mut t, ev);
        for (&pid, c) in &w.counts {
            self.fd_failures(&mut t, ev, pid, c);
            self.namespace_failures(&mut t, ev, pid, c);
            self.conntrack_failures(&mut t, ev, pid, c);
            self.address_failures(&mut t, ev, pid, c);
        }
        self.listener_failures(&mut t, ev);
        self.predict_time_wait(w, now, ev, &mut t.seen);
        self.predict_fds(w, now, ev, &mut t.seen);
        self.predict_tw_tables(w, now, ev, &mut t.seen);
        self.predict_queues(w, now, ev, &mut t.seen);
        // Before the per-destination ports: a process that binds first runs out of the whole
        // range before any one destination's share.
        self.predict_bind(w, now, ev, &mut t.seen);
        self.predict_ports(w, now, ev, &mut t.seen);
        self.predict_tables(w, now, ev, &mut t.seen);
        self.report(now, &t.seen, ev)
    }

    fn fd_failures(&mut self, t: &mut Tick, ev: &mut dyn Evidence, pid: u32, c: &Counts) {
        if c.emfile > 0 {
            let since = t.since(pid, Cause::FdLimit);
            self.failure((Cause::FdLimit, pid, None), c.emfile, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                let Nofile { soft, hard, open } = ev.nofile(pid);
                let sockets = ev.socket_fds(pid);
                let mut v = fd_limit(
                    pid,
                    comm,
                    since,
                    c.emfile,
                    FdLimitProof { nofile_soft: soft, nofile_hard: hard, open_fds: open, sockets, note: None },
                );
                if let Some(from) = counted_from_attach(&mut v, t.w.fd_counted_from, since, t.w.interval_s) {
                    note_counted_from(&mut v, from);
                }
                v
            });
        }
        if c.enfile > 0 {
            let since = t.since(pid, Cause::FileMax);
            self.failure((Cause::FileMax, pid, None), c.enfile, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                let mut v = file_max(pid, comm, since, c.enfile, ev.file_nr());
                counted_from_attach(&mut v, t.w.fd_counted_from, since, t.w.interval_s);
                v
            });
        }
    }

    /// Limits of the process's network namespace or of the machine: the tw table, the
    /// ephemeral range for bind(0), TCP memory.
    fn namespace_failures(&mut self, t: &mut Tick, ev: &mut dyn Evidence, pid: u32, c: &Counts) {
        if c.tw_overflows > 0 {
            let since = t.since(pid, Cause::TwBuckets);
            self.failure((Cause::TwBuckets, pid, None), c.tw_overflows, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                // The kernel's record names the namespace even once the process is gone.
                let table = ev.tw_table(pid);
                let net = match table {
                    Some(t) => ev.net(pid, t.netns),
                    None => own_net(ev, pid),
                };
                tw_buckets(pid, comm, since, c.tw_overflows, table, net)
            });
        }
        if c.bind_failures > 0 {
            let since = t.since(pid, Cause::BindHoarding);
            self.failure((Cause::BindHoarding, pid, None), c.bind_failures, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                bind_hoarding(pid, comm, since, c.bind_failures, c.bound_connects, own_net(ev, pid))
            });
        }
        let mem = c.tcp_mem_send_refused + c.tcp_mem_recv_refused;
        if mem > 0 {
            let since = t.since(pid, Cause::TcpMem);
            self.failure((Cause::TcpMem, pid, None), mem, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                let TcpMemFacts { limits, sockstat } = ev.tcp_mem();
                tcp_mem(pid, comm, since, c, limits, &sockstat, own_net(ev, pid))
            });
        }
    }

    /// Netfilter drops are a plateau cause only when conntrack could not track the packet
    /// (table full); a rule dropping them is policy, left to the counters.
    fn conntrack_failures(&mut self, t: &mut Tick, ev: &mut dyn Evidence, pid: u32, c: &Counts) {
        if c.netfilter_drops == 0 {
            return;
        }
        let key = (Cause::ConntrackFull, pid, None);
        let active = self.active.contains_key(&key);
        let ct = if active {
            None
        } else {
            let facts = own_net(ev, pid).ok().and_then(|f| Some((f.conntrack.clone()?, f.netns)));
            facts.filter(|(ct, ns)| {
                // The statistics count since boot: only their growth since conntrace first
                // looked at this namespace says anything about now.
                let refused = conntrack_refused(ct);
                let first = *self.ct_refused.entry(ns.unwrap_or(0)).or_insert(refused);
                conntrack_at_limit(ct) || refused > first
            })
        };
        if active || ct.is_some() {
            let since = t.since(pid, Cause::ConntrackFull);
            let n = c.netfilter_drops;
            self.failure(key, n, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                let (ct, netns) = ct.unwrap_or_default();
                conntrack_verdict(pid, comm, since, n, &ct, netns)
            });
        }
    }

    /// EADDRNOTAVAIL that is not a port search failing: bind() to an address that is not
    /// local, or connect() refused before any port was looked for.
    fn address_failures(&mut self, t: &mut Tick, ev: &mut dyn Evidence, pid: u32, c: &Counts) {
        let bind_n = c.bind_errors.get("EADDRNOTAVAIL").copied().unwrap_or(0);
        let mut connect_n = c.connect_addr_unavailable;
        // Positive evidence only: an address the process asked for. A wildcard is none.
        let addrs: std::collections::BTreeSet<String> =
            t.w.unavailable_addrs.get(&pid).into_iter().flatten().filter(|a| !is_wildcard(a)).cloned().collect();
        // connect() failures without an address while the same process exhausts its ports are
        // port failures whose port search conntrace did not see (a hook skipped under load):
        // they join that verdict instead of contradicting it.
        if connect_n > 0 && addrs.is_empty() {
            // The busiest of its port verdicts (this interval's are built already).
            let port = self
                .active
                .iter_mut()
                .filter(|((c, p, _), _)| *c == Cause::EphemeralPorts && *p == pid)
                .max_by_key(|(_, a)| a.verdict.failures);
            if let Some((_, a)) = port {
                a.verdict.failures += connect_n;
                a.last_failure = t.now;
                connect_n = 0;
            }
        }
        if bind_n + connect_n > 0 {
            let since = t.since(pid, Cause::AddressUnavailable);
            self.failure((Cause::AddressUnavailable, pid, None), bind_n + connect_n, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                address_unavailable(pid, comm, since, bind_n, connect_n, &addrs)
            });
        }
    }

    fn listener_failures(&mut self, t: &mut Tick, ev: &mut dyn Evidence) {
        for (pid, l, ns) in &t.w.listener_drops {
            let pid = *pid;
            let cause = listen_cause(l, ns);
            let dest = Dest { netns: l.netns, addr: l.addr, port: l.port };
            let since = t.since(pid, cause);
            self.failure((cause, pid, Some(dest)), l.drops + l.cookies, t.now, since, &mut t.seen, || {
                let comm = ev.comm(pid);
                listen_queue(cause, pid, comm, since, l, ns, ev.net(pid, l.netns))
            });
        }
    }

    fn port_failures(&mut self, t: &mut Tick, ev: &mut dyn Evidence) {
        for ((pid, dest), &n) in &t.w.port_failures {
            let since = t.since(*pid, Cause::EphemeralPorts);
            self.failure((Cause::EphemeralPorts, *pid, Some(dest.clone())), n, t.now, since, &mut t.seen, || {
                let comm = ev.comm(*pid);
                ephemeral_ports(*pid, comm, since, n, dest, ev.net(*pid, dest.netns))
            });
        }
    }

    /// The verdicts to print now: new ones, updates of active ones (at most every 10 s, when
    /// their count changed), and resolutions after the quiet period.
    fn report(&mut self, now: SystemTime, seen: &[Key], ev: &mut dyn Evidence) -> Vec<Verdict> {
        let mut out = Vec::new();
        let mut resolved = Vec::new();
        // A warning whose failures have begun ends at once: the verdict of the failures
        // takes over (and its resolution says so).
        let realized: Vec<Key> = self
            .active
            .keys()
            .filter(|(c, p, d)| c.realized_by().is_some_and(|f| self.active.contains_key(&(f, *p, d.clone()))))
            .cloned()
            .collect();
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
            } else if now.duration_since(a.last_failure).unwrap_or_default() >= self.quiet || realized.contains(key) {
                resolved.push(key.clone());
            }
        }
        self.failed = seen.iter().map(|(c, p, _)| (*c, *p)).collect();
        for key in resolved {
            let reason = match self.active.get(&key) {
                Some(a) if a.verdict.state == VerdictState::Warning => {
                    Some(self.calm_reason(&key, &a.verdict, now, ev))
                }
                _ => None,
            };
            if let Some(a) = self.active.remove(&key) {
                let mut v = a.verdict;
                v.state = VerdictState::Resolved;
                if let Some(why) = reason {
                    // A warning's last figures ("runs out in about 0 s") no longer hold.
                    v.set_summary(format!("warning over: {why}"), String::new());
                    v.resolution = Some(why);
                }
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
}

/// An endpoint on the wildcard address (an unbound socket): names no address the process
/// asked for.
fn is_wildcard(endpoint: &str) -> bool {
    endpoint.starts_with("0.0.0.0:") || endpoint.starts_with("[::]:")
}
