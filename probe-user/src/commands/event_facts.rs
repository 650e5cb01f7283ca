//! What failure events tell that counters do not (when a failure began, the address refused,
//! the evidence read at that moment), held until the interval whose counts include those
//! failures is diagnosed.
//!
//! The kernel submits a failure's event before it counts it, and `watch` reads the counters
//! before it drains the events: so every failure in an interval's counts has its event in
//! hand. An event drained after the read may belong to the next read's counts; its facts
//! then wait one interval, and go if no failure used them.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use crate::{
    diagnosis::verdict::{Cause, Engine, Nofile, Window},
    domain::net::NetFacts,
};

/// Evidence read when an event arrived, by namespace, process, and for the machine.
#[derive(Debug, Default)]
pub struct EarlyEvidence {
    pub net: BTreeMap<u32, Result<NetFacts, String>>,
    pub nofile: BTreeMap<u32, Nofile>,
    /// Socket fds of the processes in `nofile`, read at the same moment.
    pub sockets: BTreeMap<u32, Option<u64>>,
    pub file_nr: Option<Option<(u64, u64)>>,
}

#[derive(Debug, Default)]
pub struct EventFacts {
    first_seen: BTreeMap<(u32, Cause), SystemTime>,
    addrs: BTreeMap<u32, BTreeSet<String>>,
    carried_first_seen: BTreeMap<(u32, Cause), SystemTime>,
    carried_addrs: BTreeMap<u32, BTreeSet<String>>,
    /// Evidence taken at events since the last diagnosis, plus what was carried in.
    pub early: EarlyEvidence,
    /// Which of `early` was carried in (it is not carried again).
    carried_net: BTreeSet<u32>,
    carried_nofile: BTreeSet<u32>,
    carried_file_nr: bool,
}

/// The keys of `early` taken at this interval's events, for `settle`.
pub struct Fresh {
    first_seen: BTreeMap<(u32, Cause), SystemTime>,
    addrs: BTreeMap<u32, BTreeSet<String>>,
    net: BTreeSet<u32>,
    nofile: BTreeSet<u32>,
    file_nr: bool,
}

impl EventFacts {
    /// A failure event of `cause` for `pid` at `ts`; true when it is the process's first of
    /// that cause since the last diagnosis (the moment to take evidence).
    pub fn failure(&mut self, pid: u32, cause: Cause, ts: SystemTime) -> bool {
        let key = (pid, cause);
        let first = !self.first_seen.contains_key(&key);
        let since = self.first_seen.entry(key).or_insert(ts);
        *since = (*since).min(ts);
        first
    }

    /// An address (ip:port) that bind() or connect() of `pid` was refused.
    pub fn unavailable_addr(&mut self, pid: u32, addr: String) {
        self.addrs.entry(pid).or_default().insert(addr);
    }

    /// Moves the facts into the interval's window (merged with those carried in) and hands
    /// out the early evidence as the diagnosis's cache.
    pub fn fill(&mut self, w: &mut Window) -> (Fresh, EarlyEvidence) {
        let first_seen = std::mem::take(&mut self.first_seen);
        let addrs = std::mem::take(&mut self.addrs);
        w.first_seen = std::mem::take(&mut self.carried_first_seen);
        for (k, t) in &first_seen {
            let e = w.first_seen.entry(*k).or_insert(*t);
            *e = (*e).min(*t);
        }
        w.unavailable_addrs = std::mem::take(&mut self.carried_addrs);
        for (pid, a) in &addrs {
            w.unavailable_addrs.entry(*pid).or_default().extend(a.iter().cloned());
        }
        let early = std::mem::take(&mut self.early);
        let fresh = Fresh {
            first_seen,
            addrs,
            net: early.net.keys().filter(|ns| !self.carried_net.contains(ns)).copied().collect(),
            nofile: early.nofile.keys().filter(|p| !self.carried_nofile.contains(p)).copied().collect(),
            file_nr: early.file_nr.is_some() && !self.carried_file_nr,
        };
        (fresh, early)
    }

