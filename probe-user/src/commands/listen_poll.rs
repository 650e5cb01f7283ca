//! Accept and SYN queue drops come from the kernel's own counters, polled each interval in
//! every namespace conntrace watches (sock_diag listeners with their `sk_drops`, and the
//! namespace's TcpExt), and are charged to the process holding the listener.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Result;
use probe_common::counters::UNATTRIBUTED;

use crate::domain::net::PortReading;
use crate::system::{facts, listeners, netdiag, procinfo};

/// One poll of the watched namespaces: listeners that dropped (with their owner and their
/// namespace's counter growth), and each namespace's counter growth.
pub struct ListenPoll {
    /// (owner pid, the listener, its namespace's counter growth).
    pub dropped: Vec<(u32, listeners::ListenerDelta, listeners::NsDelta)>,
    pub by_ns: BTreeMap<u32, listeners::NsDelta>,
    /// Each namespace's TIME_WAIT table: (sockets in it, tcp_max_tw_buckets).
    pub tw_tables: BTreeMap<u32, (u64, u64)>,
    /// (owner pid, listener) of the listeners whose accept queue is at least 4/5 full now.
    pub busy: Vec<(u32, listeners::ListenerDelta)>,
    /// Ports in use toward the busiest destinations of the namespaces walked this poll.
    pub ports: Vec<PortReading>,
    /// Distinct ports of the range in use and the usable count, per namespace walked.
    pub range_use: BTreeMap<u32, (u64, u64)>,
    /// Each watched namespace's conntrack table: (entries, nf_conntrack_max).
    pub conntrack: BTreeMap<u32, (u64, u64)>,
    /// TCP memory of the machine: (pages in use, tcp_mem's pressure threshold, page size).
    pub tcp_mem: Option<(u64, u64, u64)>,
}

/// The share of one CPU the walk for ports in use may take: after a walk that took `d`, the
/// next one in that namespace waits `d × PORT_WALK_SPACING` (a walk reads every socket of the
/// host's established hash: ~66 ms at 100,000 sockets, so one every ~7 s there).
const PORT_WALK_SPACING: u32 = 100;

/// Listeners and TcpExt counters of the calling thread's network namespace.
fn read_listen_counters() -> (Result<Vec<netdiag::TcpSocket>>, BTreeMap<String, u64>) {
    (netdiag::listeners(), crate::system::facts::read_tcp_ext())
}

/// The same, with the namespace's TIME_WAIT table and conntrack table (for the warnings).
type Counters = (Result<Vec<netdiag::TcpSocket>>, BTreeMap<String, u64>, Option<(u64, u64)>, Option<(u64, u64)>);

fn read_counters() -> Counters {
    let (socks, ext) = read_listen_counters();
    (socks, ext, facts::read_tw_table(), facts::read_conntrack_count())
}

#[derive(Default)]
pub struct ListenPoller {
    /// Listener drop counters of the previous poll.
    tracker: listeners::Tracker,
    /// Namespaces polled for listener drops, each with a process to enter it through.
    netns: BTreeMap<u32, u32>,
    /// Owner of each listener socket (namespace, inode), once looked up.
    owner: BTreeMap<(u32, u32), Option<u32>>,
    /// When each namespace's ports may be walked again (see `PORT_WALK_SPACING`).
    port_walk_at: BTreeMap<u32, Instant>,
}

