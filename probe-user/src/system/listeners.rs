//! Listen-queue drops, per listener: the accept queue and the SYN queue.
//!
//! No tracepoint fires when tcp_conn_request() drops a SYN because the accept queue is full
//! (the SYN is consumed, not freed with a drop reason; only the final-ACK path carries
//! SKB_DROP_REASON_TCP_LISTEN_OVERFLOW, on 6.15+). The kernel counts every such drop itself,
//! exactly: per listener in `sk_drops` (tcp_listendrop) and per namespace in TcpExt
//! ListenOverflows / ListenDrops / TCPReqQFullDrop / TCPReqQFullDoCookies. conntrace reads
//! both each interval (sock_diag filtered to listeners, /proc/net/netstat) and turns growth
//! into per-listener deltas. Pure logic here; the reading is in `netdiag` and `facts`.

use std::{collections::BTreeMap, net::IpAddr};

pub use crate::domain::listen::{ListenerDelta, NsDelta};
use crate::domain::net::{TcpSocket, LISTEN, NEW_SYN_RECV, SYN_RECV};

/// TcpExt counters that say why listeners dropped.
pub const NS_COUNTERS: [&str; 6] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
    // Not a listen counter: read here too, to correct inferred tw-bucket overflows.
    "TCPTimeWaitOverflow",
];

/// Makes the inferred tw-bucket overflows of one namespace's processes agree with the
/// namespace's exact count (TcpExt TCPTimeWaitOverflow): a close taken for an overflow that
/// was a TIME_WAIT, or the reverse, is moved between the two counters. `counts` holds
/// (TIME_WAITs, overflows) per process for one interval; the largest counts are corrected
/// first.
///
/// TcpExt is read after the kernel's counters, so the namespace's count can run ahead of
/// them: overflows between the two reads show in this poll's `delta` but in the next
/// interval's counters. Growth no counted overflow claimed is therefore carried one poll
/// (`carried`, the return value): a surplus is only taken for TIME_WAITs that were overflows
/// once the closes it counts must all be in the counters, i.e. when it is carried. Counted
/// overflows beyond what the namespace counted are never overflows.
pub fn reconcile_tw_overflows(counts: &mut [(u64, u64)], carried: u64, delta: u64) -> u64 {
    let counted: u64 = counts.iter().map(|c| c.1).sum();
    let available = carried + delta;
    let mut order: Vec<usize> = (0..counts.len()).collect();
    if counted > available {
        order.sort_by_key(|&i| std::cmp::Reverse(counts[i].1));
        let mut excess = counted - available;
        for i in order {
            let m = excess.min(counts[i].1);
            counts[i].1 -= m;
            counts[i].0 += m;
            excess -= m;
        }
        return 0;
    }
    if counted < carried {
        order.sort_by_key(|&i| std::cmp::Reverse(counts[i].0));
        let mut missing = carried - counted;
        for i in order {
            let m = missing.min(counts[i].0);
            counts[i].0 -= m;
            counts[i].1 += m;
            missing -= m;
        }
        return delta;
    }
    // Claimed first from the carry; what is left of this poll's growth is carried.
    (available - counted).min(delta)
}

/// Remembers the counters of the previous poll. Namespaces that existed when conntrace
/// started get a baseline read then ([`Tracker::baseline`]): drops from before are not
/// reported. A namespace first seen later was created since, so all its counts are new.
#[derive(Default)]
pub struct Tracker {
    drops: BTreeMap<(u32, u32), u64>,
    ns: BTreeMap<u32, BTreeMap<String, u64>>,
    /// Listen-queue counters that grew in a poll in which no listener showed drops.
    carried: BTreeMap<u32, NsDelta>,
}

/// The listen-queue counters carried from one poll to the next (see [`NsPoll::context`]).
const CARRIED: [&str; 3] = ["ListenOverflows", "ListenDrops", "TCPReqQFullDrop"];

