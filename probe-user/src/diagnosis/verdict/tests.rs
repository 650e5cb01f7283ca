//! Verdict rules on fixtures: every cause, its evidence and fixes.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

/// The evidence of verdict `$v` as the `Proof::$variant` it must be.
macro_rules! proof {
    ($v:expr, $variant:ident) => {
        match &$v.evidence {
            Proof::$variant(p) => p,
            other => panic!("expected {} evidence, got {other:?}", stringify!($variant)),
        }
    };
}

use super::*;
use crate::domain::net::{self, TcpSocket};

use super::fake::FakeEvidence as Fake;

fn dest() -> Dest {
    Dest { netns: 7, addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port: 9000 }
}

fn net(established: u16, time_wait: u16, tw_reuse: u32) -> NetFacts {
    let mk = |state, sport| TcpSocket {
        state,
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport,
        dst: dest().addr,
        dport: 9000,
        rqueue: 0,
        wqueue: 0,
        inode: 0,
        drops: None,
    };
    let mut sockets: Vec<_> = (0..established).map(|i| mk(net::ESTABLISHED, 40000 + i)).collect();
    sockets.extend((0..time_wait).map(|i| mk(net::TIME_WAIT, 40000 + established + i)));
    NetFacts {
        port_range: Some((40000, 40049)),
        tcp_tw_reuse: Some(tw_reuse),
        sockets,
        time_wait: Some(time_wait as u64),
        netns: Some(7),
        ..Default::default()
    }
}

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn window(t: u64) -> Window {
    Window { now: Some(at(t)), interval_s: 1.0, ..Default::default() }
}

#[test]
fn port_exhaustion_by_time_wait_names_tw_reuse() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(2, 48, 0)));
    let mut w = window(0);
    w.port_failures.insert((5688, dest()), 10);
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 1);
    let v = &out[0];
    assert_eq!((v.state, v.cause, v.pid, v.failures), (VerdictState::Active, Cause::EphemeralPorts, 5688, 10));
    assert_eq!(v.destination.as_ref().unwrap().endpoint(), "127.0.0.2:9000");
    assert!(v.summary().starts_with(
        "nginx[5688] cannot get an ephemeral port toward 127.0.0.2:9000: 50 of 50 ports in 40000-40049 are in use (2 ESTABLISHED, 48 TIME_WAIT); at most 50 concurrent connections to 127.0.0.2:9000 from one source address; 10 connects failed"
    ), "{}", v.summary());
    assert_eq!(proof!(v, Ports).time_wait, 48);
    assert_eq!(proof!(v, Ports).range_size, 50);
    assert_eq!(proof!(v, Ports).tcp_tw_reuse, Some(0));
    assert!(v.fix.iter().any(|f| f.contains("tcp_tw_reuse=1")));
    assert!(!v.fix.iter().any(|f| f.contains("tcp_tw_recycle=")));
    // (How a verdict renders is pinned by the golden tests.)
    assert_eq!(v.cause, Cause::EphemeralPorts);
    assert_eq!(v.destination, Some(dest()));
    assert_eq!(proof!(v, Ports).established, 2);

    // More failures next interval: same verdict, not re-reported yet, no new evidence.
    let mut w = window(1);
    w.port_failures.insert((5688, dest()), 5);
    assert!(e.tick(&w, &mut fake).is_empty());
    assert_eq!(fake.net_calls, 1);
    assert_eq!(e.active().next().unwrap().failures, 15);
    // Quiet for 5 s: resolved, with its duration.
    assert!(e.tick(&window(4), &mut fake).is_empty());
    let out = e.tick(&window(6), &mut fake);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].state, VerdictState::Resolved);
    assert_eq!(out[0].failures, 15);
    // From the start of the first failing interval (t-1 s) to the last failure (t+1 s).
    assert_eq!(out[0].duration_s, Some(2.0));
    assert_eq!((out[0].cause, out[0].pid, out[0].destination.clone()), (Cause::EphemeralPorts, 5688, Some(dest())));
}

