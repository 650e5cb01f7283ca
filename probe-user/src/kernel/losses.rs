//! What the programs could not count, read back for `status`: the `STATS` slots, runs the
//! kernel skipped, connect returns never seen, socket owners the LRU evicted.

use std::{cell::Cell, collections::BTreeMap, os::fd::AsFd, time::Instant};

use anyhow::{Context as _, Result};
use aya::maps::PerCpuArray;
use probe_common::config::stat;

use super::{bpf_info, probe::Probe};
use crate::domain::status::Losses;

/// Counting the live entries of a nearly full `OWNERS` map takes one BPF_MAP_GET_NEXT_KEY
/// per entry (~50 ms for 131,072): it is repeated at most once per this many times its own
/// duration, so it stays under 1% of a core.
const RECOUNT_COST_FACTOR: u32 = 100;

/// Socket owners the LRU evicted: created − removed − live (an evicted entry is never
/// removed, so the difference stays exact once counted). Counted only once the map can have
/// evicted, i.e. the owners outstanding came within the LRU's per-CPU free lists of its
/// capacity (bpf_common_lru_pop_free shrinks the lists when a CPU finds no free node).
pub(super) struct OwnersEvicted {
    capacity: u64,
    /// The map came near its capacity at least once: from then on it is recounted.
    near_full: Cell<bool>,
    last: Cell<Option<Recount>>,
}

/// The last count: when the next one may run, the (created, removed) it saw, its result.
#[derive(Clone, Copy)]
struct Recount {
    next: Instant,
    seen: (u64, u64),
    evicted: u64,
}

impl OwnersEvicted {
    pub(super) fn new(capacity: u32) -> OwnersEvicted {
        OwnersEvicted { capacity: capacity as u64, near_full: Cell::new(false), last: Cell::new(None) }
    }

    /// Whether `outstanding` owners (created − removed) could have made the map evict.
    pub(super) fn may_evict(outstanding: u64, capacity: u64, cpus: u64) -> bool {
        // The LRU keeps up to 128 free nodes per CPU (LOCAL_FREE_TARGET) besides the global
        // list; twice that is a safe margin.
        outstanding + 256 * (cpus + 1) >= capacity
    }
}

impl Probe {
    /// The losses for the last status of a run: owners recounted now whatever the throttle
    /// (under emulation one count can hold the next off for seconds).
    pub fn final_losses(&self) -> Result<Losses> {
        if let Some(mut r) = self.owners_evicted.last.get() {
            r.next = Instant::now();
            r.seen = (u64::MAX, u64::MAX);
            self.owners_evicted.last.set(Some(r));
        }
        self.losses()
    }

    /// Socket owners the LRU evicted so far (see [`OwnersEvicted`]).
    fn owners_evicted(&self, created: u64, removed: u64) -> u64 {
        let outstanding = created.saturating_sub(removed);
        let e = &self.owners_evicted;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        if !e.near_full.get() && !OwnersEvicted::may_evict(outstanding, e.capacity, cpus) {
            return 0;
        }
        e.near_full.set(true);
        if let Some(r) = e.last.get() {
            if r.seen == (created, removed) || Instant::now() < r.next {
                return r.evicted;
            }
        }
        let started = Instant::now();
        // A key removed while the walk stands on it makes the kernel restart from the first
        // key (htab_map_get_next_key): keys are deduplicated and the walk bounded.
        let live = self.ebpf.map("OWNERS").and_then(|m| {
            aya::maps::HashMap::<_, u64, probe_common::sock::SockOwner>::try_from(m).ok().map(|h| {
                let walk = h.keys().filter_map(|k| k.ok()).take(2 * e.capacity as usize);
                walk.collect::<std::collections::HashSet<u64>>().len()
            })
        });
        let n = live.map_or(0, |live| outstanding.saturating_sub(live as u64));
        let next = Instant::now() + started.elapsed() * RECOUNT_COST_FACTOR;
        e.last.set(Some(Recount { next, seen: (created, removed), evicted: n }));
        n
    }

    pub fn losses(&self) -> Result<Losses> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map("STATS").context("STATS map")?)?;
        let get = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
        Ok(Losses {
            dropped_events: get(stat::EVENTS_DROPPED)?,
            counter_map_full: get(stat::COUNTER_MAP_FULL)?,
            owner_map_full: get(stat::OWNER_MAP_FULL)?,
            inflight_map_full: get(stat::INFLIGHT_MAP_FULL)?,
            connect_returns_lost: get(stat::CONNECT_RETURN_LOST)? + self.returns_swept,
            skipped_runs: self.skipped_runs(get(stat::SET_STATE_RESCUED)?),
            owners_evicted: self.owners_evicted(get(stat::OWNER_CREATED)?, get(stat::OWNER_REMOVED)?),
        })
    }

    /// Drops the in-flight connect records of threads that have exited: a thread leaves
    /// connect() through its return hook whatever ends the call (even a fatal signal), so
    /// such a record is a return the kernel did not show (counted in `losses`).
    pub fn sweep_inflight(&mut self) -> Result<()> {
        let mut map: aya::maps::HashMap<_, u32, probe_common::sock::Inflight> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("INFLIGHT").context("INFLIGHT map")?)?;
        let gone: Vec<u32> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|tid| !std::path::Path::new(&format!("/proc/{tid}")).exists())
            .collect();
        for tid in gone {
            // Recounted only if the removal is the one that took it out.
            if map.remove(&tid).is_ok() {
                self.returns_swept += 1;
            }
        }
        Ok(())
    }

    /// Per program, the runs the kernel skipped or lost: BPF recursion misses, plus for
    /// kprobes the hits the kprobe layer lost (a kretprobe without a free instance). The
    /// set_state program's skips that its rescue program handled (`rescued`) are not lost, and
    /// the rescue program's own skips never are (the first program ran for those events).
    fn skipped_runs(&self, rescued: u64) -> BTreeMap<String, u64> {
        let progs: Vec<(String, u32, u64)> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let id = p.info().ok()?.id();
                let fd = p.fd().ok()?;
                Some((name.to_string(), id, bpf_info::recursion_misses(fd.as_fd(), id).unwrap_or(0)))
            })
            .collect();
        let kprobes: Vec<u32> =
            progs.iter().filter(|(n, ..)| n.contains("kprobe") || n.contains("kretprobe")).map(|p| p.1).collect();
        let missed = if kprobes.is_empty() { Vec::new() } else { bpf_info::kprobe_missed(&kprobes) };
        progs
            .into_iter()
            .filter(|(name, ..)| name != "set_state_btf_rescue")
            .map(|(name, id, n)| {
                let n = if name == "set_state_btf" { n.saturating_sub(rescued) } else { n };
                (name, n + missed.iter().filter(|m| m.0 == id).map(|m| m.1).sum::<u64>())
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::OwnersEvicted;

    #[test]
    fn owners_are_recounted_only_near_capacity() {
        assert!(!OwnersEvicted::may_evict(0, 131_072, 2));
        assert!(!OwnersEvicted::may_evict(100_000, 131_072, 2));
        assert!(OwnersEvicted::may_evict(131_072 - 768, 131_072, 2));
        assert!(OwnersEvicted::may_evict(200_000, 131_072, 64));
    }
}
