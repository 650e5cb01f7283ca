//! `conntrace watch`: the collection loop. Kernel I/O (the probe) and output are kept apart:
//! this module only moves data between them on a timer.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use probe_common::{
    counters::{kind, DestKey, UNATTRIBUTED},
    event::Event,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::WatchArgs,
    commands::{
        event_facts::{EarlyEvidence, EventFacts},
        evidence::{net_now, nofile_now, LiveEvidence},
        filter::Filter,
        listen_poll::{ListenPoll, ListenPoller},
    },
    diagnosis::verdict::{Cause, Engine, Verdict, Window},
    domain::model::{self, Counts, Sample, Snapshot},
    domain::net::endpoint,
    domain::status::{Mode, Signal, Status},
    kernel::probe::{self, Probe},
    render::{output, printer::Printer},
    system::listeners,
    system::netdiag,
    system::procinfo,
};

/// CLOCK_REALTIME − CLOCK_MONOTONIC: turns bpf_ktime_get_ns() into wall time.
fn boot_offset() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().saturating_sub(mono)
}

pub fn check_privileges() -> Result<()> {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "conntrace".into());
    if let Some(msg) = procinfo::privilege_problem(procinfo::effective_caps(), &exe) {
        bail!(msg);
    }
    Ok(())
}

struct State {
    filter: Filter,
    prev: Snapshot,
    prev_dest: BTreeMap<DestKey, u64>,
    engine: Engine,
    /// What failure events told (first failure times, refused addresses, evidence taken at
    /// the moment of failure) until the interval that counts them is diagnosed.
    facts: EventFacts,
    /// Event lines printed this interval in text mode, per (pid, kind, destination).
    printed: BTreeSet<(u32, &'static str, Option<String>, Option<u16>)>,
    last: Instant,
    status: Status,
    /// RLIMIT_NOFILE from the latest EMFILE event per process: the limit is still known
    /// once the process has exited and /proc no longer says.
    event_limits: BTreeMap<u32, u64>,
    /// Filter decisions per pid, so events do not read /proc each time.
    match_cache: BTreeMap<u32, bool>,
    /// Listen counters of every watched namespace (accept and SYN queue drops).
    listen: ListenPoller,
}

impl State {
    /// The state before the first interval: counter baselines, listen counter baselines of
    /// every namespace that exists now, and the status.
    fn new(args: &WatchArgs, probe: &Probe) -> Result<State> {
        let mut st = State {
            filter: Filter { pids: args.pids.iter().copied().collect(), comms: args.comms.clone() },
            prev: probe.snapshot()?,
            last: Instant::now(),
            status: probe.status.clone(),
            prev_dest: probe.dest_snapshot()?,
            engine: Engine::new(args.interval),
            facts: EventFacts::default(),
            listen: ListenPoller::default(),
            printed: BTreeSet::new(),
            event_limits: BTreeMap::new(),
            match_cache: BTreeMap::new(),
        };
        st.listen.baseline();
        st.refresh_status(probe)?;
        Ok(st)
    }

    /// In the set_state fallback, tw-bucket overflows are inferred: correct them per
    /// namespace with the namespace's exact TcpExt TCPTimeWaitOverflow growth.
    fn reconcile_tw(&self, deltas: &mut BTreeMap<u32, Counts>, by_ns: &BTreeMap<u32, listeners::NsDelta>) {
        // Only the set_state fallback infers overflows. fexit and kprobes see inet_twsk_alloc's
        // own result: "correcting" those with the TcpExt growth, which is read at another
        // moment than the counters, moved real overflows into TIME_WAIT (kprobe mode is
        // approximate for runs the kernel skips, not for what it classifies).
        let inferred =
            self.status.signal(Signal::TwOverflow).is_some_and(|s| matches!(s.mode, Mode::TpBtf | Mode::Tracepoint));
        if !inferred {
            return;
        }
        let mut per_ns: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (&pid, c) in deltas.iter() {
            if pid != UNATTRIBUTED && (c.tw_overflows > 0 || c.time_wait_created > 0) {
                if let Some(ns) = netdiag::netns_inode(pid) {
                    per_ns.entry(ns).or_default().push(pid);
                }
            }
        }
        for (ns, pids) in per_ns {
            let Some(d) = by_ns.get(&ns) else { continue };
            let truth = d.get("TCPTimeWaitOverflow").copied().unwrap_or(0);
            let mut pairs: Vec<(u64, u64)> =
                pids.iter().map(|p| (deltas[p].time_wait_created, deltas[p].tw_overflows)).collect();
            listeners::reconcile_tw_overflows(&mut pairs, truth);
            for (pid, (tw, ovf)) in pids.iter().zip(pairs) {
                if let Some(c) = deltas.get_mut(pid) {
                    c.time_wait_created = tw;
                    c.tw_overflows = ovf;
                }
            }
        }
    }