#[test]
fn tw_bucket_overflow_names_the_limit_and_the_namespace_counter() {
    let mut n = net(0, 10, 0);
    n.tcp_max_tw_buckets = Some(10);
    n.tcp_ext.insert("TCPTimeWaitOverflow".into(), 20);
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(n));
    let mut w = window(0);
    w.counts.insert(9, Counts { tw_overflows: 20, time_wait_created: 10, ..Default::default() });
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 1, "{out:?}");
    let v = &out[0];
    assert_eq!((v.cause, v.pid, v.failures), (Cause::TwBuckets, 9, 20));
    assert!(v.summary().contains("10 TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets is 10; 20 of its connections"));
    assert_eq!(proof!(v, TwBuckets).netns_tw_overflows, Some(20));
    assert!(v.fix[0].contains("tcp_max_tw_buckets (now 10"));
}

/// The kernel recorded the table when it refused the TIME_WAIT: the evidence is that record
/// (what inet_twsk_alloc() compared with the limit, orphaned FIN_WAIT2 sockets included), and
/// it holds once the process has exited and its namespace can no longer be read.
#[test]
fn tw_bucket_overflow_evidence_comes_from_the_kernel_record() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err("network namespace 77 is gone (no process left in it)".into()));
    fake.tw_table = Some(TwTable { count: 11, max: 10, netns: 77, _pad: 0 });
    let mut w = window(0);
    w.counts.insert(9, Counts { tw_overflows: 19, ..Default::default() });
    let v = &e.tick(&w, &mut fake)[0];
    let p = proof!(v, TwBuckets);
    assert_eq!((p.time_wait, p.tcp_max_tw_buckets, p.netns), (Some(11), Some(10), Some(77)));
    assert!(v.summary().contains("11 TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets is 10"), "{}", v.summary());
    assert!(!v.summary().contains('?') && !v.fix[0].contains('?'), "{} / {}", v.summary(), v.fix[0]);
    assert!(p.error.as_deref().is_some_and(|e| e.contains("gone")), "the namespace's counter is missing, and why");
}

#[test]
fn refused_tcp_memory_names_tcp_mem_and_the_usage() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(0, 0, 0)));
    let mut w = window(0);
    w.counts.insert(5, Counts { tcp_mem_send_refused: 3, tcp_mem_recv_refused: 40, ..Default::default() });
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 1, "{out:?}");
    let v = &out[0];
    assert_eq!((v.cause, v.failures), (Cause::TcpMem, 43));
    assert!(
        v.summary().contains("30 pages (0 MiB) in use, tcp_mem is 8 16 24 pages; 43 buffer allocations"),
        "{}",
        v.summary()
    );
    assert_eq!(proof!(v, TcpMem).recv_refused, 40);
    assert!(v.fix.iter().any(|f| f.contains("net.ipv4.tcp_mem")));
}

#[test]
fn netfilter_drops_are_conntrack_full_only_when_the_table_is() {
    let mut n = net(0, 0, 0);
    n.conntrack = Some(crate::domain::net::Conntrack {
        count: Some(16),
        max: Some(16),
        stats: [("drop".to_string(), 20), ("insert_failed".to_string(), 0)].into(),
    });
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(n.clone()));
    let mut w = window(0);
    w.counts.insert(6, Counts { netfilter_drops: 20, ..Default::default() });
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].cause, Cause::ConntrackFull);
    assert!(out[0].summary().contains("16 of 16 entries"), "{}", out[0].summary());
    assert!(out[0].fix[0].contains("nf_conntrack_max (now 16"));
    // Room in the table and no refused entries: a rule dropped them, no verdict.
    n.conntrack = Some(crate::domain::net::Conntrack { count: Some(3), max: Some(16), stats: BTreeMap::new() });
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(n));
    assert!(e.tick(&w, &mut fake).is_empty());
}

