//! check's rules on fixtures: what each limit item says, passes and fails.

use std::net::Ipv4Addr;

use super::*;
use crate::domain::net::{SysctlLine, TcpSocket};

fn sock(state: u8, sport: u16, dst: [u8; 4], dport: u16) -> TcpSocket {
    TcpSocket {
        state,
        src: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport,
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        dport,
        rqueue: 0,
        wqueue: 0,
        inode: 0,
        drops: None,
    }
}

fn net() -> NetFacts {
    let mut sockets: Vec<TcpSocket> = (0..45).map(|i| sock(net::TIME_WAIT, 40000 + i, [127, 0, 0, 2], 9000)).collect();
    sockets.extend((45..48).map(|i| sock(net::ESTABLISHED, 40000 + i, [127, 0, 0, 2], 9000)));
    sockets.push(sock(net::ESTABLISHED, 40049, [10, 0, 0, 1], 443));
    let mut l = sock(net::LISTEN, 8080, [0, 0, 0, 0], 0);
    l.rqueue = 129;
    l.wqueue = 128;
    sockets.push(l);
    NetFacts {
        port_range: Some((40000, 40049)),
        reserved: vec![],
        tcp_tw_reuse: Some(0),
        tcp_max_tw_buckets: Some(50),
        somaxconn: Some(4096),
        tcp_fin_timeout: Some(60),
        sockets,
        time_wait: Some(45),
        tcp_ext: Default::default(),
        conntrack: None,
        tcp_syncookies: Some(0),
        netns: Some(1),
    }
}

fn sys() -> SystemFacts {
    SystemFacts {
        file_nr: Some((960, 1000)),
        nr_open: Some(1048576),
        conntrack: None,
        tcp_mem: Some((100, 200, 300)),
        sockstat: [("mem".to_string(), 250u64)].into(),
        tw_recycle_lines: vec![SysctlLine { file: "/etc/sysctl.d/99-tuning.conf".into(), line: 7, value: "1".into() }],
        kernel_release: Some("6.1.0-18-amd64".into()),
        page_size: Some(4096),
    }
}

fn find<'a>(items: &'a [Item], id: &str) -> Vec<&'a Item> {
    items.iter().filter(|i| i.id == id).collect()
}

#[test]
fn every_item_has_the_right_level() {
    let procs = [
        ProcFds { pid: 7, comm: "nginx".into(), open: 1024, soft: Some(1024), hard: Some(524288) },
        ProcFds { pid: 8, comm: "idle".into(), open: 10, soft: Some(1024), hard: Some(4096) },
    ];
    let items = run(&sys(), &net(), &procs);
    let nofile = find(&items, "nofile");
    assert_eq!(nofile[0].status, Level::Fail);
    assert!(nofile[0].fix.as_ref().unwrap().contains("524288"));
    assert_eq!(nofile[1].status, Level::Ok);
    assert_eq!(find(&items, "file_max")[0].status, Level::Fail);
    let ports = find(&items, "ephemeral_port_usage");
    assert_eq!(ports[0].status, Level::Fail, "48 of 50 toward 127.0.0.2:9000");
    assert_eq!(ports[0].value["destination"], "127.0.0.2:9000");
    assert_eq!(ports[0].value["states"]["TIME_WAIT"], 45);
    // TIME_WAIT holds the ports and tw_reuse is off: the fix names it.
    assert!(ports[0].fix.as_ref().unwrap().contains("tcp_tw_reuse=1"));
    assert_eq!(ports[1].status, Level::Ok);
    // The line that still sets tcp_tw_recycle fails on 6.1, in place of the tcp_tw_recycle item.
    let recycle = find(&items, "tcp_tw_recycle_config");
    assert_eq!(recycle[0].status, Level::Fail);
    assert_eq!(recycle[0].fix.as_deref(), Some("delete line 7 of /etc/sysctl.d/99-tuning.conf"));
    assert!(find(&items, "tcp_tw_recycle").is_empty());
    assert_eq!(find(&items, "tcp_max_tw_buckets")[0].status, Level::Warn);
    assert_eq!(find(&items, "accept_queue")[0].status, Level::Fail);
    assert_eq!(find(&items, "tcp_syncookies")[0].status, Level::Warn);
    assert_eq!(find(&items, "tcp_mem")[0].status, Level::Warn);
    assert!(find(&items, "tcp_fin_timeout")[0].message.contains("does not shorten TIME_WAIT"));
    assert!(find(&items, "nf_conntrack").is_empty(), "not loaded: no item");
    assert_eq!(exit_code(&items), 1);
    assert_eq!((items[0].id.as_str(), items[0].status), ("nofile", Level::Fail));
}

#[test]
fn tw_reuse_advice_only_where_it_applies() {
    assert!(tw_reuse_applies(Some(1), "10.0.0.1".parse().unwrap()));
    assert!(tw_reuse_applies(Some(2), "127.0.0.2".parse().unwrap()));
    assert!(!tw_reuse_applies(Some(2), "10.0.0.1".parse().unwrap()));
    assert!(!tw_reuse_applies(Some(0), "127.0.0.1".parse().unwrap()));
    let mut n = net();
    n.tcp_tw_reuse = Some(2); // loopback destination: reuse already applies
    let items = run(&sys(), &n, &[]);
    assert!(!find(&items, "ephemeral_port_usage")[0].fix.as_ref().unwrap().contains("tcp_tw_reuse=1"));
}

#[test]
fn healthy_machine_exits_zero() {
    let mut s = sys();
    s.file_nr = Some((10, 1000));
    s.sockstat.clear();
    s.tw_recycle_lines.clear();
    let mut n = net();
    n.sockets.clear();
    n.time_wait = Some(0);
    n.port_range = Some((32768, 60999));
    n.tcp_syncookies = Some(1);
    let items = run(&s, &n, &[]);
    assert!(items.iter().all(|i| i.status == Level::Ok), "{items:#?}");
    assert_eq!(exit_code(&items), 0);
    assert!(items.iter().any(|i| i.id == "ip_local_port_range"));
    assert!(items.iter().any(|i| i.id == "tcp_tw_recycle"));
}