/// One poll of a namespace.
#[derive(Debug, Default)]
pub struct NsPoll {
    /// Listeners whose drop count grew (or that got the namespace's syncookies).
    pub listeners: Vec<ListenerDelta>,
    /// The namespace's counter growth since the previous poll.
    pub delta: NsDelta,
    /// Listeners whose accept queue is at least 4/5 full now (drops and cookies 0): the
    /// accept queue warning's readings.
    pub busy: Vec<ListenerDelta>,
    /// What the listeners' drops are judged with: `delta`, plus the listen-queue growth of
    /// earlier polls in which no listener showed drops. A listener's sk_drops is read (sock_diag)
    /// before the namespace's TcpExt, so a drop between the two reads shows in TcpExt one poll
    /// before it shows on the listener.
    pub context: NsDelta,
}

impl Tracker {
    /// Whether [`Tracker::update`] with these listeners and counters will report a listener,
    /// and so needs the namespace's request sockets (reading them walks every TCP socket of
    /// the host): a listener's drops or the namespace's syncookies grew.
    pub fn needs_requests(&self, netns: u32, listeners: &[TcpSocket], tcp_ext: &BTreeMap<String, u64>) -> bool {
        let grew = |name: &str| {
            let before = self.ns.get(&netns).and_then(|m| m.get(name)).copied().unwrap_or(0);
            tcp_ext.get(name).copied().unwrap_or(0) > before
        };
        grew("TCPReqQFullDoCookies")
            || listeners
                .iter()
                .filter(|s| s.state == LISTEN)
                .any(|l| l.drops.unwrap_or(0) as u64 > self.drops.get(&(netns, l.inode)).copied().unwrap_or(0))
    }

    /// One poll of namespace `netns`: its listeners and request sockets (`socks`) and its
    /// TcpExt counters.
    pub fn update(&mut self, netns: u32, socks: &[TcpSocket], tcp_ext: &BTreeMap<String, u64>) -> NsPoll {
        let prev_ns = self.ns.insert(netns, tcp_ext.clone()).unwrap_or_default();
        let mut ns_delta = NsDelta::new();
        for name in NS_COUNTERS {
            let (before, now) = (prev_ns.get(name).copied().unwrap_or(0), tcp_ext.get(name).copied().unwrap_or(0));
            if now > before {
                ns_delta.insert(name, now - before);
            }
        }
        // Request sockets per local (address, port); a listener on the wildcard address owns
        // those of every address on its port (SO_REUSEPORT groups share them: a guess).
        let mut reqs: BTreeMap<(IpAddr, u16), u64> = BTreeMap::new();
        for s in socks.iter().filter(|s| s.state == SYN_RECV || s.state == NEW_SYN_RECV) {
            *reqs.entry((s.src, s.sport)).or_default() += 1;
        }
        let syn_recv_of = |l: &TcpSocket| -> u64 {
            reqs.iter()
                .filter(|((a, p), _)| *p == l.sport && (l.src.is_unspecified() || *a == l.src))
                .map(|(_, n)| n)
                .sum()
        };
        let mut out = Vec::new();
        let mut alive = Vec::new();
        for l in socks.iter().filter(|s| s.state == LISTEN) {
            let key = (netns, l.inode);
            alive.push(key);
            let now = l.drops.unwrap_or(0) as u64;
            // A listener first seen after the baseline was created since: all its drops are
            // new.
            let before = self.drops.insert(key, now).unwrap_or(0);
            if now > before {
                out.push(delta(netns, l, now - before, syn_recv_of(l), 0));
            }
        }
        // Syncookies leave no trace on the listener: give the namespace's count to the
        // listener whose SYN queue is fullest now (with several full at once this is a guess),
        // else to one that dropped, else to the only one: never to nobody (the queue may have
        // drained by the time it is read).
        if let Some(&cookies) = ns_delta.get("TCPReqQFullDoCookies") {
            let listeners: Vec<&TcpSocket> = socks.iter().filter(|l| l.state == LISTEN).collect();
            let by_queue = listeners
                .iter()
                .map(|l| (syn_recv_of(l), *l))
                .filter(|(n, _)| *n > 0)
                .max_by_key(|(n, l)| n * 1000 / (l.wqueue as u64 + 1));
            let dropped =
                out.first().and_then(|d| listeners.iter().find(|l| l.inode == d.inode)).map(|l| (syn_recv_of(l), *l));
            let only = (listeners.len() == 1).then(|| (syn_recv_of(listeners[0]), listeners[0]));
            let fullest = by_queue.or(dropped).or(only);
            if let Some((n, l)) = fullest {
                match out.iter_mut().find(|d| d.inode == l.inode) {
                    Some(d) => d.cookies = cookies,
                    None => out.push(delta(netns, l, 0, n, cookies)),
                }
            }
        }
        self.drops.retain(|k, _| k.0 != netns || alive.contains(k));
        let mut context = self.carried.remove(&netns).unwrap_or_default();
        for (k, v) in &ns_delta {
            *context.entry(k).or_default() += v;
        }
        // sk_drops counts a final ACK dropped on a full accept queue twice (tcp_listendrop in
        // tcp_v4_syn_recv_sock, then sk_drops_add at tcp_v4_rcv's discard_and_relse) and
        // counts packets a listener discards for other reasons: it says which listeners
        // dropped, the namespace's ListenDrops says how many.
        if out.iter().any(|d| d.drops > 0) && tcp_ext.contains_key("ListenDrops") {
            let listen_drops = context.get("ListenDrops").copied().unwrap_or(0);
            split_drops(&mut out, listen_drops);
            out.retain(|d| d.drops > 0 || d.cookies > 0);
        }
        if out.is_empty() {
            // One poll: the read skew it covers is shorter. Growth no listener shows by then
            // was a listener closed meanwhile: it stays in the namespace's totals only.
            let carry: NsDelta = ns_delta.iter().filter(|(k, _)| CARRIED.contains(k)).map(|(k, v)| (*k, *v)).collect();
            if !carry.is_empty() {
                self.carried.insert(netns, carry);
            }
        }
        let busy = socks
            .iter()
            .filter(|l| l.state == LISTEN && l.wqueue > 0 && l.rqueue as u64 * 5 >= l.wqueue as u64 * 4)
            .map(|l| delta(netns, l, 0, syn_recv_of(l), 0))
            .collect();
        NsPoll { listeners: out, busy, delta: ns_delta, context }
    }

