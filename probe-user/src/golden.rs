//! Golden tests: the exact NDJSON line and text of every record type (status, sample, event,
//! each verdict cause active and resolved, check), pinned with insta. A change to any of them
//! shows up as a snapshot diff to review (`cargo insta review`), never silently: the JSON
//! contract in README is what scripts and dashboards parse.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use crate::{
    diagnosis::check::{self, ProcFds},
    diagnosis::verdict::{self, fake::FakeEvidence, Engine, FdReading, Verdict, Window},
    domain::model::{Counts, EventRecord, Sample},
    domain::net::{self as netdiag, TcpSocket},
    domain::net::{Conntrack, NetFacts, SysctlLine, SystemFacts},
    domain::status::{Losses, Mode, Signal, SignalStatus, Status},
    domain::{listen::ListenerDelta, net::Dest},
    render::output,
};

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn dest() -> Dest {
    Dest { netns: 7, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), port: 6379 }
}

fn sock(state: u8, sport: u16) -> TcpSocket {
    TcpSocket {
        state,
        src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        sport,
        dst: dest().addr,
        dport: dest().port,
        rqueue: 0,
        wqueue: 0,
        inode: 0,
        drops: None,
    }
}

/// A namespace with 40000-40049, 20 ESTABLISHED and 30 TIME_WAIT toward `dest`, a full tw
/// table of 30 and a full conntrack table.
fn net() -> NetFacts {
    let mut sockets: Vec<_> = (0..20).map(|i| sock(netdiag::ESTABLISHED, 40000 + i)).collect();
    sockets.extend((20..50).map(|i| sock(netdiag::TIME_WAIT, 40000 + i)));
    NetFacts {
        port_range: Some((40000, 40049)),
        tcp_tw_reuse: Some(2),
        tcp_max_tw_buckets: Some(30),
        somaxconn: Some(4096),
        tcp_syncookies: Some(1),
        tcp_fin_timeout: Some(60),
        sockets,
        time_wait: Some(30),
        tcp_ext: [("TCPTimeWaitOverflow".to_string(), 12)].into(),
        conntrack: Some(Conntrack {
            count: Some(65536),
            max: Some(65536),
            stats: [("drop".to_string(), 40), ("insert_failed".to_string(), 0)].into(),
        }),
        netns: Some(7),
        ..Default::default()
    }
}

/// The rules' facts: every process `app<pid>` at its fd limit, in namespace 7 with `net()`.
fn fake() -> FakeEvidence {
    let mut f = FakeEvidence { comm: "app", comm_pid: true, ..FakeEvidence::new(Ok(net())) };
    f.tcp_mem.sockstat.insert("orphan".into(), 2);
    f
}

/// One interval in which every cause fails once, for its own process.
fn failing_window() -> Window {
    let mut w = Window { now: Some(at(0)), interval_s: 1.0, ..Default::default() };
    let mut c = |pid: u32, f: &dyn Fn(&mut Counts)| {
        let mut counts = Counts::default();
        f(&mut counts);
        w.counts.insert(pid, counts);
    };
    c(101, &|c| c.emfile = 10);
    c(102, &|c| c.enfile = 3);
    c(103, &|c| c.tw_overflows = 12);
    c(104, &|c| {
        c.bind_failures = 5;
        c.bound_connects = 40;
    });
    c(105, &|c| {
        c.bind_errors.insert("EADDRNOTAVAIL".into(), 2);
        c.connect_addr_unavailable = 1;
    });
    c(106, &|c| c.tcp_mem_send_refused = 7);
    c(107, &|c| c.netfilter_drops = 9);
    c(108, &|c| c.port_assign_failures = 30);
    c(110, &|_| {});
    c(111, &|_| {});
    w.port_failures.insert((108, dest()), 30);
    w.unavailable_addrs.insert(105, ["192.0.2.1:8080".to_string()].into());
    w.first_seen.insert((101, verdict::Cause::FdLimit), at(0) - Duration::from_millis(400));
    let listener = |pid, drops, cookies, queue_len, syn_recv| {
        (
            pid,
            ListenerDelta {
                netns: 7,
                inode: 1,
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                port: 8080,
                drops,
                queue_len,
                backlog: 511,
                syn_recv,
                cookies,
            },
            BTreeMap::new(),
        )
    };
    w.listener_drops.push(listener(110, 25, 0, 512, 3));
    w.listener_drops.push(listener(111, 40, 12, 0, 256));
    w
}

fn render(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    for v in verdicts {
        // `ts` is when the line was written (the wall clock); the rest is fixed.
        let mut j = crate::render::verdict::to_json(v);
        j["ts"] = "<now>".into();
        out.push_str(&j.to_string());
        out.push('\n');
        out.push_str(&crate::render::verdict::to_text(v));
        out.push_str("\n\n");
    }
    out
}