    /// After the diagnosis of `w`: keeps for one more interval what this interval's events
    /// brought and no failure of `w` used; `cache` is the evidence `fill` handed out (with
    /// whatever the diagnosis read meanwhile).
    pub fn settle(&mut self, engine: &Engine, w: &Window, fresh: Fresh, cache: EarlyEvidence) {
        let used_ns: BTreeSet<u32> = w.port_failures.keys().map(|(_, d)| d.netns).collect();
        let net: BTreeMap<_, _> =
            cache.net.into_iter().filter(|(ns, _)| fresh.net.contains(ns) && !used_ns.contains(ns)).collect();
        let nofile: BTreeMap<_, _> = cache
            .nofile
            .into_iter()
            .filter(|(pid, _)| fresh.nofile.contains(pid) && !engine.failed_last_tick(*pid, Cause::FdLimit))
            .collect();
        let file_max_failed = w.counts.values().any(|c| c.enfile > 0);
        let file_nr = if fresh.file_nr && !file_max_failed { cache.file_nr } else { None };
        self.carried_net = net.keys().copied().collect();
        self.carried_nofile = nofile.keys().copied().collect();
        self.carried_file_nr = file_nr.is_some();
        let sockets = cache.sockets.into_iter().filter(|(pid, _)| nofile.contains_key(pid)).collect();
        self.early = EarlyEvidence { net, nofile, sockets, file_nr };
        self.carried_first_seen = unused(fresh.first_seen, |(pid, cause)| engine.failed_last_tick(*pid, *cause));
        self.carried_addrs = unused(fresh.addrs, |pid| engine.failed_last_tick(*pid, Cause::AddressUnavailable));
    }
}

/// The entries of `fresh` that `used` says no failure used.
fn unused<K: Ord, V>(fresh: BTreeMap<K, V>, used: impl Fn(&K) -> bool) -> BTreeMap<K, V> {
    fresh.into_iter().filter(|(k, _)| !used(k)).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{diagnosis::verdict::fake::FakeEvidence, domain::model::Counts};

    /// Facts that make no verdict say more than its counts.
    fn no_evidence() -> FakeEvidence {
        FakeEvidence {
            comm: "app",
            nofile: Nofile { soft: Some(64), hard: Some(64), open: Some(64) },
            file_nr: None,
            netns: None,
            tcp_mem: Default::default(),
            ..FakeEvidence::new(Err("none".into()))
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
    }

    /// One diagnosis step as `watch` does it: fill the window, tick, settle.
    fn step(f: &mut EventFacts, e: &mut Engine, counts: &[(u32, Counts)], t: u64) -> Window {
        let mut w = Window { now: Some(at(t)), interval_s: 1.0, ..Default::default() };
        w.counts = counts.iter().cloned().collect();
        let (fresh, cache) = f.fill(&mut w);
        e.tick(&w, &mut no_evidence());
        f.settle(e, &w, fresh, cache);
        w
    }

    #[test]
    fn an_event_ahead_of_its_count_waits_one_interval() {
        let mut f = EventFacts::default();
        let mut e = Engine::new(Duration::from_secs(5));
        // The event came in after the counters were read: no EMFILE in this interval's counts.
        assert!(f.failure(7, Cause::FdLimit, at(0)));
        assert!(!f.failure(7, Cause::FdLimit, at(1)));
        f.early.nofile.insert(7, Nofile { soft: Some(64), hard: Some(64), open: Some(64) });
        f.unavailable_addr(8, "192.0.2.1:80".into());
        let w = step(&mut f, &mut e, &[], 1);
        assert!(w.first_seen.contains_key(&(7, Cause::FdLimit)));
        // The next read holds the failure: its first event's time and evidence are there.
        let emfile = Counts { emfile: 1, ..Default::default() };
        let mut w = Window { now: Some(at(2)), interval_s: 1.0, ..Default::default() };
        w.counts.insert(7, emfile.clone());
        let (fresh, cache) = f.fill(&mut w);
        assert_eq!(w.first_seen.get(&(7, Cause::FdLimit)), Some(&at(0)));
        assert!(cache.nofile.contains_key(&7));
        assert_eq!(w.unavailable_addrs[&8].len(), 1);
        e.tick(&w, &mut no_evidence());
        f.settle(&e, &w, fresh, cache);
        // Used: gone. Carried but unused (pid 8 never failed): gone after its one interval.
        let w = step(&mut f, &mut e, &[], 3);
        assert!(w.first_seen.is_empty() && w.unavailable_addrs.is_empty(), "{w:?}");
        assert!(f.early.nofile.is_empty());
    }

    #[test]
    fn facts_used_by_their_interval_are_not_carried() {
        let mut f = EventFacts::default();
        let mut e = Engine::new(Duration::from_secs(5));
        f.failure(7, Cause::FdLimit, at(0));
        f.early.nofile.insert(7, Nofile { soft: Some(64), hard: Some(64), open: Some(64) });
        step(&mut f, &mut e, &[(7, Counts { emfile: 3, ..Default::default() })], 1);
        let w = step(&mut f, &mut e, &[], 2);
        assert!(w.first_seen.is_empty());
        assert!(f.early.nofile.is_empty());
    }
}
