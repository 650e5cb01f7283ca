//! target_tcp_mem, target_tw_buckets and target_backlog on fixtures.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::domain::net::TcpSocket;

const PAGE: Option<u64> = Some(4096);

fn sys(tcp_mem: Option<(u64, u64, u64)>, alloc: u64, mem: u64) -> SystemFacts {
    SystemFacts {
        tcp_mem,
        sockstat: [("inuse".to_string(), 3), ("alloc".to_string(), alloc), ("mem".to_string(), mem)].into(),
        page_size: PAGE,
        ..Default::default()
    }
}

fn assert_words(i: &Item) {
    for t in [Some(&i.message), i.fix.as_ref()].into_iter().flatten() {
        assert!(!t.contains('?') && !t.contains("null"), "{i:?}");
    }
}

#[test]
fn tcp_mem_scales_what_a_socket_holds_now() {
    // 200 pages over 100 sockets (machine-wide `alloc`, not the namespace's `inuse` 3): 2 pages
    // a socket, 20,000 pages for 10,000.
    let at = |limits| tcp_mem_item(10_000, &sys(Some(limits), 100, 200));
    let ok = at((10_000, 30_000, 40_000));
    assert_eq!((ok.status, ok.value["needed_pages"].as_u64()), (Level::Ok, Some(20_000)));
    assert!(ok.message.contains("200 pages (800 KiB) for the 100 TCP sockets"), "{}", ok.message);
    assert!(ok.message.contains("about 8.0 KiB a socket"), "{}", ok.message);
    assert!(ok.message.contains("about 20,000 pages (78 MiB)"), "{}", ok.message);
    assert_eq!(ok.fix, None);
    let warn = at((10_000, 20_000, 40_000));
    assert_eq!(warn.status, Level::Warn, "at the pressure threshold");
    let fail = at((5_000, 10_000, 20_000));
    assert_eq!((fail.status, fail.usage.as_deref()), (Level::Fail, Some("20,000/20,000 pages")));
    // Pressure above the need (25 % more), low and high in the kernel's proportions.
    let fix = fail.fix.as_deref().unwrap();
    assert!(
        fix.starts_with("sysctl -w net.ipv4.tcp_mem=\"18750 25001 37500\" and persist it in /etc/sysctl.d"),
        "{fix}"
    );
    assert!(fix.contains("146 MiB"), "{fix}");
    assert_words(&fail);
}

#[test]
fn tcp_mem_assumes_a_page_a_socket_when_it_cannot_measure() {
    for (alloc, mem, why) in
        [(5, 3, "only 5 TCP sockets now"), (1, 182, "only 1 TCP socket now"), (500, 0, "hold no buffer pages now")]
    {
        let i = tcp_mem_item(1_000, &sys(Some((100, 1_000, 2_000)), alloc, mem));
        assert_eq!((i.status, i.value["needed_pages"].as_u64()), (Level::Warn, Some(1_000)), "{i:?}");
        assert_eq!(i.value["measured"], false);
        assert!(i.message.contains(why) && i.message.contains("assuming one page a connection"), "{}", i.message);
        assert_words(&i);
    }
    let mut unread = sys(Some((100, 1_000, 2_000)), 0, 0);
    unread.sockstat.clear();
    let i = tcp_mem_item(10, &unread);
    assert!(i.message.contains("/proc/net/sockstat could not be read"), "{}", i.message);
    assert_eq!(i.status, Level::Ok);
}

#[test]
fn tcp_mem_without_its_facts_says_what_is_missing() {
    let i = tcp_mem_item(10, &sys(None, 100, 200));
    assert_eq!(i.status, Level::Warn);
    assert!(
        i.message.contains("net.ipv4.tcp_mem could not be read") && i.message.contains("initial network namespace")
    );
    let mut no_page = sys(Some((10, 20, 30)), 100, 200);
    no_page.page_size = None;
    let i = tcp_mem_item(u64::MAX, &no_page);
    assert_eq!(i.status, Level::Fail, "saturates instead of overflowing");
    assert!(i.message.contains("page size unknown") && !i.message.contains("MiB"), "{}", i.message);
    assert_words(&i);
}

