//! The port warning: connections toward one destination ramping toward the usable range are
//! warned about with the time left, charged to who holds them; a steady pool is not; the
//! warning ends saying why.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use super::fake::FakeEvidence as Fake;
use super::*;

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn redis() -> Dest {
    Dest { netns: 7, addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), port: 6379 }
}

fn reading(established: u64, time_wait: u64) -> PortReading {
    let mut states = std::collections::BTreeMap::new();
    states.insert("ESTABLISHED", established);
    if time_wait > 0 {
        states.insert("TIME_WAIT", time_wait);
    }
    PortReading {
        dest: redis(),
        in_use: established + time_wait,
        usable: 28_232,
        range: (32768, 60999),
        states,
        inode: Some(4242),
    }
}

fn window(t: u64, readings: Vec<PortReading>) -> Window {
    Window { now: Some(at(t)), interval_s: 1.0, port_readings: readings, ..Default::default() }
}

#[test]
fn a_ramp_toward_one_destination_is_warned_with_the_time_left() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    fake.comm = "python3";
    fake.socket_owner = Some(1904);
    let mut warned = None;
    // +200 connections a second from 20,000 of 28,232.
    for t in 0..5 {
        for v in e.tick(&window(t, vec![reading(20_000 + 200 * t, 100)]), &mut fake) {
            warned.get_or_insert(v);
        }
    }
    let v = warned.expect("a warning");
    assert_eq!((v.cause, v.pid, v.state), (Cause::PortPressure, 1904, VerdictState::Warning));
    assert_eq!(v.destination, Some(redis()));
    let Proof::PortPressure(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    // 20,700 in use after 3 s at +200/s: (28,232 - 20,700) / 200 = 37.7 s.
    assert_eq!((p.in_use, p.usable, p.rate_per_s, p.seconds_left, p.netns), (20_700, 28_232, 200.0, 38, 7));
    assert_eq!(p.range, "32768-60999");
    let s = v.summary();
    assert!(s.contains("python3[1904]'s connections toward 10.0.0.5:6379"), "{s}");
    assert!(s.contains("20,700 of 28,232 usable in use (20,600 ESTABLISHED, 100 TIME_WAIT)"), "{s}");
    assert!(s.contains("at most 28,232 concurrent connections"), "{s}");
    assert!(!s.contains('?'), "{s}");
    // The pool levels off: the warning resolves, saying so.
    let mut out = Vec::new();
    for t in 5..40 {
        out.extend(e.tick(&window(t, vec![reading(21_000, 100)]), &mut fake));
    }
    let r = out.iter().find(|v| v.cause == Cause::PortPressure).expect("resolved");
    assert_eq!(r.state, VerdictState::Resolved);
    let why = r.resolution.as_deref().unwrap_or_default();
    assert!(why.contains("stopped growing, at 21,100 of 28,232"), "{why}");
}

#[test]
fn a_steady_pool_near_the_range_is_not_warned() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    fake.socket_owner = Some(1904);
    for t in 0..30 {
        // 27,000 of 28,232, going up and down by a few.
        let n = 27_000 + (t % 3) * 5;
        let out = e.tick(&window(t, vec![reading(n, 0)]), &mut fake);
        assert!(out.is_empty(), "{out:?}");
    }
}

#[test]
fn without_a_known_holder_the_time_wait_creator_is_charged_or_nobody() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    let mut all = Vec::new();
    for t in 0..5 {
        let mut r = reading(100, 20_000 + 300 * t);
        r.inode = None;
        let mut w = window(t, vec![r]);
        w.time_waits.insert((77, redis()), 300);
        w.time_waits.insert((78, redis()), 3);
        all.extend(e.tick(&w, &mut fake));
    }
    let v = all.iter().find(|v| v.cause == Cause::PortPressure).expect("a warning");
    assert_eq!(v.pid, 77);
    // Nobody known at all: no warning (it would be charged to nobody).
    let mut e = Engine::new(Duration::from_secs(1));
    for t in 0..5 {
        let mut r = reading(20_000 + 300 * t, 0);
        r.inode = None;
        assert!(e.tick(&window(t, vec![r]), &mut fake).is_empty());
    }
}

#[test]
fn a_process_binding_before_connect_is_warned_about_the_whole_range() {
    use crate::domain::model::Counts;
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    fake.comm = "envoy";
    fake.socket_owner = Some(50);
    let mut out = Vec::new();
    // 4 destinations, 25 bound connects a second in all: the range (400) runs out at 400
    // connections, each destination's share long before its own 400.
    for t in 0..5 {
        let mut w = window(t, vec![reading(100 + 25 * t, 0)]);
        w.range_use.insert(7, (100 + 25 * t, 400));
        w.counts.insert(50, Counts { bound_connects: 25, ..Default::default() });
        out.extend(e.tick(&w, &mut fake));
    }
    let v = out.iter().find(|v| v.cause == Cause::BindPressure).expect("a warning");
    assert_eq!((v.pid, v.state), (50, VerdictState::Warning));
    let Proof::TablePressure(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!((p.value, p.limit, p.unit, p.seconds_left, p.netns), (175, 400, "ports", 9, Some(7)));
    assert!(v.summary().contains("envoy[50] binds before connect()"), "{}", v.summary());
    assert!(!out.iter().any(|v| v.cause == Cause::PortPressure), "the whole range runs out first: {out:?}");
}