#[test]
fn failed_port_zero_binds_are_bind_hoarding_not_ephemeral_ports() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(50, 0, 0)));
    let mut w = window(0);
    let mut c = Counts { bind_failures: 10, bound_connects: 50, ..Default::default() };
    c.bind_errors.insert("EADDRINUSE".into(), 10);
    w.counts.insert(3, c);
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].cause, Cause::BindHoarding);
    assert!(out[0].summary().contains("50 of 50 ports in 40000-40049 are taken"), "{}", out[0].summary());
    assert_eq!(proof!(out[0], BindHoarding).bound_connects, 50);
    assert!(out[0].fix[0].contains("IP_BIND_ADDRESS_NO_PORT"));
}

#[test]
fn eaddrnotavail_without_a_port_search_is_address_unavailable() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(0, 0, 0)));
    let mut w = window(0);
    // 4 connect EADDRNOTAVAIL, 3 of them port-search failures; 2 binds to a foreign address.
    let mut c = Counts { port_assign_failures: 3, connect_addr_unavailable: 1, ..Default::default() };
    c.connect_errors.insert("EADDRNOTAVAIL".into(), 4);
    c.bind_errors.insert("EADDRNOTAVAIL".into(), 2);
    w.counts.insert(4, c);
    w.unavailable_addrs.insert(4, ["192.0.2.1:80".to_string()].into());
    let out = e.tick(&w, &mut fake);
    let v = out.iter().find(|v| v.cause == Cause::AddressUnavailable).expect("address_unavailable");
    assert_eq!(v.failures, 3);
    assert_eq!(proof!(v, AddressUnavailable).bind_eaddrnotavail, 2);
    assert_eq!(proof!(v, AddressUnavailable).connect_eaddrnotavail, 1);
    assert!(v.summary().contains("(192.0.2.1:80)"), "{}", v.summary());
    // Port failures alone make no such verdict.
    let mut e = Engine::new(Duration::from_secs(1));
    let mut w = window(0);
    let mut c = Counts { port_assign_failures: 3, ..Default::default() };
    c.connect_errors.insert("EADDRNOTAVAIL".into(), 3);
    w.counts.insert(4, c);
    assert!(e.tick(&w, &mut fake).iter().all(|v| v.cause != Cause::AddressUnavailable));
    // The counters read between a port failure and its connect error (they are counted at
    // different moments): the error alone in the next interval is still no such verdict.
    let mut w = window(1);
    let mut c = Counts::default();
    c.connect_errors.insert("EADDRNOTAVAIL".into(), 1);
    w.counts.insert(4, c);
    assert!(e.tick(&w, &mut fake).iter().all(|v| v.cause != Cause::AddressUnavailable));
}

#[test]
fn port_exhaustion_by_established_connections_does_not_suggest_tw_reuse() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(50, 0, 0)));
    let mut w = window(0);
    w.port_failures.insert((1, dest()), 3);
    let v = &e.tick(&w, &mut fake)[0];
    assert!(v.summary().contains("(50 ESTABLISHED, 0 TIME_WAIT)"), "{}", v.summary());
    assert!(!v.fix.iter().any(|f| f.contains("tcp_tw_reuse=1")));
    assert!(v.fix.iter().any(|f| f.contains("open connections hold most ports")));
}

#[test]
fn ports_held_in_fin_wait2_are_named() {
    let mut n = net(0, 0, 0);
    for i in 0..50 {
        n.sockets.push(TcpSocket {
            state: 5,
            src: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 40000 + i,
            dst: dest().addr,
            dport: 9000,
            rqueue: 0,
            wqueue: 0,
            inode: 0,
            drops: None,
        });
    }
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(n));
    let mut w = window(0);
    w.port_failures.insert((1, dest()), 3);
    let v = &e.tick(&w, &mut fake)[0];
    assert!(v.summary().contains("(0 ESTABLISHED, 0 TIME_WAIT, 50 FIN_WAIT2)"), "{}", v.summary());
    assert_eq!(proof!(v, Ports).states.get("FIN_WAIT2"), Some(&50));
    assert_eq!(proof!(v, Ports).other, 50);
    assert!(v.fix.iter().any(|f| f.contains("has not closed its side yet")));
    assert!(v.fix.iter().any(|f| f.contains("tcp_tw_reuse=1")));
}