#[test]
fn tw_buckets_hold_sixty_seconds_of_closes() {
    let net = |max| NetFacts { tcp_max_tw_buckets: max, time_wait: Some(12), ..Default::default() };
    let fail = tw_buckets_item(100, &net(Some(1_000)));
    assert_eq!((fail.status, fail.usage.as_deref()), (Level::Fail, Some("6,000/1,000")));
    assert!(fail.message.contains("TCPTimeWaitOverflow") && fail.message.contains("(12 in TIME_WAIT now)"));
    assert_eq!(
        fail.fix.as_deref().map(|f| f.starts_with("sysctl -w net.ipv4.tcp_max_tw_buckets=12000 and persist it")),
        Some(true),
        "{fail:?}"
    );
    assert_eq!(tw_buckets_item(100, &net(Some(6_000))).status, Level::Fail, "exactly full refuses the last");
    assert_eq!(tw_buckets_item(100, &net(Some(7_500))).status, Level::Warn, "80 %");
    assert_eq!(tw_buckets_item(100, &net(Some(100_000))).status, Level::Ok);
    assert_eq!(tw_buckets_item(1, &net(Some(0))).status, Level::Fail);
    let unknown = tw_buckets_item(100, &net(None));
    assert_eq!(unknown.status, Level::Warn);
    assert!(unknown.message.contains("could not be read"), "{}", unknown.message);
    assert_words(&unknown);
    assert_eq!(tw_buckets_item(u64::MAX, &net(Some(10))).status, Level::Fail);
}

fn listener(port: u16, backlog: u32) -> TcpSocket {
    TcpSocket {
        state: LISTEN,
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        sport: port,
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
        rqueue: 0,
        wqueue: backlog,
        inode: 0,
        drops: None,
    }
}

#[test]
fn a_backlog_capped_by_a_low_somaxconn_warns() {
    let net = |somaxconn, sockets| NetFacts { somaxconn, sockets, ..Default::default() };
    let items = backlog_items(10_000, &net(Some(128), vec![listener(8080, 128), listener(9090, 16)]));
    let levels: Vec<_> = items.iter().map(|i| (i.id.as_str(), i.status)).collect();
    assert_eq!(levels, [("target_backlog", Level::Warn), ("target_backlog", Level::Ok)]);
    assert!(items[0].message.contains("0.0.0.0:8080 has a backlog of 128; it equals net.core.somaxconn 128"));
    assert!(items[0].message.contains("arrival rate × accept latency, not the 10,000 concurrent"));
    let fix = items[0].fix.as_deref().unwrap();
    assert!(
        fix.starts_with("sysctl -w net.core.somaxconn=4096 and persist it in /etc/sysctl.d, then restart"),
        "{fix}"
    );
    assert_eq!(items[1].fix, None);
    // Listening before somaxconn was lowered: the next listen() gets less.
    let items = backlog_items(10, &net(Some(512), vec![listener(8080, 4096)]));
    assert_eq!(items[0].status, Level::Warn);
    assert!(items[0].message.contains("above net.core.somaxconn 512: it listened before"), "{}", items[0].message);
    assert!(items[0].fix.as_deref().unwrap().contains("before the server listening on 0.0.0.0:8080 restarts"));
    // somaxconn 4096 (the default since 5.4) caps nothing worth a warning.
    let items = backlog_items(10, &net(Some(4096), vec![listener(80, 4096)]));
    assert_eq!(items[0].status, Level::Ok);
    assert_eq!(items[0].value["backlog"], 4096);
}

#[test]
fn backlog_without_listeners_or_somaxconn() {
    let none = backlog_items(10, &NetFacts { somaxconn: Some(128), ..Default::default() });
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].status, Level::Ok);
    assert!(none[0].message.starts_with("no listening socket in this network namespace"), "{}", none[0].message);
    let unknown = backlog_items(10, &NetFacts { sockets: vec![listener(80, 128)], ..Default::default() });
    assert_eq!((unknown.len(), unknown[0].status), (1, Level::Warn));
    assert!(unknown[0].message.contains("net.core.somaxconn could not be read"), "{}", unknown[0].message);
    assert_words(&unknown[0]);
}
