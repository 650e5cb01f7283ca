//! Warnings for kernel tables filling toward their limit: conntrack entries per namespace,
//! the machine's TCP memory.

use std::time::SystemTime;

use super::super::*;
use super::{busiest_in, Engine, Key};

/// How long a closed TCP connection stays tracked by default.
const CONNTRACK_TIME_WAIT_S: f64 = 120.0;

impl Engine {
    /// Conntrack entries of a watched namespace growing toward nf_conntrack_max, charged to
    /// the process that attempted the most connections there (or the one charged before);
    /// the TCP memory of the machine growing toward tcp_mem's pressure threshold, charged to
    /// nobody in particular (the memory is every socket's).
    pub(super) fn predict_tables(&mut self, w: &Window, now: SystemTime, ev: &mut dyn Evidence, seen: &mut Vec<Key>) {
        let readings: Vec<(u32, u64, u64)> = w.conntrack_tables.iter().map(|(&ns, &(n, max))| (ns, n, max)).collect();
        self.ct_trend.observe_values(now, &readings);
        for &ns in w.conntrack_tables.keys() {
            let Some(f) = self.ct_trend.forecast(ns) else { continue };
            // Entries of closed connections expire after 120 s
            // (nf_conntrack_tcp_timeout_time_wait): a table that fills later than that at
            // this rate may level off first, as churn replaces expiring entries.
            if f.seconds_left > CONNTRACK_TIME_WAIT_S {
                continue;
            }
            let busiest = busiest_in(w, ev, ns, |c| c.connect_attempts).map(|(pid, _)| pid);
            let pid = busiest
                .or_else(|| self.ct_charged.get(&ns).copied().filter(|p| ev.alive(*p)))
                .unwrap_or(NOBODY_IN_PARTICULAR);
            self.ct_charged.insert(ns, pid);
            if self.is_active(pid, Cause::ConntrackFull) {
                continue;
            }
            let key = (Cause::ConntrackPressure, pid, None);
            let since = self.active.get(&key).map_or(now, |a| a.verdict.since);
            let comm = if pid == NOBODY_IN_PARTICULAR { format!("(namespace {ns})") } else { ev.comm(pid) };
            let verdict = conntrack_pressure(pid, comm, since, ns, &f);
            self.warn(key, verdict, now, seen);
        }
        if let Some((pages, pressure, page_size)) = w.tcp_mem_use {
            self.tcp_mem_trend.observe_values(now, &[(0, pages, pressure)]);
            if let Some(f) = self.tcp_mem_trend.forecast(0) {
                let key = (Cause::TcpMemPressure, NOBODY_IN_PARTICULAR, None);
                if !self.active.keys().any(|(c, ..)| *c == Cause::TcpMem) {
                    let since = self.active.get(&key).map_or(now, |a| a.verdict.since);
                    let verdict =
                        tcp_mem_pressure(NOBODY_IN_PARTICULAR, "(all TCP sockets)".into(), since, &f, page_size);
                    self.warn(key, verdict, now, seen);
                }
            }
        }
    }

    /// The ports in use of a namespace growing toward its usable range, for a process there
    /// that binds before connect() (the one with the most such connects this interval, or
    /// the one charged before): its bind() calls fail first.
    pub(super) fn predict_bind(&mut self, w: &Window, now: SystemTime, ev: &mut dyn Evidence, seen: &mut Vec<Key>) {
        let readings: Vec<(u32, u64, u64)> = w.range_use.iter().map(|(&ns, &(n, usable))| (ns, n, usable)).collect();
        self.range_trend.observe_values(now, &readings);
        for &ns in w.range_use.keys() {
            if let Some((pid, n)) = busiest_in(w, ev, ns, |c| c.bound_connects) {
                *self.binders.entry((ns, pid)).or_default() += n;
            }
        }
        self.binders.retain(|(_, pid), _| ev.alive(*pid));
        for &ns in w.range_use.keys() {
            let Some(f) = self.range_trend.forecast(ns) else { continue };
            let Some((&(_, pid), &bound)) = self.binders.iter().filter(|((n, _), _)| *n == ns).max_by_key(|(_, b)| **b)
            else {
                continue;
            };
            if self.is_active(pid, Cause::BindHoarding) {
                continue;
            }
            let key = (Cause::BindPressure, pid, None);
            let since = self.active.get(&key).map_or(now, |a| a.verdict.since);
            let verdict = bind_pressure(pid, ev.comm(pid), since, ns, bound, &f);
            self.warn(key, verdict, now, seen);
        }
    }

    /// Why a table warning ended.
    pub(super) fn table_calm_reason(&self, key: &Key, v: &Verdict) -> String {
        let (cause, pid, _) = key;
        let (limit, ns) = match &v.evidence {
            Proof::TablePressure(p) => (p.limit, p.netns),
            _ => (0, None),
        };
        match cause {
            Cause::ConntrackPressure => {
                let ns = ns.unwrap_or(0);
                if self.is_active(*pid, Cause::ConntrackFull) {
                    return "the table is full: packets are dropped now (see the conntrack_full verdict)".into();
                }
                table_calm_reason(
                    &format!("the conntrack table of namespace {ns}"),
                    "net.netfilter.nf_conntrack_max",
                    &self.ct_trend.calm(ns, limit),
                )
            }
            Cause::BindPressure => {
                if self.is_active(*pid, Cause::BindHoarding) {
                    return "the ports ran out: bind() failures began (see the bind_hoarding verdict)".into();
                }
                let ns = ns.unwrap_or(0);
                table_calm_reason(
                    &format!("the ports in use of namespace {ns}"),
                    "the usable range",
                    &self.range_trend.calm(ns, limit),
                )
            }
            _ => {
                if self.active.keys().any(|(c, ..)| *c == Cause::TcpMem) {
                    return "TCP memory ran out: allocations fail now (see the tcp_mem verdict)".into();
                }
                table_calm_reason("TCP memory", "tcp_mem's pressure threshold", &self.tcp_mem_trend.calm(0, limit))
            }
        }
    }
}
