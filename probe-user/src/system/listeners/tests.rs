//! Listen-queue drop tracking and TIME_WAIT overflow reconciliation, on fixtures.
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
    let d =
        t.update(7, &[listener(80, 1, 2759 + 300, 16, 16), listener(81, 2, 100, 16, 16)], &ext(2591 + 200)).listeners;
    assert_eq!(d.iter().map(|x| x.drops).collect::<Vec<_>>(), vec![150, 50]);
    // sk_drops grew without any listen drop (a packet discarded for another reason).
    assert!(t.update(7, &[listener(80, 1, 3100, 0, 16), listener(81, 2, 100, 0, 16)], &ext(2791)).listeners.is_empty());
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
