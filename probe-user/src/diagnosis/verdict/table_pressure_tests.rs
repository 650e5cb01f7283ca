//! Table warnings: conntrack entries and TCP memory rising toward their limits.

use std::time::{Duration, SystemTime};

use super::fake::FakeEvidence as Fake;
use super::*;
use crate::domain::model::Counts;

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn window(t: u64) -> Window {
    Window { now: Some(at(t)), interval_s: 1.0, ..Default::default() }
}

#[test]
fn conntrack_entries_filling_are_warned_and_charged_to_the_busiest_connector() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    fake.comm = "haproxy";
    let mut out = Vec::new();
    // +100 entries a second from 5,000 of 12,000 (the fake puts every process in namespace 7).
    for t in 0..5 {
        let mut w = window(t);
        w.conntrack_tables.insert(7, (5_000 + 100 * t, 12_000));
        w.counts.insert(30, Counts { connect_attempts: 100, ..Default::default() });
        w.counts.insert(31, Counts { connect_attempts: 2, ..Default::default() });
        out.extend(e.tick(&w, &mut fake));
    }
    let v = out.iter().find(|v| v.cause == Cause::ConntrackPressure).expect("a warning");
    assert_eq!((v.pid, v.state), (30, VerdictState::Warning));
    let Proof::TablePressure(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!(
        (p.value, p.limit, p.unit, p.rate_per_s, p.seconds_left, p.netns),
        (5_300, 12_000, "entries", 100.0, 67, Some(7))
    );
    assert!(v.summary().contains("5,300 of net.netfilter.nf_conntrack_max 12,000 entries"), "{}", v.summary());
    // It levels off (churn replacing expiring entries): the warning ends, saying so.
    let mut out = Vec::new();
    for t in 5..40 {
        let mut w = window(t);
        w.conntrack_tables.insert(7, (5_400, 12_000));
        out.extend(e.tick(&w, &mut fake));
    }
    let r = out.iter().find(|v| v.cause == Cause::ConntrackPressure).expect("resolved");
    let why = r.resolution.as_deref().unwrap_or_default();
    assert!(why.contains("stopped growing, at 5,400 of 12,000"), "{why}");
}

#[test]
fn a_conntrack_table_that_fills_only_after_the_entries_expire_is_not_warned() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    // +50 a second from 1,000 of 262,144: 5,200 s at that rate, and entries expire after 120 s.
    for t in 0..20 {
        let mut w = window(t);
        w.conntrack_tables.insert(7, (1_000 + 50 * t, 262_144));
        assert!(e.tick(&w, &mut fake).is_empty());
    }
}

#[test]
fn tcp_memory_rising_toward_pressure_is_warned_for_every_socket() {
    let mut e = Engine::new(Duration::from_secs(1));
    let mut fake = Fake::new(Err(String::new()));
    let mut out = Vec::new();
    // +2,000 pages a second from 100,000 toward a pressure threshold of 180,000 (4 KiB pages).
    for t in 0..5 {
        let mut w = window(t);
        w.tcp_mem_use = Some((100_000 + 2_000 * t, 180_000, 4096));
        out.extend(e.tick(&w, &mut fake));
    }
    let v = out.iter().find(|v| v.cause == Cause::TcpMemPressure).expect("a warning");
    assert_eq!((v.pid, v.comm.as_str()), (NOBODY_IN_PARTICULAR, "(all TCP sockets)"));
    let Proof::TablePressure(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!((p.value, p.limit, p.unit, p.seconds_left, p.netns), (106_000, 180_000, "pages", 37, None));
    let s = v.summary();
    assert!(s.contains("106,000 of 180,000 pages (414 of 703 MiB)"), "{s}");
    assert!(!s.contains('?'), "{s}");
}