    fn comm_of(&self, probe: &Probe, pid: u32) -> String {
        if pid == UNATTRIBUTED {
            return "(unattributed)".into();
        }
        procinfo::comm(pid).or_else(|| probe.kernel_comm(pid)).unwrap_or_else(|| "?".into())
    }

    /// Reads the counters at the end of an interval. Drain the ring buffer *after* this and
    /// before `interval`: the kernel submits a failure's event before it counts the failure,
    /// so every failure in these counts then has its event (addresses, time, limit) in hand.
    fn read_counters(&self, probe: &Probe) -> Result<Counters> {
        // Processes already gone *before* this read: the read holds their final counts, so
        // their counters can be dropped after it (checking after the read could drop
        // increments made between the read and the exit).
        let gone_before: BTreeSet<u32> = self
            .prev
            .keys()
            .map(|k| k.tgid)
            .chain(self.prev_dest.keys().map(|k| k.tgid))
            .filter(|&t| t != UNATTRIBUTED && !procinfo::exists(t))
            .collect();
        Ok(Counters { gone_before, cur: probe.snapshot()?, cur_dest: probe.dest_snapshot()? })
    }

    /// Builds the samples of the interval that just ended from counters read by
    /// `read_counters` (and the events drained since), and the verdicts it brings.
    fn interval(&mut self, probe: &mut Probe, counters: Counters) -> Result<(Vec<Sample>, Vec<Verdict>)> {
        let Counters { gone_before, cur, cur_dest } = counters;
        let now = Instant::now();
        let interval_s = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let (samples, mut window) = self.window(probe, &cur, &cur_dest, interval_s);
        self.printed.clear();
        let (fresh, cache) = self.facts.fill(&mut window);
        let mut evidence =
            LiveEvidence { probe, net_cache: cache.net, nofile_cache: cache.nofile, file_nr_cache: cache.file_nr };
        let verdicts = self.engine.tick(&window, &mut evidence);
        let cache = EarlyEvidence {
            net: std::mem::take(&mut evidence.net_cache),
            nofile: std::mem::take(&mut evidence.nofile_cache),
            file_nr: evidence.file_nr_cache.take(),
        };
        drop(evidence);
        self.facts.settle(&self.engine, &window, fresh, cache);

        self.forget_dead(probe, &gone_before, cur, cur_dest)?;
        Ok((samples, verdicts))
    }

