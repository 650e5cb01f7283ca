//! Warnings: limits not reached yet that the current trend will reach (TIME_WAIT churn
//! exhausting a destination's ports, open fds growing toward RLIMIT_NOFILE), kept while the
//! trend holds, resolved with the reason it stopped.

use std::time::{Duration, SystemTime};

use super::super::*;
use super::{Active, Engine, Key, PortKey};
use crate::diagnosis::check::tw_reuse_applies;

/// A listener's accept queue must stay near full this long to be warned about.
const QUEUE_SUSTAINED_S: f64 = 3.0;

impl Engine {
    pub(super) fn predict_time_wait(
        &mut self,
        w: &Window,
        now: SystemTime,
        ev: &mut dyn Evidence,
        seen: &mut Vec<Key>,
    ) {
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
            // TIME_WAIT ports toward this destination stay taken for 60 s: at this rate the
            // range fills when rate × 60 exceeds it, unless connect() may reuse them. Decided
            // on the sysctls alone: the sockets are read (a walk of every TCP socket of the
            // host) only for a prediction.
            let Ok(limits) = ev.port_limits(pid, dest.netns) else { continue };
            let Some(room) = PortUse::of(&limits, &dest) else { continue };
            if tw_reuse_applies(limits.tcp_tw_reuse, dest.addr) || rate * TIME_WAIT_S < room.usable as f64 {
                continue;
            }
            let Ok(net) = ev.net(pid, dest.netns) else { continue };
            let Some(u) = PortUse::of(&net, &dest) else { continue };
            let key = (Cause::TimeWaitPressure, pid, Some(dest.clone()));
            let verdict = time_wait_pressure(pid, ev.comm(pid), now, &dest, rate, &u, &net);
            self.warn(key, verdict, now, seen);
        }
    }

    /// Warns about processes whose open fds grow toward their limit (not those already
    /// failing with EMFILE: their fd_limit verdict says it all).
    pub(super) fn predict_fds(&mut self, w: &Window, now: SystemTime, ev: &mut dyn Evidence, seen: &mut Vec<Key>) {
        self.fd_trend.observe(now, &w.fd_readings);
        for pid in self.fd_trend.pids() {
            let Some(f) = self.fd_trend.forecast(pid) else { continue };
            if self.is_active(pid, Cause::FdLimit) {
                continue;
            }
            let key = (Cause::FdPressure, pid, None);
            let since = self.active.get(&key).map_or(now, |a| a.verdict.since);
            let verdict = fd_pressure(pid, ev.comm(pid), since, &f, ev.nofile(pid).hard);
            self.warn(key, verdict, now, seen);
        }
    }

    /// Warns about namespaces whose TIME_WAIT table fills toward tcp_max_tw_buckets (not
    /// those already refusing TIME_WAITs: tw_buckets says it), charged to the process that
    /// created most TIME_WAITs there this interval (or the one charged before).
    pub(super) fn predict_tw_tables(
        &mut self,
        w: &Window,
        now: SystemTime,
        ev: &mut dyn Evidence,
        seen: &mut Vec<Key>,
    ) {
        let readings: Vec<(u32, u64, u64)> = w.tw_tables.iter().map(|(&ns, &(tw, max))| (ns, tw, max)).collect();
        self.tw_trend.observe_values(now, &readings);
        for &ns in w.tw_tables.keys() {
            let Some(f) = self.tw_trend.forecast(ns) else { continue };
            // A TIME_WAIT lasts 60 s: below max / 60 a second the table levels off before it
            // is full, however it grows in the first minute.
            if f.rate_per_s * TIME_WAIT_S < f.limit as f64 {
                continue;
            }
            let creator = busiest_in(w, ev, ns, |c| c.time_wait_created).map(|(pid, _)| pid);
            let Some(pid) = creator.or_else(|| self.tw_charged.get(&ns).copied()) else { continue };
            self.tw_charged.insert(ns, pid);
            if self.is_active(pid, Cause::TwBuckets) {
                continue;
            }
            let key = (Cause::TwTablePressure, pid, None);
            let since = self.active.get(&key).map_or(now, |a| a.verdict.since);
            let verdict = tw_table_pressure(pid, ev.comm(pid), since, ns, &f);
            self.warn(key, verdict, now, seen);
        }
    }

    /// Warns about listeners whose accept queue stays at least 4/5 full for 3 s (every poll):
    /// not a passing burst. Not those already dropping (accept_queue says it).
    pub(super) fn predict_queues(&mut self, w: &Window, now: SystemTime, ev: &mut dyn Evidence, seen: &mut Vec<Key>) {
        let busy: std::collections::BTreeSet<(u32, u32)> =
            w.busy_listeners.iter().map(|(_, l)| (l.netns, l.inode)).collect();
        self.queue_busy.retain(|k, _| busy.contains(k));
        for (pid, l) in &w.busy_listeners {
            let since = *self.queue_busy.entry((l.netns, l.inode)).or_insert(now);
            let for_s = now.duration_since(since).unwrap_or_default().as_secs_f64();
            let dest = Dest { netns: l.netns, addr: l.addr, port: l.port };
            if for_s < QUEUE_SUSTAINED_S || self.active.contains_key(&(Cause::AcceptQueue, *pid, Some(dest.clone()))) {
                continue;
            }
            let key = (Cause::AcceptQueuePressure, *pid, Some(dest));
            let verdict = accept_queue_pressure(*pid, ev.comm(*pid), since, l, for_s);
            self.warn(key, verdict, now, seen);
        }
    }

    /// Warns about destinations whose ports in use (every state) grow toward the usable range,
    /// charged to the process holding one of those sockets (or the one creating TIME_WAITs
    /// toward it). Not those already failing (ephemeral_ports) nor those whose TIME_WAIT churn
    /// is already predicted to exhaust them (time_wait_pressure says more).
    pub(super) fn predict_ports(&mut self, w: &Window, now: SystemTime, ev: &mut dyn Evidence, seen: &mut Vec<Key>) {
        let key_of = |r: &PortReading| (r.dest.netns, r.dest.addr, r.dest.port);
        let readings: Vec<(PortKey, u64, u64)> =
            w.port_readings.iter().map(|r| (key_of(r), r.in_use, r.usable)).collect();
        self.port_trend.observe_values(now, &readings);
        self.port_charged.retain(|k, _| readings.iter().any(|r| r.0 == *k));
        for r in &w.port_readings {
            let k = key_of(r);
            let Some(f) = self.port_trend.forecast(k) else { continue };
            let creator = || {
                w.time_waits.iter().filter(|((_, d), _)| *d == r.dest).max_by_key(|(_, n)| **n).map(|((p, _), _)| *p)
            };
            let pid = match self.port_charged.get(&k).copied().filter(|p| ev.alive(*p)) {
                Some(p) => Some(p),
                None => r.inode.and_then(|i| ev.socket_owner(i)).or_else(creator),
            };
            let Some(pid) = pid else { continue };
            self.port_charged.insert(k, pid);
            let dest = Some(r.dest.clone());
            if self.active.contains_key(&(Cause::EphemeralPorts, pid, dest.clone()))
                || self.active.contains_key(&(Cause::BindPressure, pid, None))
                || self.is_active(pid, Cause::BindHoarding)
                || self.active.contains_key(&(Cause::TimeWaitPressure, pid, dest.clone()))
            {
                continue;
            }
            let key = (Cause::PortPressure, pid, dest);
            let since = self.active.get(&key).map_or(now, |a| a.verdict.since);
            let verdict = port_pressure(pid, ev.comm(pid), since, r, &f);
            self.warn(key, verdict, now, seen);
        }
    }

    /// Keeps a warning (a prediction) active with its latest figures.
    pub(super) fn warn(&mut self, key: Key, verdict: Verdict, now: SystemTime, seen: &mut Vec<Key>) {
        // The failures it predicts have begun: their verdict says it all (a TIME_WAIT rate
        // can stay high while connect() fails, and would warn again each interval). Left
        // unseen, the warning resolves in this very tick (`report`: realized).
        if key.0.realized_by().is_some_and(|f| self.active.contains_key(&(f, key.1, key.2.clone()))) {
            return;
        }
        match self.active.get_mut(&key) {
            Some(a) => {
                a.last_failure = now;
                a.verdict.head = verdict.head;
                a.verdict.evidence = verdict.evidence;
            }
            None => {
                self.active.insert(
                    key.clone(),
                    Active { verdict, last_failure: now, last_emit: SystemTime::UNIX_EPOCH, emitted_failures: 0 },
                );
            }
        }
        seen.push(key);
    }

    /// Why the warning `key` ended.
    pub(super) fn calm_reason(&self, key: &Key, v: &Verdict, now: SystemTime, ev: &mut dyn Evidence) -> String {
        let (cause, pid, dest) = key;
        match cause {
            Cause::FdPressure => {
                let limit = match &v.evidence {
                    Proof::FdPressure(p) => p.nofile_soft,
                    _ => 0,
                };
                let failing = self.is_active(*pid, Cause::FdLimit);
                fd_calm_reason(&v.comm, *pid, &self.fd_trend.calm(*pid, limit), failing)
            }
            Cause::TwTablePressure => {
                let (ns, limit) = match &v.evidence {
                    Proof::TwTablePressure(p) => (p.netns, p.tcp_max_tw_buckets),
                    _ => (0, 0),
                };
                let calm = if self.is_active(*pid, Cause::TwBuckets) {
                    FdCalm::Reached { limit }
                } else {
                    self.tw_trend.calm(ns, limit)
                };
                tw_table_calm_reason(&v.comm, *pid, &calm)
            }
            Cause::ConntrackPressure | Cause::TcpMemPressure | Cause::BindPressure => self.table_calm_reason(key, v),
            Cause::PortPressure => {
                let (usable, key) = match (&v.evidence, dest) {
                    (Proof::PortPressure(p), Some(d)) => (p.usable, Some((d.netns, d.addr, d.port))),
                    _ => (0, None),
                };
                let calm = key.map_or(FdCalm::Gone, |k| self.port_trend.calm(k, usable));
                let failing = self.active.contains_key(&(Cause::EphemeralPorts, *pid, dest.clone()));
                let endpoint = dest.as_ref().map(Dest::endpoint).unwrap_or_default();
                port_calm_reason(&v.comm, *pid, &endpoint, &calm, failing)
            }
            Cause::AcceptQueuePressure => {
                let listener = dest.as_ref().map(Dest::endpoint).unwrap_or_default();
                if self.active.contains_key(&(Cause::AcceptQueue, *pid, dest.clone())) {
                    format!("the queue of {listener} overflowed: drops began (see the accept_queue verdict)")
                } else {
                    format!(
                        "the accept queue of {}[{pid}]'s listener {listener} drained below 4/5 of its backlog",
                        v.comm
                    )
                }
            }
            Cause::TimeWaitPressure if self.active.contains_key(&(Cause::EphemeralPorts, *pid, dest.clone())) => {
                let endpoint = dest.as_ref().map(Dest::endpoint).unwrap_or_default();
                port_calm_reason(&v.comm, *pid, &endpoint, &FdCalm::Gone, true)
            }
            _ if !ev.alive(*pid) => format!("{}[{pid}] has exited", v.comm),
            _ => {
                // Over the quiet period that ended the warning (intervals without TIME_WAIT
                // leave no entry).
                let recent = |t: &SystemTime| now.duration_since(*t).unwrap_or_default() <= self.quiet;
                let n: u64 = dest
                    .as_ref()
                    .and_then(|d| self.tw_history.get(&(*pid, d.clone())))
                    .map(|h| h.iter().filter(|(t, ..)| recent(t)).map(|(_, n, _)| n).sum())
                    .unwrap_or(0);
                let rate = n as f64 / self.quiet.as_secs_f64();
                format!(
                    "{}[{pid}] created {rate:.0} TIME_WAIT sockets/s toward {} over the last {:.0} s: no longer enough \
                     to exhaust its ports (or tcp_tw_reuse now applies, or the range was widened)",
                    v.comm,
                    dest.as_ref().map(Dest::endpoint).unwrap_or_default(),
                    self.quiet.as_secs_f64()
                )
            }
        }
    }
}
