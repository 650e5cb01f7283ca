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
                out.push(ListenerDelta {
                    netns,
                    inode: l.inode,
                    addr: l.src,
                    port: l.sport,
                    drops: now - before,
                    queue_len: l.rqueue,
                    backlog: l.wqueue,
                    syn_recv: syn_recv_of(l),
                    cookies: 0,
                });
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
                    None => out.push(ListenerDelta {
                        netns,
                        inode: l.inode,
                        addr: l.src,
                        port: l.sport,
                        drops: 0,
                        queue_len: l.rqueue,
                        backlog: l.wqueue,
                        syn_recv: n,
                        cookies,
                    }),
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
            .map(|l| ListenerDelta {
                netns,
                inode: l.inode,
                addr: l.src,
                port: l.sport,
                drops: 0,
                queue_len: l.rqueue,
                backlog: l.wqueue,
                syn_recv: syn_recv_of(l),
                cookies: 0,
            })
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
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn listener(port: u16, inode: u32, drops: u32, queue: u32, backlog: u32) -> TcpSocket {
        TcpSocket {
            state: LISTEN,
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: port,
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dport: 0,
            rqueue: queue,
            wqueue: backlog,
            inode,
            drops: Some(drops),
        }
    }

    fn ext(overflows: u64) -> BTreeMap<String, u64> {
        [("ListenOverflows".to_string(), overflows), ("ListenDrops".to_string(), overflows)].into()
    }

    #[test]
    fn inferred_overflows_follow_the_namespace_counter() {
        // The close that took the last slot was taken for an overflow.
        let mut c = [(9, 21)];
        assert_eq!(reconcile_tw_overflows(&mut c, 0, 20), 0);
        assert_eq!(c, [(10, 20)]);
        // A TIME_WAIT expired while the table was full: a success was missed the other way.
        // The surplus may be overflows not in the counters yet: carried one poll, then moved.
        let mut c = [(5, 3), (2, 0)];
        assert_eq!(reconcile_tw_overflows(&mut c, 0, 4), 1);
        assert_eq!(c, [(5, 3), (2, 0)]);
        let mut c = [(3, 0), (1, 0)];
        assert_eq!(reconcile_tw_overflows(&mut c, 1, 0), 0);
        assert_eq!(c, [(2, 1), (1, 0)]);
        // Never more moved than there is.
        let mut c = [(0, 1)];
        assert_eq!(reconcile_tw_overflows(&mut c, 5, 0), 0);
        assert_eq!(c, [(0, 1)]);
    }

    #[test]
    fn overflows_the_namespace_counted_before_the_counters_saw_them_are_claimed_next_poll() {
        // A burst of 17 overflows between the counters' read and TcpExt's: no close counted
        // yet, so all of it is carried...
        assert_eq!(reconcile_tw_overflows(&mut [], 0, 17), 17);
        // ...and claimed by the next interval's counts (10 TIME_WAITs, 20 overflows), whose
        // own poll saw only the last 3.
        let mut c = [(10, 20)];
        assert_eq!(reconcile_tw_overflows(&mut c, 17, 3), 0);
        assert_eq!(c, [(10, 20)]);
        // Growth this poll's counts did not claim is carried, at most this poll's.
        let mut c = [(4, 2)];
        assert_eq!(reconcile_tw_overflows(&mut c, 1, 5), 4);
        assert_eq!(c, [(4, 2)]);
    }

    #[test]
    fn growth_since_the_baseline_is_reported() {
        let mut t = Tracker::default();
        t.baseline(7, &[listener(80, 1, 5, 0, 128)], &ext(5));
        let p = t.update(7, &[listener(80, 1, 5, 0, 128)], &ext(5));
        assert!(p.listeners.is_empty() && p.delta.is_empty());
        let p = t.update(7, &[listener(80, 1, 12, 9, 8)], &ext(12));
        let d = &p.listeners;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].drops, d[0].queue_len, d[0].backlog, d[0].port), (7, 9, 8, 80));
        assert!(d[0].accept_queue_full());
        assert_eq!(p.delta["ListenOverflows"], 7);
        // No growth: nothing.
        let p = t.update(7, &[listener(80, 1, 12, 9, 8)], &ext(12));
        assert!(p.listeners.is_empty() && p.delta.is_empty());
    }

    #[test]
    fn request_sockets_are_read_only_when_a_listener_reports() {
        let mut t = Tracker::default();
        t.baseline(7, &[listener(80, 1, 5, 0, 128)], &ext(5));
        assert!(!t.needs_requests(7, &[listener(80, 1, 5, 0, 128)], &ext(5)), "nothing grew");
        assert!(t.needs_requests(7, &[listener(80, 1, 6, 0, 128)], &ext(6)), "a listener dropped");
        assert!(t.needs_requests(7, &[listener(81, 2, 1, 0, 128)], &ext(5)), "a new listener with drops");
        let mut cookies = ext(5);
        cookies.insert("TCPReqQFullDoCookies".into(), 3);
        assert!(t.needs_requests(7, &[listener(80, 1, 5, 0, 128)], &cookies), "syncookies");
    }

    #[test]
    fn a_namespace_or_listener_created_after_the_start_counts_everything() {
        let mut t = Tracker::default();
        // Namespace 9 did not exist at start: all of it is new.
        let p = t.update(9, &[listener(80, 5, 31, 9, 8)], &ext(31));
        assert_eq!((p.listeners[0].drops, p.delta["ListenOverflows"]), (31, 31));
        t.baseline(7, &[], &ext(0));
        let mut syn = listener(443, 0, 0, 0, 0);
        syn.state = NEW_SYN_RECV;
        let d = t.update(7, &[listener(443, 2, 3, 0, 8), syn.clone()], &ext(3)).listeners;
        assert_eq!((d[0].drops, d[0].syn_recv), (3, 1));
        assert!(!d[0].accept_queue_full());
        // Syncookies: the namespace counter goes to the listener with a full SYN queue.
        let mut syns: Vec<TcpSocket> = (0..9).map(|_| syn.clone()).collect();
        syns.push(listener(443, 2, 3, 0, 8));
        let d = t.update(7, &syns, &[("TCPReqQFullDoCookies".to_string(), 21)].into()).listeners;
        assert_eq!((d[0].drops, d[0].cookies, d[0].syn_recv), (0, 21, 9));
        assert!(d[0].syn_queue_full());
        // Closed and re-created with the same inode number much later: starts again.
        t.update(7, &[], &ext(3));
        t.update(7, &[], &ext(3));
        let d = t.update(7, &[listener(443, 2, 1, 0, 8)], &ext(4)).listeners;
        assert_eq!(d[0].drops, 1);
    }

    /// Drops that land between a poll's two reads show in TcpExt first, on the listener one
    /// poll later: the listener's drops are judged with both.
    #[test]
    fn namespace_growth_waits_for_the_listener_that_shows_it() {
        let mut t = Tracker::default();
        // A SYN dropped on a full SYN queue counts in both (tcp_syn_flood_action, tcp_listendrop).
        let full: BTreeMap<String, u64> = [("TCPReqQFullDrop".to_string(), 21), ("ListenDrops".to_string(), 21)].into();
        t.baseline(7, &[listener(9000, 3, 0, 0, 8)], &BTreeMap::new());
        let p = t.update(7, &[listener(9000, 3, 0, 0, 8)], &full);
        assert!(p.listeners.is_empty());
        assert_eq!(p.delta["TCPReqQFullDrop"], 21);
        let p = t.update(7, &[listener(9000, 3, 21, 0, 8)], &full);
        assert_eq!(p.listeners[0].drops, 21);
        assert!(p.delta.is_empty(), "the exact growth of this poll: none");
        assert_eq!(p.context["TCPReqQFullDrop"], 21, "what the drops are judged with");
        // Used once.
        let p = t.update(7, &[listener(9000, 3, 22, 0, 8)], &full);
        assert!(!p.context.contains_key("TCPReqQFullDrop"));
    }

    /// The listener's sk_drops counts a final ACK dropped on a full accept queue twice: the
    /// drops reported are the namespace's ListenDrops, shared by the listeners that dropped.
    #[test]
    fn drops_are_the_namespaces_listen_drops_shared_by_the_listeners() {
        let mut t = Tracker::default();
        let ext = |drops: u64| -> BTreeMap<String, u64> { [("ListenDrops".to_string(), drops)].into() };
        t.baseline(7, &[listener(80, 1, 0, 0, 16), listener(81, 2, 0, 0, 16)], &ext(0));
        // 2,759 on the listener for 2,591 real drops (168 ACKs counted twice).
        let d = t.update(7, &[listener(80, 1, 2759, 16, 16), listener(81, 2, 0, 0, 16)], &ext(2591)).listeners;
        assert_eq!((d.len(), d[0].drops), (1, 2591));
        // Two listeners: shared in proportion, every drop given out.
        let d = t
            .update(7, &[listener(80, 1, 2759 + 300, 16, 16), listener(81, 2, 100, 16, 16)], &ext(2591 + 200))
            .listeners;
        assert_eq!(d.iter().map(|x| x.drops).collect::<Vec<_>>(), vec![150, 50]);
        // sk_drops grew without any listen drop (a packet discarded for another reason).
        assert!(t
            .update(7, &[listener(80, 1, 3100, 0, 16), listener(81, 2, 100, 0, 16)], &ext(2791))
            .listeners
            .is_empty());
        // Syncookies go to a listener even when its SYN queue has drained by the poll.
        let mut cookies = ext(2791);
        cookies.insert("TCPReqQFullDoCookies".into(), 265);
        let mut t2 = Tracker::default();
        t2.baseline(9, &[listener(80, 1, 0, 0, 16)], &ext(0));
        let d = t2.update(9, &[listener(80, 1, 0, 0, 16)], &cookies).listeners;
        assert_eq!((d.len(), d[0].cookies), (1, 265));
    }

    #[test]
    fn drops_are_charged_to_the_workers_not_the_master() {
        // master 100 (parent 1) forked workers 101 and 102: all three hold the listener.
        assert_eq!(crate::system::procinfo::acceptor(&[(100, 1), (101, 100), (102, 100)]), Some(101));
        // One process: that one; socket activation: pid 1 only when alone.
        assert_eq!(crate::system::procinfo::acceptor(&[(300, 1)]), Some(300));
        assert_eq!(crate::system::procinfo::acceptor(&[(1, 0), (300, 1)]), Some(300));
        assert_eq!(crate::system::procinfo::acceptor(&[]), None);
    }
}
