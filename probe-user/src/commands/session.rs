//! One `watch` session as pure steps: failure events in, then at each interval's end the
//! counters read from the kernel in, samples and verdicts out. Everything it asks of the
//! running system goes through [`Host`], so the steps run on fake snapshots in tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use probe_common::counters::{kind, CountKey, DestKey, UNATTRIBUTED};

use crate::{
    commands::{event_facts::EventFacts, evidence::Cached, filter::Filter, host::Host, listen_poll::ListenPoll},
    diagnosis::verdict::{Cause, Engine, FdReading, Verdict, Window},
    domain::{
        listen::NsDelta,
        model::{self, Counts, EventRecord, Sample, Snapshot},
        net::endpoint,
    },
    system::listeners,
};

pub struct Session {
    filter: Filter,
    /// Counters at the end of the previous interval.
    prev: Snapshot,
    prev_dest: BTreeMap<DestKey, u64>,
    engine: Engine,
    /// What failure events told (first failure times, refused addresses, evidence taken at
    /// the moment of failure) until the interval that counts them is diagnosed.
    facts: EventFacts,
    /// RLIMIT_NOFILE from the latest EMFILE event per process: the limit is still known
    /// once the process has exited and /proc no longer says.
    event_limits: BTreeMap<u32, u64>,
    /// Filter decisions per pid, so events do not read /proc each time.
    match_cache: BTreeMap<u32, bool>,
    /// The kernel infers tw-bucket overflows (the set_state fallback): correct them with
    /// each namespace's exact TcpExt count.
    infer_tw: bool,
    /// Per namespace, TcpExt TCPTimeWaitOverflow growth no counted close claimed yet (see
    /// [`listeners::reconcile_tw_overflows`]).
    tw_carry: BTreeMap<u32, u64>,
    /// Open fds read after the previous interval (processes near their limit, see
    /// `arming`), for the fd warning; this interval's samples add theirs.
    fd_readings: Vec<FdReading>,
    fd_counted_from: Option<SystemTime>,
}

/// Counters read from the kernel at the end of an interval.
pub struct Read {
    /// Processes that had exited before the read (their counts in it are final).
    pub gone_before: BTreeSet<u32>,
    pub cur: Snapshot,
    pub cur_dest: BTreeMap<DestKey, u64>,
}

/// What an interval brought.
#[derive(Debug, Default)]
pub struct Step {
    pub samples: Vec<Sample>,
    pub verdicts: Vec<Verdict>,
    /// Counters of exited processes, reported for the last time: the kernel's maps drop them.
    pub forget: Vec<CountKey>,
    pub forget_dest: Vec<DestKey>,
}

/// The cause a failure event is evidence for.
fn cause_of(rec: &EventRecord) -> Option<Cause> {
    match rec.kind {
        "port_assign_failure" => Some(Cause::EphemeralPorts),
        "emfile" => Some(Cause::FdLimit),
        "enfile" => Some(Cause::FileMax),
        "bind_error" if rec.errno == "EADDRINUSE" && rec.sport == Some(0) => Some(Cause::BindHoarding),
        // Port-search failures come as port_assign_failure: these are the other kind.
        "bind_error" | "connect_error" if rec.errno == "EADDRNOTAVAIL" => Some(Cause::AddressUnavailable),
        _ => None,
    }
}

impl Session {
    /// A session whose first interval starts at the counters `prev`, `prev_dest`.
    pub fn new(
        filter: Filter,
        interval: Duration,
        prev: Snapshot,
        prev_dest: BTreeMap<DestKey, u64>,
        infer_tw: bool,
    ) -> Session {
        Session {
            filter,
            prev,
            prev_dest,
            engine: Engine::new(interval),
            facts: EventFacts::default(),
            event_limits: BTreeMap::new(),
            match_cache: BTreeMap::new(),
            infer_tw,
            tw_carry: BTreeMap::new(),
            fd_readings: Vec::new(),
            fd_counted_from: None,
        }
    }

    /// Active verdicts with failures not reported yet (see `Engine::unreported`).
    pub fn unreported(&mut self, now: SystemTime) -> Vec<Verdict> {
        let mut v = self.engine.unreported(now);
        self.keep_watched(&mut v);
        v
    }