#[test]
fn gone_namespace_is_said() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err("network namespace 7 is gone".into()));
    let mut w = window(0);
    w.port_failures.insert((1, dest()), 3);
    let v = &e.tick(&w, &mut fake)[0];
    assert!(v.summary().contains("namespace 7 is gone"));
    assert_eq!(proof!(v, PortsUnknown).netns, 7);
}

#[test]
fn fd_limit_and_file_max() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    let mut w = window(0);
    w.counts.insert(42, Counts { emfile: 10, enfile: 2, ..Default::default() });
    w.first_seen.insert((42, Cause::FdLimit), at(0) - Duration::from_millis(300));
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 2);
    let fd = out.iter().find(|v| v.cause == Cause::FdLimit).unwrap();
    assert_eq!(proof!(fd, FdLimit).nofile_soft, Some(1024));
    assert_eq!(proof!(fd, FdLimit).nofile_hard, Some(4096));
    assert_eq!(proof!(fd, FdLimit).open_fds, Some(1024));
    assert!(fd.summary().contains("1,024 of 1,024 file descriptors open"), "{}", fd.summary());
    assert!(fd.fix[0].contains("prlimit --pid 42 --nofile=4096:4096"));
    assert_eq!(fd.since, at(0) - Duration::from_millis(300));
    let fm = out.iter().find(|v| v.cause == Cause::FileMax).unwrap();
    assert_eq!(proof!(fm, FileMax).file_nr, Some(99_990));
    assert_eq!(proof!(fm, FileMax).file_max, Some(100_000));
}

#[test]
fn failed_last_tick_names_the_failures_of_that_interval_only() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    let mut w = window(0);
    w.counts.insert(42, Counts { emfile: 1, ..Default::default() });
    e.tick(&w, &mut fake);
    assert!(e.failed_last_tick(42, Cause::FdLimit));
    assert!(!e.failed_last_tick(42, Cause::FileMax));
    assert!(!e.failed_last_tick(43, Cause::FdLimit));
    // Still active (quiet period), but no failure in this interval.
    e.tick(&window(1), &mut fake);
    assert!(e.is_active(42, Cause::FdLimit));
    assert!(!e.failed_last_tick(42, Cause::FdLimit));
}

#[test]
fn time_wait_pressure_predicts_exhaustion_and_healthy_churn_stays_silent() {
    // 50 usable ports, 20 TIME_WAIT/s: 1,200 needed → exhaustion; 10 in use → 2 s left.
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(0, 10, 0)));
    let mut w = window(0);
    w.time_waits.insert((9, dest()), 20);
    let out = e.tick(&w, &mut fake);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause, Cause::TimeWaitPressure);
    assert_eq!(proof!(out[0], TimeWaitPressure).rate_per_s, 20.0);
    assert_eq!(proof!(out[0], TimeWaitPressure).seconds_left, 2);

    // Same rate where tcp_tw_reuse applies (loopback with 2): silent, and the sockets (a walk
    // of every TCP socket of the host) are not read.
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(0, 10, 2)));
    assert!(e.tick(&w, &mut fake).is_empty());
    assert_eq!(fake.net_calls, 0);

    // Healthy churn: 0.5/s × 60 = 30 < 50 usable: silent, sockets not read.
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Ok(net(0, 10, 0)));
    let mut w = Window { now: Some(at(0)), interval_s: 2.0, ..Default::default() };
    w.time_waits.insert((9, dest()), 1);
    assert!(e.tick(&w, &mut fake).is_empty());
    assert_eq!(fake.net_calls, 0);
}

