//! Diagnosis depth: warnings (predictions) that come before the first failure, carry the time
//! left and say why they ended; plateaus in numbers; one cause per plateau.

use std::time::{Duration, SystemTime};

use super::fake::FakeEvidence as Fake;
use super::*;

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn window(t: u64, readings: &[(u32, u64, u64)]) -> Window {
    Window {
        now: Some(at(t)),
        interval_s: 1.0,
        fd_readings: readings.iter().map(|&(pid, open, limit)| FdReading { pid, open, limit }).collect(),
        ..Default::default()
    }
}

#[test]
fn a_leaking_process_is_warned_with_the_time_left_then_the_warning_resolves_when_it_fails() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    fake.comm = "python3";
    // +30 fds/s from 400 of 1,024.
    let mut warned = None;
    for t in 0..6 {
        let out = e.tick(&window(t, &[(1904, 400 + 30 * t, 1024)]), &mut fake);
        if let Some(v) = out.iter().find(|v| v.cause == Cause::FdPressure) {
            warned.get_or_insert((t, v.clone()));
        }
    }
    let (t, v) = warned.expect("a warning before the limit");
    assert_eq!(t, 3, "warned once the trend spans 3 s");
    assert_eq!(v.state, VerdictState::Warning);
    let Proof::FdPressure(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!((p.open_fds, p.nofile_soft, p.nofile_hard), (490, 1024, Some(4096)));
    assert_eq!(p.rate_per_s, 30.0);
    assert_eq!(p.seconds_left, 18, "(1,024 - 490) / 30");
    assert!(v.summary().contains("490 of 1,024 open"), "{}", v.summary());
    assert!(v.fix.iter().any(|f| f.contains("/proc/1904/fd")), "{:?}", v.fix);

    // Then EMFILE: the fd_limit verdict takes over and the warning resolves, saying so.
    let mut out = Vec::new();
    for t in 6..20 {
        let mut w = window(t, &[(1904, 1024, 1024)]);
        w.counts.insert(1904, crate::domain::model::Counts { emfile: 5, ..Default::default() });
        out.extend(e.tick(&w, &mut fake));
    }
    let resolved = out.iter().find(|v| v.cause == Cause::FdPressure).expect("the warning resolves");
    assert_eq!(resolved.state, VerdictState::Resolved);
    let why = resolved.resolution.as_deref().unwrap();
    assert!(why.contains("EMFILE failures began"), "{why}");
    assert!(resolved.summary().starts_with("warning over: "), "{}", resolved.summary());
    assert!(!resolved.summary().contains("about"), "no stale time left: {}", resolved.summary());
    assert!(out.iter().any(|v| v.cause == Cause::FdLimit && v.state == VerdictState::Active));
}

#[test]
fn a_raised_limit_or_a_leak_that_stops_resolves_the_warning_with_the_reason() {
    for (after, expect) in
        [((1000, 4096), "raised from 1,024 to 4,096"), ((700, 1024), "stopped growing, at 700 of 1,024")]
    {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake::new(Err(String::new()));
        for t in 0..5 {
            e.tick(&window(t, &[(7, 400 + 100 * t, 1024)]), &mut fake);
        }
        assert!(e.is_active(7, Cause::FdPressure));
        let mut out = Vec::new();
        for t in 5..40 {
            out.extend(e.tick(&window(t, &[(7, after.0, after.1)]), &mut fake));
        }
        let v = out.iter().find(|v| v.cause == Cause::FdPressure).expect("resolved");
        assert!(v.resolution.as_deref().unwrap().contains(expect), "{:?}", v.resolution);
    }
}

#[test]
fn steady_processes_and_slow_growth_far_from_the_limit_are_not_warned() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    for t in 0..60 {
        let busy = 300 + (t * 37 % 50);
        let out = e.tick(&window(t, &[(1, busy, 1024), (2, 500, 1024), (3, 1000 + t, 1_048_576)]), &mut fake);
        assert!(out.is_empty(), "t={t}: {out:?}");
    }
}