    /// Records the counters of a namespace that exists as conntrace starts.
    pub fn baseline(&mut self, netns: u32, socks: &[TcpSocket], tcp_ext: &BTreeMap<String, u64>) {
        self.ns.insert(netns, tcp_ext.clone());
        for l in socks.iter().filter(|s| s.state == LISTEN) {
            self.drops.insert((netns, l.inode), l.drops.unwrap_or(0) as u64);
        }
    }

    /// Forgets a namespace that is gone.
    pub fn forget(&mut self, netns: u32) {
        self.ns.remove(&netns);
        self.drops.retain(|k, _| k.0 != netns);
    }
}

/// Listener `l` of namespace `netns` as a delta: its queue now, with what grew.
fn delta(netns: u32, l: &TcpSocket, drops: u64, syn_recv: u64, cookies: u64) -> ListenerDelta {
    ListenerDelta {
        netns,
        inode: l.inode,
        addr: l.src,
        port: l.sport,
        drops,
        queue_len: l.rqueue,
        backlog: l.wqueue,
        syn_recv,
        cookies,
    }
}

/// Shares `total` (the namespace's ListenDrops growth) among the listeners in proportion to
/// their sk_drops growth; the remainder of the division goes to the largest.
fn split_drops(out: &mut [ListenerDelta], total: u64) {
    let sum: u64 = out.iter().map(|d| d.drops).sum();
    if sum == 0 {
        return;
    }
    let shares: Vec<u64> = out.iter().map(|d| d.drops * total / sum).collect();
    let rest = total - shares.iter().sum::<u64>();
    let largest = (0..out.len()).max_by_key(|&i| out[i].drops).unwrap_or(0);
    for (i, d) in out.iter_mut().enumerate() {
        d.drops = shares[i] + if i == largest { rest } else { 0 };
    }
}

#[cfg(test)]
mod tests;