impl ListenPoller {
    /// Baseline of the listen counters of every namespace that exists now, so that later
    /// growth is exact and a namespace not seen here is known to be new. Returns the listeners
    /// that exist now: (namespace, port, socket inode).
    pub fn baseline(&mut self) -> Vec<(u32, u16, u32)> {
        let mut listening = Vec::new();
        let own = netdiag::ns_link_inode("/proc/self/ns/net");
        let mut by_ns: BTreeMap<u32, u32> = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for pid in rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
                if let Some(ns) = netdiag::netns_inode(pid) {
                    by_ns.entry(ns).or_insert(pid);
                }
            }
        }
        for (ns, pid) in by_ns {
            let enter = if Some(ns) == own { None } else { Some(pid) };
            if let Ok((Ok(socks), ext)) = netdiag::in_netns_of(enter, read_listen_counters) {
                self.tracker.baseline(ns, &socks, &ext);
                // Namespaces with listeners are watched from now on; others join when one of
                // their processes calls listen() or connect() (it then shows up in the counts).
                if socks.iter().any(|s| s.state == netdiag::LISTEN) {
                    self.netns.insert(ns, pid);
                }
                listening.extend(socks.iter().filter(|s| s.state == netdiag::LISTEN).map(|s| (ns, s.sport, s.inode)));
            }
        }
        listening
    }

    /// Reads the listeners of every namespace conntrace watches (its own, and those of the
    /// processes it has seen) and returns the listeners that dropped since the last read,
    /// with their owner.
    pub fn poll(&mut self, pids: impl Iterator<Item = u32>) -> ListenPoll {
        let own = netdiag::ns_link_inode("/proc/self/ns/net");
        for pid in pids.chain(std::iter::once(std::process::id())) {
            if pid == UNATTRIBUTED {
                continue;
            }
            if let Some(ns) = netdiag::netns_inode(pid) {
                self.netns.insert(ns, pid);
            }
        }
        let mut out = Vec::new();
        let mut by_ns = BTreeMap::new();
        let mut tw_tables = BTreeMap::new();
        let mut busy = Vec::new();
        let mut ports = Vec::new();
        let mut conntrack = BTreeMap::new();
        let mut range_use = BTreeMap::new();
        let mut gone = Vec::new();
        let now = Instant::now();
        for (&ns, &via) in &self.netns {
            let enter = if Some(ns) == own { None } else { Some(via) };
            // The process we entered through may have left; find another one in there.
            let enter = match enter {
                Some(p) if netdiag::netns_inode(p) != Some(ns) => match netdiag::process_in_netns(ns) {
                    Some(p) => Some(p),
                    None => {
                        gone.push(ns);
                        continue;
                    }
                },
                e => e,
            };
            let walk = self.port_walk_at.get(&ns).is_none_or(|t| now >= *t);
            let read = netdiag::in_netns_of(enter, move || {
                let counters = read_counters();
                let t = Instant::now();
                let ports = if walk { facts::read_port_use() } else { None };
                (counters, ports, t.elapsed())
            });
            let Ok(((Ok(mut socks), ext, tw, ct), port_use, took)) = read else { continue };
            if let Some(ct) = ct {
                conntrack.insert(ns, ct);
            }
            if walk {
                self.port_walk_at.insert(ns, now + took * PORT_WALK_SPACING);
            }
            if let Some((readings, taken)) = port_use {
                ports.extend(readings);
                range_use.insert(ns, taken);
            }
            if let Some(tw) = tw {
                tw_tables.insert(ns, tw);
            }
            if self.tracker.needs_requests(ns, &socks, &ext) {
                if let Ok(Ok(reqs)) = netdiag::in_netns_of(enter, netdiag::request_sockets) {
                    socks.extend(reqs);
                }
            }
            let poll = self.tracker.update(ns, &socks, &ext);
            by_ns.insert(ns, poll.delta);
            for l in poll.busy {
                if let Some(pid) = owner_of(&mut self.owner, ns, l.inode) {
                    busy.push((pid, l));
                }
            }
            let ns_delta = poll.context;
            for l in poll.listeners {
                if let Some(pid) = owner_of(&mut self.owner, ns, l.inode) {
                    out.push((pid, l, ns_delta.clone()));
                }
            }
        }
        for ns in gone {
            self.netns.remove(&ns);
            self.tracker.forget(ns);
            self.owner.retain(|k, _| k.0 != ns);
            self.port_walk_at.remove(&ns);
        }
        let tcp_mem = facts::read_tcp_mem_use();
        ListenPoll { dropped: out, by_ns, tw_tables, busy, ports, range_use, conntrack, tcp_mem }
    }
}

/// The process a listener's drops are charged to: cached while it lives; looked up again
/// otherwise (not found yet, or exited and the socket passed on).
fn owner_of(cache: &mut BTreeMap<(u32, u32), Option<u32>>, ns: u32, inode: u32) -> Option<u32> {
    let cached = cache.get(&(ns, inode)).copied().flatten().filter(|p| procinfo::exists(*p));
    let owner = cached.or_else(|| procinfo::socket_owner(inode));
    cache.insert((ns, inode), owner);
    owner
}