/// The fd_limit plateau in the numbers people compare with their load test, and an exited
/// process's verdict without a "?".
#[test]
fn fd_limit_names_the_connection_plateau_and_never_prints_a_question_mark() {
    let proof = |soft, open, sockets| FdLimitProof {
        nofile_soft: soft,
        nofile_hard: Some(4096),
        open_fds: open,
        sockets,
        note: None,
    };
    let v = fd_limit(1904, "python3".into(), at(0), 3, proof(Some(1024), Some(1024), Some(1021)));
    assert!(
        v.summary().starts_with(
            "python3[1904] is stuck at 1,021 concurrent connections: 1,024 file descriptors open at RLIMIT_NOFILE \
             1,024 (hard limit 4,096), 1,021 of them sockets and 3 other files"
        ),
        "{}",
        v.summary()
    );
    let gone = fd_limit(1904, "python3".into(), at(0), 3, proof(Some(1024), None, None));
    assert!(gone.summary().contains("limit of 1,024 file descriptors"), "{}", gone.summary());
    let json = serde_json::to_string(&gone.evidence).unwrap();
    assert!(!json.contains("null") && json.contains("exited"), "{json}");
    for v in [&v, &gone, &fd_limit(1, "x".into(), at(0), 1, proof(None, None, None))] {
        assert!(!v.summary().contains('?'), "{}", v.summary());
        assert!(v.fix.iter().all(|f| !f.contains('?')), "{:?}", v.fix);
    }
}

/// One plateau, one cause: a few connect() EADDRNOTAVAIL whose port search went unseen, from a
/// process exhausting its ports, join the ephemeral_ports verdict instead of making an
/// address_unavailable one with no address; with an address asked for, that verdict stands.
#[test]
fn unmatched_eaddrnotavail_joins_the_port_exhaustion_it_belongs_to() {
    use crate::domain::model::Counts;
    use std::net::{IpAddr, Ipv4Addr};
    let dest = Dest { netns: 7, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), port: 6379 };
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err("no namespace in this test".into()));
    let mut w = window(0, &[]);
    w.counts.insert(15120, Counts { port_assign_failures: 28_518, connect_addr_unavailable: 4, ..Default::default() });
    w.port_failures.insert((15120, dest.clone()), 28_518);
    // The unmatched failures' events: an unbound socket, no address asked for.
    w.unavailable_addrs.insert(15120, ["0.0.0.0:0".to_string()].into());
    let out = e.tick(&w, &mut fake);
    assert!(out.iter().all(|v| v.cause != Cause::AddressUnavailable), "{out:?}");
    let v = out.iter().find(|v| v.cause == Cause::EphemeralPorts).expect("ephemeral_ports");
    assert_eq!(v.failures, 28_522, "every EADDRNOTAVAIL of the plateau in its verdict");

    // A real foreign address is positive evidence: its own verdict, naming it.
    let mut e = Engine::new(Duration::from_secs(1));
    let mut w = window(0, &[]);
    w.counts.insert(15120, Counts { port_assign_failures: 10, connect_addr_unavailable: 4, ..Default::default() });
    w.port_failures.insert((15120, dest), 10);
    w.unavailable_addrs.insert(15120, ["192.0.2.1:0".to_string()].into());
    let out = e.tick(&w, &mut fake);
    let v = out.iter().find(|v| v.cause == Cause::AddressUnavailable).expect("address_unavailable");
    assert!(v.summary().contains("192.0.2.1:0"), "{}", v.summary());
}