#[test]
fn time_wait_pressure_ends_in_the_interval_the_ports_run_out_and_says_so() {
    let mut e = Engine::new(Duration::from_secs(5));
    let mut fake = Fake::new(Ok(net(0, 10, 0)));
    let mut w = window(0);
    w.time_waits.insert((9, dest()), 20);
    assert_eq!(e.tick(&w, &mut fake)[0].cause, Cause::TimeWaitPressure);
    // The next interval still creates TIME_WAITs (the prediction still holds) and connect()
    // fails: the warning ends now, not once the rate falls, and says why.
    let mut w = window(1);
    w.time_waits.insert((9, dest()), 20);
    w.port_failures.insert((9, dest()), 3);
    let out = e.tick(&w, &mut fake);
    assert!(out.iter().any(|v| v.cause == Cause::EphemeralPorts && v.state == VerdictState::Active), "{out:?}");
    let r = out.iter().find(|v| v.cause == Cause::TimeWaitPressure).expect("the warning ends at once");
    assert_eq!(r.state, VerdictState::Resolved);
    let why = r.resolution.as_deref().unwrap_or_default();
    assert!(why.contains("ran out: connect() failures began"), "{why}");
    assert!(!e.is_active(9, Cause::TimeWaitPressure));
    // While connect() keeps failing at that rate, no new warning.
    let mut w = window(2);
    w.time_waits.insert((9, dest()), 20);
    w.port_failures.insert((9, dest()), 3);
    let out = e.tick(&w, &mut fake);
    assert!(out.iter().all(|v| v.cause != Cause::TimeWaitPressure), "{out:?}");
    assert!(!e.is_active(9, Cause::TimeWaitPressure));
}

#[test]
fn thousands_separators() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(6823), "6,823");
    assert_eq!(thousands(1234567), "1,234,567");
}

#[test]
fn summaries_keep_their_count_current_and_nothing_else_changes() {
    // Every cause's count is refreshed (file_max's sits mid-sentence; syn_queue's sums two).
    let mut e = Engine::new(Duration::from_secs(5));
    let mut fake = Fake::new(Err(String::new()));
    let mut w = window(0);
    w.counts.insert(7, Counts { enfile: 3, ..Default::default() });
    let first = e.tick(&w, &mut fake)[0].summary();
    assert!(first.contains("got ENFILE 3 times since"), "{first}");
    let mut w = window(1);
    w.counts.insert(7, Counts { enfile: 2, ..Default::default() });
    e.tick(&w, &mut fake);
    let now = e.active().next().unwrap().summary();
    assert_eq!(now, first.replace("got ENFILE 3 times", "got ENFILE 5 times"));
}

/// A listener whose SYN queue is over its backlog dropped SYNs: the SYN queue, even when the
/// namespace's TcpExt growth was read in another interval than the listener's drops.
#[test]
fn drops_with_the_syn_queue_over_the_backlog_are_the_syn_queue() {
    use crate::domain::listen::ListenerDelta;
    let l = ListenerDelta {
        netns: 7,
        inode: 3,
        addr: IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
        port: 9000,
        drops: 21,
        queue_len: 0,
        backlog: 8,
        syn_recv: 9,
        cookies: 0,
    };
    assert_eq!(listen_cause(&l, &Default::default()), Cause::SynQueue);
    let accept_full = ListenerDelta { queue_len: 9, syn_recv: 0, ..l.clone() };
    assert_eq!(listen_cause(&accept_full, &Default::default()), Cause::AcceptQueue);
    let overflowed = [("ListenOverflows", 3)].into();
    assert_eq!(listen_cause(&ListenerDelta { syn_recv: 0, ..l }, &overflowed), Cause::AcceptQueue);
}