#[test]
fn verdict_records() {
    let mut e = Engine::new(Duration::from_secs(1));
    let active = e.tick(&failing_window(), &mut fake());
    insta::assert_snapshot!("verdicts_active", render(&active));
    let quiet = Window { now: Some(at(30)), interval_s: 1.0, ..Default::default() };
    let resolved = e.tick(&quiet, &mut fake());
    insta::assert_snapshot!("verdicts_resolved", render(&resolved));
}

#[test]
fn time_wait_pressure_record() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut w = Window { now: Some(at(0)), interval_s: 1.0, ..Default::default() };
    w.counts.insert(120, Counts { time_wait_created: 20, ..Default::default() });
    w.time_waits.insert((120, dest()), 20);
    insta::assert_snapshot!("verdict_time_wait_pressure", render(&e.tick(&w, &mut fake())));
}

/// Ports in use toward an upstream: `n` established.
fn port_reading(n: u64) -> crate::domain::net::PortReading {
    let upstream = crate::domain::net::Dest { netns: 7, addr: "10.0.0.5".parse().unwrap(), port: 6379 };
    crate::domain::net::PortReading {
        dest: upstream,
        in_use: n,
        usable: 28_232,
        range: (32768, 60999),
        states: [("ESTABLISHED", n)].into(),
        inode: Some(1),
    }
}

/// Warnings (TIME_WAIT churn, a leaking process, a pool ramping toward the port range), and
/// each resolved with the reason.
#[test]
fn warning_records() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut out = Vec::new();
    let mut ev = fake();
    ev.socket_owner = Some(122);
    for t in 0..5 {
        let mut w = Window { now: Some(at(t)), interval_s: 1.0, ..Default::default() };
        w.counts.insert(120, Counts { time_wait_created: 20, ..Default::default() });
        w.time_waits.insert((120, dest()), 20);
        w.fd_readings.push(FdReading { pid: 121, open: 500 + 40 * t, limit: 1024 });
        w.port_readings.push(port_reading(20_000 + 250 * t));
        out.extend(e.tick(&w, &mut ev));
    }
    for t in 5..30 {
        let mut w = Window { now: Some(at(t)), interval_s: 1.0, ..Default::default() };
        w.fd_readings.push(FdReading { pid: 121, open: 660, limit: 1024 });
        w.port_readings.push(port_reading(21_250));
        out.extend(e.tick(&w, &mut ev));
    }
    insta::assert_snapshot!("verdict_warnings", render(&out));
    assert!(out.iter().any(|v| v.cause == crate::diagnosis::verdict::Cause::PortPressure));
}

#[test]
fn status_record() {
    let sig = |mode, exact, hooks: &[&str], note: Option<&str>| SignalStatus {
        mode,
        exact,
        hooks: hooks.iter().map(|h| h.to_string()).collect(),
        note: note.map(str::to_string),
        armed: None,
    };
    let s = Status {
        kernel: "6.12.117+deb12-amd64".into(),
        signals: vec![
            (
                Signal::PortAssign,
                sig(Mode::Fexit, true, &["fexit/inet_hash_connect", "fexit/inet6_hash_connect"], None),
            ),
            (
                Signal::TimeWait,
                sig(Mode::TpBtf, true, &["tp_btf/inet_sock_set_state"], Some("fexit: refused by this kernel (EPERM)")),
            ),
            (Signal::TwOverflow, sig(Mode::TpBtf, false, &["tp_btf/inet_sock_set_state"], None)),
            (Signal::FdAlloc, sig(Mode::RawTracepoint, true, &["raw_tracepoint/sys_exit"], None)),
            (Signal::Connect, sig(Mode::Tracepoint, true, &["tracepoint/syscalls/sys_enter_connect"], None)),
            (Signal::Bind, sig(Mode::Kprobe, false, &["kprobe/inet_bind"], None)),
            (Signal::TcpMem, sig(Mode::Unavailable, false, &[], Some("tp_btf: hook not present in this kernel"))),
            (Signal::AcceptQueue, sig(Mode::SockDiag, true, &[], None)),
        ],
        losses: Losses {
            dropped_events: 3,
            counter_map_full: 0,
            owner_map_full: 1,
            owners_evicted: 7,
            inflight_map_full: 0,
            connect_returns_lost: 0,
            skipped_runs: [("bind_kprobe".to_string(), 2)].into(),
        },
        watched: vec![(1234, true), (99, false)],
        missing_offsets: vec!["sock.sk_drops".into()],
        recording: None,
    };
    let out = format!("{}\n{}", crate::render::status::status_json(at(0), &s), crate::render::status::status_text(&s));
    insta::assert_snapshot!("status", out);
}

