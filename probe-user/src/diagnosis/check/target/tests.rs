//! The target items of target.rs on fixtures.

use super::*;
use crate::domain::net::Conntrack;

fn proc(soft: u64, open: u64) -> ProcFds {
    ProcFds { pid: 1904, comm: "python3".into(), open, soft: Some(soft), hard: Some(soft) }
}

fn find<'a>(items: &'a [Item], id: &str) -> &'a Item {
    items.iter().find(|i| i.id == id).unwrap_or_else(|| panic!("no {id}: {items:#?}"))
}

#[test]
fn ten_thousand_connections_need_the_fds_and_the_ports() {
    let sys = SystemFacts {
        file_nr: Some((5_000, 100_000)),
        nr_open: Some(1_048_576),
        tcp_mem: Some((100_000, 200_000, 300_000)),
        ..Default::default()
    };
    let net = NetFacts { port_range: Some((40000, 40099)), tcp_tw_reuse: Some(0), ..Default::default() };
    let t = Target { connections: 10_000, per_destination: Some(10_000), new_per_second: None };
    let unit = LimitSource::Systemd { unit: "app.service".into(), limit_nofile: Some("1024".into()) };
    let items = target_items(t, &sys, &net, Some((&proc(1024, 1000), Some(990))), Some(&unit));
    let nofile = find(&items, "target_nofile");
    assert_eq!(nofile.status, Level::Fail);
    assert_eq!(nofile.value["needed"], 10_010, "10,000 connections and the 10 other fds it holds");
    let fix = nofile.fix.as_deref().unwrap();
    assert!(fix.contains("LimitNOFILE=10010") && fix.contains("systemctl edit app.service"), "{fix}");
    assert!(fix.contains("limits.conf does not apply"), "{fix}");
    let ports = find(&items, "target_ports");
    assert_eq!((ports.status, ports.value["usable"].as_u64()), (Level::Fail, Some(100)));
    assert!(ports.fix.as_deref().unwrap().contains("ip_local_port_range"));
    assert_eq!(find(&items, "target_nr_open").status, Level::Ok);
    assert_eq!(find(&items, "target_file_max").status, Level::Ok);

    // Tuned: all pass, but tcp_tw_reuse=0 still warns for the churn.
    let net = NetFacts { port_range: Some((1024, 65535)), tcp_tw_reuse: Some(1), ..Default::default() };
    let items = target_items(t, &sys, &net, Some((&proc(65_536, 10), Some(0))), Some(&LimitSource::Inherited));
    assert!(items.iter().all(|i| i.status == Level::Ok), "{items:#?}");
    let net = NetFacts { port_range: Some((1024, 65535)), tcp_tw_reuse: Some(0), ..Default::default() };
    let items = target_items(t, &sys, &net, None, None);
    assert_eq!(find(&items, "target_ports").status, Level::Warn);
}

#[test]
fn a_limit_above_nr_open_and_a_full_file_table_fail() {
    let sys = SystemFacts { file_nr: Some((95_000, 100_000)), nr_open: Some(65_536), ..Default::default() };
    let t = Target { connections: 100_000, per_destination: None, new_per_second: None };
    let items = target_items(t, &sys, &NetFacts::default(), Some((&proc(1_048_576, 3), Some(0))), None);
    assert_eq!(find(&items, "target_nr_open").status, Level::Fail);
    assert_eq!(find(&items, "target_file_max").status, Level::Fail);
    let fix = find(&items, "target_nofile").fix.clone();
    assert_eq!(fix, None, "its own limit is high enough: {fix:?}");
}

/// M + R × 60 ports toward one destination without tcp_tw_reuse, M + R with it.
#[test]
fn a_close_rate_adds_the_ports_time_wait_holds() {
    let ports = |range: (u16, u16), reuse: u32, m: u64, r: u64| {
        let net = NetFacts { port_range: Some(range), tcp_tw_reuse: Some(reuse), ..Default::default() };
        let t = Target { connections: m, per_destination: Some(m), new_per_second: Some(r) };
        let items = target_items(t, &SystemFacts::default(), &net, None, None);
        find(&items, "target_ports").clone()
    };
    // 28,232 usable: 1,000 + 100 × 60 = 7,000 fits without reuse.
    let ok = ports((32768, 60999), 0, 1_000, 100);
    assert_eq!((ok.status, ok.value["needed_with_time_wait"].as_u64()), (Level::Ok, Some(7_000)));
    assert!(ok.message.contains("about 6,000 more ports, 7,000 in all"), "{}", ok.message);
    assert_eq!(ok.fix, None);
    // 1,000 + 500 × 60 = 31,000 does not; reuse would make it 1,500: the fix says so.
    let fail = ports((32768, 60999), 2, 1_000, 500);
    assert_eq!((fail.status, fail.usage.as_deref()), (Level::Fail, Some("31,000/28,232")));
    assert!(fail.message.contains("tcp_tw_reuse=2 (loopback destinations only) does not let"), "{}", fail.message);
    let fix = fail.fix.as_deref().unwrap();
    assert!(fix.starts_with("sysctl -w net.ipv4.tcp_tw_reuse=1 and persist it in /etc/sysctl.d"), "{fix}");
    assert!(fix.contains("about 1,500 ports"), "{fix}");
    // With reuse on, a second's worth: 1,000 + 500.
    let reuse = ports((32768, 60999), 1, 1_000, 500);
    assert_eq!((reuse.status, reuse.value["needed_with_time_wait"].as_u64()), (Level::Ok, Some(1_500)));
    // 80 % of the range warns; past it with reuse on already, only widening is left.
    assert_eq!(ports((40000, 40099), 1, 50, 30).status, Level::Warn);
    let full = ports((40000, 40099), 1, 50, 60);
    assert_eq!(full.status, Level::Fail);
    assert!(full.fix.as_deref().unwrap().starts_with("widen net.ipv4.ip_local_port_range"), "{full:?}");
    // Huge inputs saturate instead of overflowing.
    assert_eq!(ports((1024, 65535), 0, u64::MAX, u64::MAX).status, Level::Fail);
}

#[test]
fn the_new_items_come_with_every_target() {
    // Without facts: the items that need none, and the new ones saying what is missing.
    let t = Target { connections: 100, per_destination: None, new_per_second: None };
    let items = target_items(t, &SystemFacts::default(), &NetFacts::default(), None, None);
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["target_nofile", "target_tcp_mem", "target_backlog"], "{items:#?}");
    let t = Target { new_per_second: Some(10), ..t };
    let items = target_items(t, &SystemFacts::default(), &NetFacts::default(), None, None);
    assert!(items.iter().any(|i| i.id == "target_tw_buckets"));
    for i in &items {
        assert!(!i.message.contains('?') && !i.message.contains("null"), "{i:?}");
    }
}

#[test]
fn a_huge_target_saturates() {
    let sys = SystemFacts { file_nr: Some((5, 100)), nr_open: Some(1_048_576), ..Default::default() };
    let net = NetFacts {
        conntrack: Some(Conntrack { count: Some(1), max: Some(10), ..Default::default() }),
        ..Default::default()
    };
    let t = Target { connections: u64::MAX, per_destination: Some(u64::MAX), new_per_second: Some(u64::MAX) };
    let items = target_items(t, &sys, &net, Some((&proc(1024, 3), None)), None);
    for id in ["target_nofile", "target_nr_open", "target_file_max", "target_conntrack"] {
        assert_eq!(find(&items, id).status, Level::Fail, "{id}");
    }
}