/// A namespace's TIME_WAIT table filling toward tcp_max_tw_buckets: a warning charged to the
/// process creating the TIME_WAITs, resolved when the table stops growing.
#[test]
fn a_filling_tw_table_is_warned_and_charged_to_its_creator() {
    use crate::domain::model::Counts;
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    fake.comm = "php-fpm";
    let mut warned = None;
    for t in 0..6 {
        let mut w = window(t, &[]);
        w.tw_tables.insert(7, (1000 + 150 * t, 5000));
        w.counts.insert(9, Counts { time_wait_created: 150, ..Default::default() });
        w.counts.insert(10, Counts { time_wait_created: 3, ..Default::default() });
        for v in e.tick(&w, &mut fake) {
            warned.get_or_insert(v);
        }
    }
    let v = warned.expect("a warning");
    assert_eq!((v.cause, v.pid, v.state), (Cause::TwTablePressure, 9, VerdictState::Warning));
    let Proof::TwTablePressure(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!((p.time_wait, p.tcp_max_tw_buckets, p.rate_per_s, p.seconds_left, p.netns), (1450, 5000, 150.0, 24, 7));
    assert!(v.summary().contains("1,450 of net.ipv4.tcp_max_tw_buckets 5,000"), "{}", v.summary());
    let mut out = Vec::new();
    for t in 6..30 {
        let mut w = window(t, &[]);
        w.tw_tables.insert(7, (1750, 5000));
        out.extend(e.tick(&w, &mut fake));
    }
    let r = out.iter().find(|v| v.cause == Cause::TwTablePressure).expect("resolved");
    assert!(r.resolution.as_deref().unwrap().contains("stopped growing, at 1,750 of 5,000"), "{:?}", r.resolution);
}

/// An accept queue near its backlog for 3 s in a row is warned; a shorter burst is not, and a
/// drained queue resolves the warning.
#[test]
fn only_a_queue_that_stays_near_full_is_warned() {
    use crate::domain::listen::ListenerDelta;
    use std::net::{IpAddr, Ipv4Addr};
    let l = |queue| ListenerDelta {
        netns: 7,
        inode: 42,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 8080,
        drops: 0,
        queue_len: queue,
        backlog: 16,
        syn_recv: 0,
        cookies: 0,
    };
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    let tick = |e: &mut Engine, fake: &mut Fake, t: u64, busy: bool| {
        let mut w = window(t, &[]);
        if busy {
            w.busy_listeners.push((5, l(15)));
        }
        e.tick(&w, fake)
    };
    // A 2-second burst, then quiet: nothing.
    for t in 0..3 {
        assert!(tick(&mut e, &mut fake, t, true).is_empty());
    }
    assert!(tick(&mut e, &mut fake, 3, false).is_empty());
    // Sustained: warned at 3 s.
    let mut out = Vec::new();
    for t in 4..9 {
        out.extend(tick(&mut e, &mut fake, t, true));
    }
    let w = out.iter().find(|v| v.cause == Cause::AcceptQueuePressure).expect("warned");
    assert_eq!((w.pid, w.state), (5, VerdictState::Warning));
    let mut out = Vec::new();
    for t in 9..20 {
        out.extend(tick(&mut e, &mut fake, t, false));
    }
    let r = out.iter().find(|v| v.cause == Cause::AcceptQueuePressure).expect("resolved");
    assert!(r.resolution.as_deref().unwrap().contains("drained"), "{:?}", r.resolution);
}

/// A table whose steady state (TIME_WAITs per second × 60 s) stays below its limit levels off:
/// no warning, however steadily it grows in the first minute.
#[test]
fn a_tw_table_that_levels_off_below_its_limit_is_not_warned() {
    use crate::domain::model::Counts;
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    for t in 0..30 {
        let mut w = window(t, &[]);
        // 10 a second into 1,000: 600 at most.
        w.tw_tables.insert(7, (10 * t, 1000));
        w.counts.insert(9, Counts { time_wait_created: 10, ..Default::default() });
        assert!(e.tick(&w, &mut fake).is_empty(), "t={t}");
    }
}

#[test]
fn emfile_counted_from_a_hook_attached_just_before_is_a_floor() {
    let run = |counted_from: Option<SystemTime>| {
        let mut e = Engine::new(Duration::from_secs(1));
        let mut fake = Fake::new(Err(String::new()));
        let mut w = window(0, &[]);
        w.counts.insert(42, crate::domain::model::Counts { emfile: 18, enfile: 2, ..Default::default() });
        w.first_seen.insert((42, Cause::FdLimit), at(0) - Duration::from_millis(500));
        w.fd_counted_from = counted_from;
        e.tick(&w, &mut fake)
    };
    // Attached 0.3 s before the first failure it counted: earlier ones went unseen.
    let out = run(Some(at(0) - Duration::from_millis(800)));
    let fd = out.iter().find(|v| v.cause == Cause::FdLimit).unwrap();
    assert!(fd.summary().contains("; at least 18 calls failed with EMFILE since"), "{}", fd.summary());
    let Proof::FdLimit(p) = &fd.evidence else { panic!("{:?}", fd.evidence) };
    let note = p.note.clone().unwrap_or_default();
    assert!(note.contains("--syscall-hooks fd counts every one"), "{note}");
    let fm = out.iter().find(|v| v.cause == Cause::FileMax).unwrap();
    assert!(fm.summary().contains("got ENFILE at least 2 times"), "{}", fm.summary());
    // Attached long before (the process neared its limit first), or counted all the time: exact.
    for from in [Some(at(0) - Duration::from_secs(5)), None] {
        let out = run(from);
        let fd = out.iter().find(|v| v.cause == Cause::FdLimit).unwrap();
        assert!(fd.summary().contains("; 18 calls failed with EMFILE since"), "{}", fd.summary());
        let Proof::FdLimit(p) = &fd.evidence else { panic!("{:?}", fd.evidence) };
        assert_eq!(p.note, None);
    }
}