    /// The samples to print and the window to diagnose: counter growth since the last read,
    /// the listeners that dropped, per-destination failures and TIME_WAITs.
    fn window(
        &mut self,
        probe: &Probe,
        cur: &Snapshot,
        cur_dest: &BTreeMap<DestKey, u64>,
        interval_s: f64,
    ) -> (Vec<Sample>, Window) {
        let mut deltas = model::diff(&self.prev, cur);
        for pid in &self.filter.pids {
            if procinfo::exists(*pid) {
                deltas.entry(*pid).or_default();
            }
        }
        let mut window = Window { now: Some(SystemTime::now()), interval_s, ..Default::default() };
        let seen: Vec<u32> = deltas.keys().copied().collect();
        let watched = seen.into_iter().chain(self.filter.pids.iter().copied());
        let ListenPoll { dropped: listener_drops, by_ns } = self.listen.poll(watched);
        self.reconcile_tw(&mut deltas, &by_ns);
        for (owner, l, ns) in listener_drops {
            if !self.filter.is_all() && !self.filter.matches(owner, &self.comm_of(probe, owner)) {
                continue;
            }
            let c = deltas.entry(owner).or_default();
            c.listen_drops += l.drops;
            c.syncookies += l.cookies;
            window.listener_drops.push((owner, l, ns));
        }
        let mut samples = Vec::new();
        for (pid, counts) in deltas {
            let comm = self.comm_of(probe, pid);
            if !self.filter.matches(pid, &comm) {
                continue;
            }
            let alive = pid != UNATTRIBUTED && procinfo::exists(pid);
            if pid != UNATTRIBUTED {
                window.counts.insert(pid, counts.clone());
            }
            samples.push(Sample {
                pid,
                comm,
                interval_s,
                counts,
                nofile_limit: alive
                    .then(|| procinfo::nofile_limit(pid))
                    .flatten()
                    .or_else(|| self.event_limits.get(&pid).copied()),
                open_fds: if alive { procinfo::open_fds(pid) } else { None },
            });
        }
        for (key, dest, n) in model::diff_dest(&self.prev_dest, cur_dest) {
            if key.tgid == UNATTRIBUTED || !window.counts.contains_key(&key.tgid) {
                continue;
            }
            match key.kind {
                kind::PORT_ASSIGN_FAILURE => *window.port_failures.entry((key.tgid, dest)).or_default() += n,
                kind::TIME_WAIT => *window.time_waits.entry((key.tgid, dest)).or_default() += n,
                _ => {}
            }
        }
        (samples, window)
    }

    /// Drops the counters of processes that had exited before the read (reported for the
    /// last time now) and keeps the rest as the next baseline.
    fn forget_dead(
        &mut self,
        probe: &mut Probe,
        gone_before: &BTreeSet<u32>,
        cur: Snapshot,
        cur_dest: BTreeMap<DestKey, u64>,
    ) -> Result<()> {
        // Counters of exited processes have been reported for the last time: drop them so the
        // map does not fill up. (TIME_WAIT of their orphaned sockets recreates entries later.)
        let dead: Vec<_> = cur.keys().filter(|k| gone_before.contains(&k.tgid)).copied().collect();
        let dead_dest: Vec<_> = cur_dest.keys().filter(|k| gone_before.contains(&k.tgid)).copied().collect();
        if !dead.is_empty() || !dead_dest.is_empty() {
            probe.forget(&dead, &dead_dest)?;
        }
        let (mut cur, mut cur_dest) = (cur, cur_dest);
        for k in &dead {
            cur.remove(k);
        }
        for k in &dead_dest {
            cur_dest.remove(k);
        }
        self.prev = cur;
        self.prev_dest = cur_dest;
        Ok(())
    }

    /// Refreshes losses and watched pids; true when the status changed.
    fn refresh_status(&mut self, probe: &Probe) -> Result<bool> {
        let losses = probe.losses()?;
        let watched: Vec<(u32, bool)> = self.filter.pids.iter().map(|p| (*p, procinfo::exists(*p))).collect();
        let changed = losses != self.status.losses || watched != self.status.watched;
        self.status.losses = losses;
        self.status.watched = watched;
        Ok(changed)
    }
}

pub async fn watch(args: WatchArgs) -> Result<()> {
    check_privileges()?;
    for pid in &args.pids {
        if !procinfo::exists(*pid) {
            bail!("no process with pid {pid}: check the pid (ps -p {pid}) and try again");
        }
    }
    if let Err(e) = probe::ensure_tracefs() {
        eprintln!("conntrace: warning: {e:#}; tracepoint fallbacks unavailable");
    }
    // Held for the whole run: the kernel keeps BPF run-time statistics while this fd is open.
    let _stats_fd = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?)
    } else {
        None
    };
    let mut probe = Probe::load(args.attach_mode, args.events_per_sec)?;
    let ring = probe.take_events()?;
    // SAFETY: the ring buffer's fd stays open for as long as `ring` lives, which outlives the
    // registration (both are dropped at the end of this function, the AsyncFd first).
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer: {e}"))?;
    let offset = boot_offset();

    let mut st = State::new(&args, &probe)?;
    let mut out = Printer { json: args.json, w: std::io::stdout().lock() };
    out.status(&st.status)?;

    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    loop {
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                drain(guard.get_inner_mut(), offset, &mut st, &probe, &mut out)?;
                guard.clear_ready();
            }
            _ = tick.tick() => end_interval(&mut st, &mut probe, ring.get_mut(), offset, &mut out)?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sleep_until_deadline => break,
        }
    }
    // The last, partial interval.
    end_interval(&mut st, &mut probe, ring.get_mut(), offset, &mut out)?;
    if args.bpf_stats {
        let stats = probe.program_stats();
        if out.json {
            out.line(&output::bpf_stats_json(SystemTime::now(), &stats).to_string())?;
        } else {
            out.line(output::bpf_stats_text(&stats).trim_end())?;
        }
    }
    Ok(())
}