#[test]
fn sample_records() {
    let mut counts = Counts {
        connect_attempts: 100,
        connect_ok: 60,
        connect_async_ok: 10,
        connect_async_errors: 2,
        port_assign_failures: 30,
        time_wait_created: 55,
        emfile: 4,
        enfile: 1,
        tw_overflows: 6,
        bind_failures: 2,
        bound_connects: 8,
        listen_drops: 5,
        syncookies: 3,
        listens: 1,
        tcp_mem_send_refused: 2,
        tcp_mem_recv_refused: 1,
        memcg_refused: 1,
        netfilter_drops: 7,
        ..Default::default()
    };
    counts.connect_errors.insert("EADDRNOTAVAIL".into(), 30);
    counts.connect_errors.insert("ECONNREFUSED".into(), 10);
    counts.bind_errors.insert("EADDRINUSE".into(), 2);
    let samples = [
        Sample {
            pid: 1234,
            comm: "nginx".into(),
            interval_s: 1.0,
            counts,
            nofile_limit: Some(1024),
            open_fds: Some(1021),
        },
        Sample {
            pid: 0,
            comm: "(unattributed)".into(),
            interval_s: 1.0,
            counts: Counts { time_wait_created: 2, ..Default::default() },
            nofile_limit: None,
            open_fds: None,
        },
    ];
    let mut out = String::new();
    for s in &samples {
        out.push_str(&output::sample_json(at(0), s).to_string());
        out.push('\n');
    }
    out.push_str(&output::interval_text(at(0), &samples));
    insta::assert_snapshot!("samples", out);
}

#[test]
fn event_records() {
    let base = EventRecord {
        ts: at(0) + Duration::from_millis(123),
        kind: "port_assign_failure",
        pid: 1234,
        tid: 1235,
        comm: "client".into(),
        errno: "EADDRNOTAVAIL".into(),
        netns: Some(4026531840),
        saddr: Some("10.0.0.1".into()),
        sport: Some(0),
        daddr: Some("10.0.0.5".into()),
        dport: Some(6379),
        limit: None,
        syscall_nr: None,
        is_async: false,
        suppressed: 0,
    };
    let events = [
        base.clone(),
        EventRecord {
            kind: "emfile",
            errno: "EMFILE".into(),
            netns: None,
            saddr: None,
            sport: None,
            daddr: None,
            dport: None,
            limit: Some(1024),
            syscall_nr: Some(43),
            suppressed: 17,
            ..base.clone()
        },
        EventRecord { kind: "connect_error", errno: "ECONNREFUSED".into(), tid: 0, is_async: true, ..base.clone() },
        EventRecord {
            kind: "bind_error",
            errno: "EADDRNOTAVAIL".into(),
            saddr: Some("192.0.2.1".into()),
            sport: Some(8080),
            daddr: None,
            dport: None,
            ..base
        },
    ];
    let mut out = String::new();
    for e in &events {
        out.push_str(&output::event_json(e).to_string());
        out.push('\n');
        out.push_str(&output::event_text(e));
        out.push('\n');
    }
    insta::assert_snapshot!("events", out);
}

#[test]
fn check_records() {
    let sys = SystemFacts {
        file_nr: Some((9_000, 10_000)),
        nr_open: Some(1_048_576),
        conntrack: Some((65_000, 65_536)),
        tcp_mem: Some((8, 16, 24)),
        sockstat: [("mem".to_string(), 20), ("tw".to_string(), 30), ("inuse".to_string(), 50)].into(),
        tw_recycle_lines: vec![SysctlLine { file: "/etc/sysctl.d/99-old.conf".into(), line: 3, value: "1".into() }],
        kernel_release: Some("6.1.0-18-amd64".into()),
        page_size: Some(4096),
    };
    let procs = [ProcFds { pid: 1234, comm: "nginx".into(), open: 1000, soft: Some(1024), hard: Some(4096) }];
    let items = check::run(&sys, &net(), &procs);
    let out = format!("{}\n{}", crate::render::check::to_json(&items), crate::render::check::to_text(&items));
    insta::assert_snapshot!("check", out);
}

/// `check --pid 1234 --connections 10000 --outbound-per-destination 1000 --new-per-second 100`
/// in `net()` with a listener capped by somaxconn 128.
#[test]
fn check_target_records() {
    let sys = SystemFacts {
        file_nr: Some((9_000, 100_000)),
        nr_open: Some(1_048_576),
        conntrack: Some((65_000, 65_536)),
        tcp_mem: Some((8_000, 16_000, 24_000)),
        sockstat: [("mem".to_string(), 200), ("alloc".to_string(), 100), ("inuse".to_string(), 50)].into(),
        page_size: Some(4096),
        ..Default::default()
    };
    let mut net = net();
    net.somaxconn = Some(128);
    net.sockets.push(TcpSocket { state: netdiag::LISTEN, sport: 8080, wqueue: 128, ..sock(netdiag::LISTEN, 8080) });
    let p = ProcFds { pid: 1234, comm: "nginx".into(), open: 20, soft: Some(1024), hard: Some(4096) };
    let t = check::Target { connections: 10_000, per_destination: Some(1_000), new_per_second: Some(100) };
    let items = check::target_items(t, &sys, &net, Some((&p, Some(10))), Some(&check::LimitSource::Inherited));
    let out = format!("{}\n{}", crate::render::check::to_json(&items), crate::render::check::to_text(&items));
    insta::assert_snapshot!("check_target", out);
}