    /// Warnings read from a watched namespace may be charged to a process outside the filter
    /// (the holder of the sockets): only the watched ones' are reported, and those charged to
    /// nobody in particular (a table of the namespace or the machine).
    fn keep_watched(&self, verdicts: &mut Vec<Verdict>) {
        if !self.filter.is_all() {
            verdicts.retain(|v| v.pid == UNATTRIBUTED || self.filter.matches(v.pid, &v.comm));
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Processes with counters that have exited by now. Ask *before* reading the counters:
    /// the read then holds their final counts (asking after could drop increments made
    /// between the read and the exit).
    pub fn exited(&self, host: &mut dyn Host) -> BTreeSet<u32> {
        let pids: BTreeSet<u32> =
            self.prev.keys().map(|k| k.tgid).chain(self.prev_dest.keys().map(|k| k.tgid)).collect();
        pids.into_iter().filter(|&t| t != UNATTRIBUTED && !host.exists(t)).collect()
    }

    fn comm_of(host: &mut dyn Host, pid: u32) -> String {
        if pid == UNATTRIBUTED {
            return "(unattributed)".into();
        }
        host.comm(pid).unwrap_or_else(|| "?".into())
    }

    /// A failure event. Its facts wait for the interval that counts it; the first failure of
    /// a process and cause takes the evidence now, while the state that caused it is still
    /// there. Returns whether the event concerns a watched process (to be printed).
    pub fn event(&mut self, rec: &EventRecord, host: &mut dyn Host) -> bool {
        if let Some(limit) = rec.limit {
            self.event_limits.insert(rec.pid, limit);
        }
        let wanted = self.filter.is_all() || {
            let (filter, cache) = (&self.filter, &mut self.match_cache);
            *cache.entry(rec.pid).or_insert_with(|| {
                let comm = host.comm(rec.pid).unwrap_or_default();
                filter.matches(rec.pid, &comm) || filter.matches(rec.pid, &rec.comm)
            })
        };
        if !wanted {
            return false;
        }
        let Some(cause) = cause_of(rec) else { return true };
        if cause == Cause::AddressUnavailable {
            if let (Some(a), Some(p)) = (&rec.saddr, rec.sport) {
                self.facts.unavailable_addr(rec.pid, endpoint(a, p));
            }
        }
        let first = self.facts.failure(rec.pid, cause, rec.ts);
        if first && !self.engine.is_active(rec.pid, cause) {
            let early = &mut self.facts.early;
            match (cause, rec.netns) {
                (Cause::EphemeralPorts, Some(ns)) => {
                    early.net.entry(ns).or_insert_with(|| host.net(rec.pid, ns));
                }
                (Cause::FdLimit, _) => {
                    let mut n = host.nofile(rec.pid);
                    // The limit the kernel compared with, from the event: known even when the
                    // process is already gone.
                    n.soft = n.soft.or(rec.limit);
                    early.nofile.entry(rec.pid).or_insert(n);
                    early.sockets.entry(rec.pid).or_insert_with(|| host.socket_fds(rec.pid));
                }
                (Cause::FileMax, _) => {
                    early.file_nr.get_or_insert_with(|| host.file_nr());
                }
                _ => {}
            }
        }
        true
    }

    /// The end of an interval of `interval_s` seconds at `now`: the counters `read` (with
    /// every event of the failures they count already passed to [`Session::event`]) become
    /// samples and verdicts, and the next interval's baseline.
    pub fn end(&mut self, read: Read, now: SystemTime, interval_s: f64, host: &mut dyn Host) -> Step {
        let Read { gone_before, cur, cur_dest } = read;
        let (samples, mut window) = self.window(host, &cur, &cur_dest, now, interval_s);
        let (fresh, early) = self.facts.fill(&mut window);
        let mut evidence = Cached::new(host, early);
        let mut verdicts = self.engine.tick(&window, &mut evidence);
        self.facts.settle(&self.engine, &window, fresh, evidence.into_cache());
        self.keep_watched(&mut verdicts);
        let (forget, forget_dest) = self.next_baseline(&gone_before, cur, cur_dest);
        Step { samples, verdicts, forget, forget_dest }
    }

    /// When the fd-failure hook, attached on demand, was last attached (see
    /// `Window::fd_counted_from`).
    pub fn set_fd_counted_from(&mut self, at: SystemTime) {
        self.fd_counted_from = Some(at);
    }

    /// Open fds read outside the samples (see `arming::LiveArming::read`), for the next
    /// interval's fd warning.
    pub fn set_fd_readings(&mut self, readings: Vec<FdReading>) {
        self.fd_readings = readings;
    }

    /// The samples to print and the window to diagnose: counter growth since the last read,
    /// the listeners that dropped, per-destination failures and TIME_WAITs.
    fn window(
        &mut self,
        host: &mut dyn Host,
        cur: &Snapshot,
        cur_dest: &BTreeMap<DestKey, u64>,
        now: SystemTime,
        interval_s: f64,
    ) -> (Vec<Sample>, Window) {
        let mut deltas = model::diff(&self.prev, cur);
        for &pid in &self.filter.pids {
            if host.exists(pid) {
                deltas.entry(pid).or_default();
            }
        }
        let mut window = Window { now: Some(now), interval_s, ..Default::default() };
        let watched: Vec<u32> = deltas.keys().chain(&self.filter.pids).copied().collect();
        let ListenPoll { dropped, by_ns, tw_tables, busy, ports, range_use, conntrack, tcp_mem } =
            host.poll_listeners(&watched);
        window.range_use = range_use;
        window.tw_tables = tw_tables;
        window.port_readings = ports;
        window.conntrack_tables = conntrack;
        window.tcp_mem_use = tcp_mem;
        window.busy_listeners = busy
            .into_iter()
            .filter(|(owner, _)| self.filter.is_all() || self.filter.matches(*owner, &Self::comm_of(host, *owner)))
            .collect();
        if self.infer_tw {
            reconcile_tw(host, &mut deltas, &by_ns, &mut self.tw_carry);
        }
        for (owner, l, ns) in dropped {
            if !self.filter.is_all() && !self.filter.matches(owner, &Self::comm_of(host, owner)) {
                continue;
            }
            let c = deltas.entry(owner).or_default();
            c.listen_drops += l.drops;
            c.syncookies += l.cookies;
            window.listener_drops.push((owner, l, ns));
        }
        let mut samples = Vec::new();
        for (pid, counts) in deltas {
            let comm = Self::comm_of(host, pid);
            if !self.filter.matches(pid, &comm) {
                continue;
            }
            let nofile = (pid != UNATTRIBUTED && host.exists(pid)).then(|| host.nofile(pid));
            if pid != UNATTRIBUTED {
                window.counts.insert(pid, counts.clone());
            }
            samples.push(Sample {
                pid,
                comm,
                interval_s,
                counts,
                nofile_limit: nofile.and_then(|n| n.soft).or_else(|| self.event_limits.get(&pid).copied()),
                open_fds: nofile.and_then(|n| n.open),
            });
        }
        for (key, dest, n) in model::diff_dest(&self.prev_dest, cur_dest) {
            if key.tgid == UNATTRIBUTED || !window.counts.contains_key(&key.tgid) {
                continue;
            }
            match key.kind {
                kind::PORT_ASSIGN_FAILURE => *window.port_failures.entry((key.tgid, dest)).or_default() += n,
                kind::TIME_WAIT => *window.time_waits.entry((key.tgid, dest)).or_default() += n,
                _ => {}
            }
        }
        let mut fds: BTreeMap<u32, FdReading> =
            std::mem::take(&mut self.fd_readings).into_iter().map(|r| (r.pid, r)).collect();
        for s in &samples {
            if let (Some(open), Some(limit)) = (s.open_fds, s.nofile_limit) {
                fds.insert(s.pid, FdReading { pid: s.pid, open, limit });
            }
        }
        window.fd_readings = fds.into_values().collect();
        window.fd_counted_from = self.fd_counted_from;
        (samples, window)
    }

    /// Keeps the counters just read as the next baseline, less those of processes that had
    /// exited before the read (reported for the last time now), which it returns: the kernel
    /// maps drop them so they do not fill up. (TIME_WAIT of their orphaned sockets recreates
    /// entries later.)
    fn next_baseline(
        &mut self,
        gone_before: &BTreeSet<u32>,
        mut cur: Snapshot,
        mut cur_dest: BTreeMap<DestKey, u64>,
    ) -> (Vec<CountKey>, Vec<DestKey>) {
        let dead: Vec<_> = cur.keys().filter(|k| gone_before.contains(&k.tgid)).copied().collect();
        let dead_dest: Vec<_> = cur_dest.keys().filter(|k| gone_before.contains(&k.tgid)).copied().collect();
        for k in &dead {
            cur.remove(k);
        }
        for k in &dead_dest {
            cur_dest.remove(k);
        }
        self.prev = cur;
        self.prev_dest = cur_dest;
        (dead, dead_dest)
    }
}

/// In the set_state fallback, tw-bucket overflows are inferred: correct them per namespace
/// with the namespace's exact TcpExt TCPTimeWaitOverflow growth. (fexit and kprobes see
/// inet_twsk_alloc's own result: "correcting" those with the TcpExt growth, read at another
/// moment than the counters, would move real overflows into TIME_WAIT.) A process that has
/// exited is placed by the namespace the kernel recorded with its overflows.
fn reconcile_tw(
    host: &mut dyn Host,
    deltas: &mut BTreeMap<u32, Counts>,
    by_ns: &BTreeMap<u32, NsDelta>,
    carry: &mut BTreeMap<u32, u64>,
) {
    let mut per_ns: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (&pid, c) in deltas.iter() {
        if pid != UNATTRIBUTED && (c.tw_overflows > 0 || c.time_wait_created > 0) {
            let ns = host.netns(pid).or_else(|| host.tw_table(pid).map(|t| t.netns).filter(|&n| n != 0));
            if let Some(ns) = ns {
                per_ns.entry(ns).or_default().push(pid);
            }
        }
    }
    // Only namespaces polled now carry anything on: a carry is one poll old at most.
    let old = std::mem::take(carry);
    for (&ns, d) in by_ns {
        let growth = d.get("TCPTimeWaitOverflow").copied().unwrap_or(0);
        let carried = old.get(&ns).copied().unwrap_or(0);
        let pids = per_ns.remove(&ns).unwrap_or_default();
        let mut pairs: Vec<(u64, u64)> =
            pids.iter().map(|p| (deltas[p].time_wait_created, deltas[p].tw_overflows)).collect();
        let left = listeners::reconcile_tw_overflows(&mut pairs, carried, growth);
        if left > 0 {
            carry.insert(ns, left);
        }
        for (pid, (tw, ovf)) in pids.iter().zip(pairs) {
            if let Some(c) = deltas.get_mut(pid) {
                c.time_wait_created = tw;
                c.tw_overflows = ovf;
            }
        }
    }
}

#[cfg(test)]
mod tests;
