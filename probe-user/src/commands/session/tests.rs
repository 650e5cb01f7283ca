//! The interval step on fake kernel snapshots and a fake host: what reaches the samples and
//! verdicts, what is forgotten, and when evidence is read.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use probe_common::counters::{kind, CountKey, DestKey, UNATTRIBUTED};

use super::*;
use crate::{
    diagnosis::verdict::{Cause, Proof, VerdictState},
    domain::{
        listen::ListenerDelta,
        net::{self, NetFacts, Nofile, TcpMem, TcpSocket},
    },
};

/// A host whose processes, limits and namespaces the test sets; counts what was read.
#[derive(Default)]
struct FakeHost {
    /// Running processes: name and RLIMIT_NOFILE/open fds.
    procs: BTreeMap<u32, (String, Nofile)>,
    netns: BTreeMap<u32, u32>,
    net: BTreeMap<u32, NetFacts>,
    /// What the next listener poll returns.
    poll: Option<ListenPoll>,
    /// The namespace the kernel recorded with a process's tw-bucket overflows.
    tw_netns: BTreeMap<u32, u32>,
    nofile_reads: u32,
    net_reads: u32,
}

impl FakeHost {
    fn with(mut self, pid: u32, comm: &str, nofile: Nofile) -> FakeHost {
        self.procs.insert(pid, (comm.into(), nofile));
        self.netns.insert(pid, NS);
        self
    }
}

impl Host for FakeHost {
    fn exists(&mut self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }
    fn comm(&mut self, pid: u32) -> Option<String> {
        self.procs.get(&pid).map(|p| p.0.clone())
    }
    fn nofile(&mut self, pid: u32) -> Nofile {
        self.nofile_reads += 1;
        self.procs.get(&pid).map(|p| p.1).unwrap_or_default()
    }
    fn netns(&mut self, pid: u32) -> Option<u32> {
        self.netns.get(&pid).copied()
    }
    fn net(&mut self, _pid: u32, netns: u32) -> Result<NetFacts, String> {
        self.net_reads += 1;
        self.net.get(&netns).cloned().ok_or_else(|| format!("network namespace {netns} is gone"))
    }
    fn port_limits(&mut self, _pid: u32, netns: u32) -> Result<NetFacts, String> {
        let mut f = self.net.get(&netns).cloned().ok_or_else(|| format!("network namespace {netns} is gone"))?;
        f.sockets.clear();
        Ok(f)
    }
    fn file_nr(&mut self) -> Option<(u64, u64)> {
        Some((10, 100))
    }
    fn tcp_mem(&mut self) -> TcpMem {
        TcpMem::default()
    }
    fn tw_table(&mut self, pid: u32) -> Option<crate::diagnosis::verdict::TwTable> {
        let netns = *self.tw_netns.get(&pid)?;
        Some(crate::diagnosis::verdict::TwTable { count: 10, max: 10, netns, _pad: 0 })
    }
    fn poll_listeners(&mut self, _watched: &[u32]) -> ListenPoll {
        self.poll.take().unwrap_or(ListenPoll {
            dropped: Vec::new(),
            by_ns: BTreeMap::new(),
            tw_tables: BTreeMap::new(),
            busy: Vec::new(),
            ports: Vec::new(),
            range_use: BTreeMap::new(),
            conntrack: BTreeMap::new(),
            tcp_mem: None,
        })
    }
}

const NS: u32 = 4026531840;

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + s)
}

fn key(tgid: u32, kind: u16) -> CountKey {
    CountKey { tgid, kind, aux: 0 }
}

fn server() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))
}

fn dest_key(tgid: u32, kind: u16) -> DestKey {
    let mut daddr = [0; 16];
    daddr[..4].copy_from_slice(&[10, 0, 0, 5]);
    DestKey { tgid, netns: NS, kind, family: libc::AF_INET as u16, dport: 6379, _pad: 0, daddr }
}

fn event(kind: &'static str, pid: u32, ts: SystemTime) -> EventRecord {
    EventRecord {
        ts,
        kind,
        pid,
        tid: pid,
        comm: "app".into(),
        errno: String::new(),
        netns: Some(NS),
        saddr: None,
        sport: None,
        daddr: None,
        dport: None,
        limit: None,
        syscall_nr: None,
        is_async: false,
        suppressed: 0,
    }
}

fn session(pids: &[u32]) -> Session {
    let filter = Filter { pids: pids.iter().copied().collect(), comms: Vec::new() };
    Session::new(filter, Duration::from_secs(1), Snapshot::new(), BTreeMap::new(), false)
}

/// One interval: ask who exited, "read" `cur`, end it.
fn step(s: &mut Session, host: &mut FakeHost, cur: Snapshot, cur_dest: BTreeMap<DestKey, u64>, t: u64) -> Step {
    let gone_before = s.exited(host);
    s.end(Read { gone_before, cur, cur_dest }, at(t), 1.0, host)
}