/// The end of an interval: the counters first, then the events (every failure counted in
/// them has its event in the ring by then), then diagnosis and output.
fn end_interval<W: Write>(
    st: &mut State,
    probe: &mut Probe,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    offset: Duration,
    out: &mut Printer<W>,
) -> Result<()> {
    let counters = st.read_counters(probe)?;
    drain(ring, offset, st, probe, out)?;
    let (samples, verdicts) = st.interval(probe, counters)?;
    out.samples(&samples)?;
    out.verdicts(&verdicts)?;
    if st.refresh_status(probe)? {
        out.status(&st.status)?;
    }
    Ok(())
}

/// Counters read at the end of an interval.
struct Counters {
    /// Processes that had exited before the read (their counts in it are final).
    gone_before: BTreeSet<u32>,
    cur: Snapshot,
    cur_dest: BTreeMap<DestKey, u64>,
}

fn drain<W: Write>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    offset: Duration,
    st: &mut State,
    probe: &Probe,
    out: &mut Printer<W>,
) -> Result<()> {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole `Event` (checked length); read_unaligned copes with
        // the ring buffer's 8-byte alignment.
        let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let rec = model::decode(&ev, offset);
        if let Some(limit) = rec.limit {
            st.event_limits.insert(rec.pid, limit);
        }
        let wanted = st.filter.is_all() || {
            let (filter, cache) = (&st.filter, &mut st.match_cache);
            *cache.entry(rec.pid).or_insert_with(|| {
                let comm = procinfo::comm(rec.pid).or_else(|| probe.kernel_comm(rec.pid)).unwrap_or_default();
                filter.matches(rec.pid, &comm) || filter.matches(rec.pid, &rec.comm)
            })
        };
        if !wanted {
            continue;
        }
        let cause = match rec.kind {
            "port_assign_failure" => Some(Cause::EphemeralPorts),
            "emfile" => Some(Cause::FdLimit),
            "enfile" => Some(Cause::FileMax),
            "bind_error" if rec.errno == "EADDRINUSE" && rec.sport == Some(0) => Some(Cause::BindHoarding),
            // Port-search failures come as port_assign_failure: these are the other kind.
            "bind_error" | "connect_error" if rec.errno == "EADDRNOTAVAIL" => Some(Cause::AddressUnavailable),
            _ => None,
        };
        if cause == Some(Cause::AddressUnavailable) {
            if let (Some(a), Some(p)) = (&rec.saddr, rec.sport) {
                st.facts.unavailable_addr(rec.pid, endpoint(a, p));
            }
        }
        if let Some(cause) = cause {
            // The first failure of a process and cause this interval: take the evidence now,
            // while the state that caused it is still there.
            let first = st.facts.failure(rec.pid, cause, rec.ts);
            if first && !st.engine.is_active(rec.pid, cause) {
                match (cause, rec.netns) {
                    (Cause::EphemeralPorts, Some(ns)) => {
                        st.facts.early.net.entry(ns).or_insert_with(|| net_now(rec.pid, ns));
                    }
                    (Cause::FdLimit, _) => {
                        st.facts.early.nofile.entry(rec.pid).or_insert_with(|| nofile_now(rec.pid));
                    }
                    (Cause::FileMax, _) => {
                        st.facts.early.file_nr.get_or_insert_with(|| crate::system::facts::read_system().file_nr);
                    }
                    _ => {}
                }
            }
        }
        // Text mode: one line per process, kind and destination per interval (the table has
        // the counts); JSON keeps every event.
        if out.json || st.printed.insert((rec.pid, rec.kind, rec.daddr.clone(), rec.dport)) {
            out.event(&rec)?;
        }
    }
    Ok(())
}