fn nofile(soft: u64, open: u64) -> Nofile {
    Nofile { soft: Some(soft), hard: Some(4096), open: Some(open) }
}

#[test]
fn emfile_becomes_a_sample_and_a_verdict_with_the_limits_read_at_the_failure() {
    let mut host = FakeHost::default().with(42, "python3", nofile(1024, 1024));
    let mut s = session(&[]);
    let mut e = event("emfile", 42, at(0) + Duration::from_millis(250));
    e.limit = Some(1024);
    assert!(s.event(&e, &mut host));
    assert_eq!(host.nofile_reads, 1, "evidence is read at the first failure");
    // By the end of the interval the process has closed most of its fds.
    host.procs.insert(42, ("python3".into(), nofile(1024, 12)));
    let out = step(&mut s, &mut host, [(key(42, kind::EMFILE), 7)].into(), BTreeMap::new(), 1);

    assert_eq!(out.samples.len(), 1);
    let sample = &out.samples[0];
    assert_eq!((sample.pid, sample.comm.as_str(), sample.counts.emfile), (42, "python3", 7));
    assert_eq!((sample.nofile_limit, sample.open_fds), (Some(1024), Some(12)), "the sample says what is true now");
    assert_eq!(out.verdicts.len(), 1);
    let v = &out.verdicts[0];
    assert_eq!((v.cause, v.pid, v.failures, v.state), (Cause::FdLimit, 42, 7, VerdictState::Active));
    assert_eq!(v.since, at(0) + Duration::from_millis(250), "since the first failure event");
    let Proof::FdLimit(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!(p.open_fds, Some(1024), "the verdict says what was true at the failure");
}

#[test]
fn growth_is_counted_once_and_a_quiet_interval_resolves_nothing_early() {
    let mut host = FakeHost::default().with(42, "python3", nofile(1024, 1024));
    let mut s = session(&[]);
    let out = step(&mut s, &mut host, [(key(42, kind::EMFILE), 3)].into(), BTreeMap::new(), 1);
    assert_eq!(out.samples[0].counts.emfile, 3);
    let out = step(&mut s, &mut host, [(key(42, kind::EMFILE), 10)].into(), BTreeMap::new(), 2);
    assert_eq!(out.samples[0].counts.emfile, 7, "the delta since the last read");
    assert!(out.verdicts.is_empty(), "an active verdict is not printed again");
    let out = step(&mut s, &mut host, [(key(42, kind::EMFILE), 10)].into(), BTreeMap::new(), 3);
    assert!(out.samples.is_empty(), "no growth, no sample");
}

#[test]
fn an_exited_process_is_reported_one_last_time_then_forgotten() {
    let mut host = FakeHost::default().with(7, "cron", nofile(1024, 5));
    let mut s = session(&[]);
    let out = step(&mut s, &mut host, [(key(7, kind::CONNECT_ATTEMPT), 2)].into(), BTreeMap::new(), 1);
    assert!(out.forget.is_empty());
    // It made one more connect, then exited before the next read.
    host.procs.remove(&7);
    let cur: Snapshot = [(key(7, kind::CONNECT_ATTEMPT), 3)].into();
    let out = step(&mut s, &mut host, cur, BTreeMap::new(), 2);
    assert_eq!(out.samples.len(), 1);
    assert_eq!((out.samples[0].comm.as_str(), out.samples[0].counts.connect_attempts), ("?", 1));
    assert_eq!(out.samples[0].nofile_limit, None, "no /proc, no event told it");
    assert_eq!(out.forget, vec![key(7, kind::CONNECT_ATTEMPT)]);
    // The kernel map no longer has it: nothing is reported as negative growth.
    let out = step(&mut s, &mut host, Snapshot::new(), BTreeMap::new(), 3);
    assert!(out.samples.is_empty() && out.forget.is_empty());
}

#[test]
fn a_process_that_exits_after_the_read_keeps_its_counters_one_more_interval() {
    let mut host = FakeHost::default().with(7, "cron", nofile(1024, 5));
    let mut s = session(&[]);
    step(&mut s, &mut host, [(key(7, kind::EMFILE), 1)].into(), BTreeMap::new(), 1);
    let gone_before = s.exited(&mut host);
    // Exits between the read and the end of the interval: its last increments may not be
    // in this read, so its counters stay.
    host.procs.remove(&7);
    let read = Read { gone_before, cur: [(key(7, kind::EMFILE), 2)].into(), cur_dest: BTreeMap::new() };
    let out = s.end(read, at(2), 1.0, &mut host);
    assert!(out.forget.is_empty());
    assert_eq!(out.samples[0].counts.emfile, 1);
}

#[test]
fn the_limit_from_an_emfile_event_outlives_the_process() {
    let mut host = FakeHost::default();
    let mut s = session(&[]);
    let mut e = event("emfile", 9, at(0));
    e.limit = Some(256);
    s.event(&e, &mut host);
    let out = step(&mut s, &mut host, [(key(9, kind::EMFILE), 1)].into(), BTreeMap::new(), 1);
    assert_eq!(out.samples[0].nofile_limit, Some(256));
    assert_eq!(out.samples[0].open_fds, None);
}

#[test]
fn the_pid_filter_keeps_other_processes_out_and_shows_idle_watched_ones() {
    let mut host = FakeHost::default().with(42, "nginx", nofile(1024, 10)).with(43, "curl", nofile(1024, 10));
    let mut s = session(&[42]);
    assert!(!s.event(&event("emfile", 43, at(0)), &mut host), "another process's event is not printed");
    let cur: Snapshot = [(key(43, kind::EMFILE), 5)].into();
    let out = step(&mut s, &mut host, cur, BTreeMap::new(), 1);
    assert_eq!(out.samples.iter().map(|s| s.pid).collect::<Vec<_>>(), vec![42], "the watched process, idle");
    assert!(out.samples[0].counts.is_empty());
    assert!(out.verdicts.is_empty(), "no verdict about an unwatched process");
}

#[test]
fn unattributed_counts_are_shown_but_never_diagnosed() {
    let mut host = FakeHost::default();
    let mut s = session(&[]);
    let out = step(&mut s, &mut host, [(key(UNATTRIBUTED, kind::EMFILE), 4)].into(), BTreeMap::new(), 1);
    assert_eq!(out.samples[0].comm, "(unattributed)");
    assert!(out.verdicts.is_empty());
}

fn ports_full(range: (u16, u16)) -> NetFacts {
    let sockets = (range.0..=range.1)
        .map(|sport| TcpSocket {
            state: net::TIME_WAIT,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport,
            dst: server(),
            dport: 6379,
            rqueue: 0,
            wqueue: 0,
            inode: 0,
            drops: None,
        })
        .collect();
    NetFacts { port_range: Some(range), tcp_tw_reuse: Some(0), sockets, netns: Some(NS), ..Default::default() }
}

#[test]
fn port_failures_per_destination_name_the_destination_with_ports_read_at_the_failure() {
    let mut host = FakeHost::default().with(5, "client", nofile(1024, 10));
    host.net.insert(NS, ports_full((40000, 40009)));
    let mut s = session(&[]);
    let mut e = event("port_assign_failure", 5, at(0));
    (e.daddr, e.dport) = (Some("10.0.0.5".into()), Some(6379));
    s.event(&e, &mut host);
    s.event(&e, &mut host);
    assert_eq!(host.net_reads, 1, "one read per namespace, at the first failure");
    // The TIME_WAITs expire before the interval ends: the verdict keeps what the failure saw.
    host.net.insert(NS, ports_full((40000, 39999)));
    let cur: Snapshot = [(key(5, kind::PORT_ASSIGN_FAILURE), 2)].into();
    let cur_dest = [(dest_key(5, kind::PORT_ASSIGN_FAILURE), 2)].into();
    let out = step(&mut s, &mut host, cur, cur_dest, 1);
    let v = &out.verdicts[0];
    assert_eq!((v.cause, v.failures), (Cause::EphemeralPorts, 2));
    assert_eq!(v.destination.as_ref().map(|d| d.endpoint()), Some("10.0.0.5:6379".into()));
    let Proof::Ports(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!((p.usable, p.time_wait), (10, 10));
    assert_eq!(host.net_reads, 1, "diagnosis used the evidence read at the failure");
}

#[test]
fn listener_drops_are_charged_to_the_listeners_owner() {
    let mut host = FakeHost::default().with(11, "gunicorn", nofile(1024, 10));
    host.net.insert(NS, NetFacts { somaxconn: Some(4096), netns: Some(NS), ..Default::default() });
    let l = ListenerDelta {
        netns: NS,
        inode: 99,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 8000,
        drops: 3,
        queue_len: 129,
        backlog: 128,
        syn_recv: 0,
        cookies: 0,
    };
    let ns: NsDelta = [("ListenOverflows", 3)].into();
    host.poll = Some(ListenPoll {
        dropped: vec![(11, l, ns.clone())],
        by_ns: [(NS, ns)].into(),
        tw_tables: BTreeMap::new(),
        busy: Vec::new(),
        ports: Vec::new(),
        range_use: BTreeMap::new(),
        conntrack: BTreeMap::new(),
        tcp_mem: None,
    });
    let mut s = session(&[]);
    let out = step(&mut s, &mut host, Snapshot::new(), BTreeMap::new(), 1);
    assert_eq!((out.samples[0].pid, out.samples[0].counts.listen_drops), (11, 3));
    let v = &out.verdicts[0];
    assert_eq!((v.cause, v.pid, v.failures), (Cause::AcceptQueue, 11, 3));
}

#[test]
fn inferred_tw_overflows_are_corrected_by_the_namespace_count_only_when_inferred() {
    for (infer, want) in [(true, (12, 3)), (false, (10, 5))] {
        let mut host = FakeHost::default().with(9, "churn", nofile(1024, 10));
        host.poll = Some(ListenPoll {
            dropped: Vec::new(),
            by_ns: [(NS, [("TCPTimeWaitOverflow", 3)].into())].into(),
            tw_tables: BTreeMap::new(),
            busy: Vec::new(),
            ports: Vec::new(),
            range_use: BTreeMap::new(),
            conntrack: BTreeMap::new(),
            tcp_mem: None,
        });
        let filter = Filter::default();
        let mut s = Session::new(filter, Duration::from_secs(1), Snapshot::new(), BTreeMap::new(), infer);
        let cur: Snapshot = [(key(9, kind::TIME_WAIT), 10), (key(9, kind::TW_OVERFLOW), 5)].into();
        let out = step(&mut s, &mut host, cur, BTreeMap::new(), 1);
        let c = &out.samples[0].counts;
        assert_eq!((c.time_wait_created, c.tw_overflows), want, "infer_tw = {infer}");
    }
}

#[test]
fn overflows_counted_by_the_namespace_before_the_counters_are_claimed_by_an_exited_client() {
    let mut host = FakeHost::default().with(9, "churn", nofile(1024, 10));
    let mut s = Session::new(Filter::default(), Duration::from_secs(1), Snapshot::new(), BTreeMap::new(), true);
    // 17 overflows happened between the counters' read and TcpExt's.
    let poll = |n: u64| ListenPoll {
        dropped: Vec::new(),
        by_ns: [(NS, [("TCPTimeWaitOverflow", n)].into())].into(),
        tw_tables: BTreeMap::new(),
        busy: Vec::new(),
        ports: Vec::new(),
        range_use: BTreeMap::new(),
        conntrack: BTreeMap::new(),
        tcp_mem: None,
    };
    host.poll = Some(poll(17));
    let out = step(&mut s, &mut host, [(key(9, kind::CONNECT_ATTEMPT), 30)].into(), BTreeMap::new(), 1);
    assert_eq!(out.samples[0].counts.tw_overflows, 0);
    // The next read has all 30 closes, inferred right (10 + 20); this poll saw 3.
    host.poll = Some(poll(3));
    let cur = |tw: u64, ovf: u64| -> Snapshot {
        [(key(9, kind::CONNECT_ATTEMPT), 30), (key(9, kind::TIME_WAIT), tw), (key(9, kind::TW_OVERFLOW), ovf)].into()
    };
    let out = step(&mut s, &mut host, cur(10, 20), BTreeMap::new(), 2);
    let c = &out.samples[0].counts;
    assert_eq!((c.time_wait_created, c.tw_overflows), (10, 20));
    // Two more closes taken for overflows (a TIME_WAIT expired at the limit), which the
    // namespace did not count; the client has exited by the end of the interval: it is
    // placed by the namespace the kernel recorded with its overflows.
    host.procs.remove(&9);
    host.tw_netns.insert(9, NS);
    host.poll = Some(poll(0));
    let out = step(&mut s, &mut host, cur(10, 22), BTreeMap::new(), 3);
    let c = &out.samples[0].counts;
    assert_eq!((c.time_wait_created, c.tw_overflows), (2, 0));
}

#[test]
fn refused_addresses_from_events_reach_the_verdict() {
    let mut host = FakeHost::default().with(3, "haproxy", nofile(1024, 10));
    let mut s = session(&[]);
    let mut e = event("bind_error", 3, at(0));
    (e.errno, e.saddr, e.sport) = ("EADDRNOTAVAIL".into(), Some("192.0.2.7".into()), Some(0));
    s.event(&e, &mut host);
    let mut bind = key(3, kind::BIND_ERROR);
    bind.aux = libc::EADDRNOTAVAIL as u16;
    let out = step(&mut s, &mut host, [(bind, 1)].into(), BTreeMap::new(), 1);
    let v = &out.verdicts[0];
    assert_eq!(v.cause, Cause::AddressUnavailable);
    let Proof::AddressUnavailable(p) = &v.evidence else { panic!("{:?}", v.evidence) };
    assert_eq!(p.addresses, BTreeSet::from(["192.0.2.7:0".to_string()]));
}
