//! `conntrace watch`: the collection loop. Kernel I/O (the probe) and output are kept apart:
//! this module only moves data between them on a timer.

use std::{
    io::Write,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use probe_common::event::Event;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::WatchArgs,
    commands::{
        arming::LiveArming,
        filter::Filter,
        header,
        host::LiveHost,
        listen_poll::ListenPoller,
        owed::Owed,
        session::{Read, Session},
    },
    domain::model,
    domain::status::{Mode, RecordingStatus, Signal, Status},
    kernel::probe::{self, Probe},
    record::{Bounds, Recorder},
    render::{printer::Printer, status},
    sinks::{flight::FlightSink, recorder::RecordSink, session_report::SessionReport, JsonSink, Outputs},
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
    // Before loading (which takes seconds with many tracepoints): a SIGINT or SIGTERM that
    // arrives meanwhile must still end the run (a script's background job even inherits
    // SIGINT ignored, so without a handler it would be lost).
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut probe = Probe::load(args.attach_mode, args.events_per_sec, args.syscall_hooks())?;
    let ring = probe.take_events()?;
    // SAFETY: the ring buffer's fd stays open for as long as `ring` lives, which outlives the
    // registration (both are dropped at the end of this function, the AsyncFd first).
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer: {e}"))?;
    let offset = boot_offset();

    let mut st = Watch::new(&args, &mut probe)?;
    let sinks = sinks_of(&args, &st.status)?;
    let mut out = Outputs::new(args.json, Printer::new(std::io::stdout().lock()), sinks);
    st.status.recording = out.recording();
    out.status(&st.status)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    // Recordings are made durable every second, whatever the interval.
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);

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
            _ = second.tick() => out.tick(),
            _ = sigusr1.recv() => out.trigger(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sleep_until_deadline => break,
        }
    }
    // The last, partial interval, what the event rate limit still owes, and the last word on
    // what was lost.
    end_interval(&mut st, &mut probe, ring.get_mut(), offset, &mut out)?;
    let last = st.session.unreported(SystemTime::now());
    out.verdicts(&last)?;
    settle_owed(&mut st, &probe, &mut out, true)?;
    let losses = probe.final_losses()?;
    let recording = out.recording();
    // With a recording, always: the last word on what was written and lost.
    if losses != st.status.losses || recording.is_some() {
        st.status.losses = losses;
        st.status.recording = recording;
        out.status(&st.status)?;
    }
    if args.bpf_stats {
        let stats = probe.program_stats();
        if out.json {
            out.line(&status::bpf_stats_json(SystemTime::now(), &stats).to_string())?;
        } else {
            out.line(status::bpf_stats_text(&stats).trim_end())?;
        }
    }
    out.finish()
}

/// The sinks the arguments ask for: the recorder (continuous or flight), the session's report.
fn sinks_of(args: &WatchArgs, status: &Status) -> Result<Vec<Box<dyn JsonSink>>> {
    let mut sinks: Vec<Box<dyn JsonSink>> = Vec::new();
    if let Some(dir) = &args.record {
        let bounds = Bounds {
            max_bytes: args.max_size,
            max_files: usize::try_from(args.max_files).unwrap_or(usize::MAX),
            rotate: args.rotate,
        };
        let header = header::header(status, &args.pids);
        match args.flight_recorder {
            Some(keep) => {
                // Nothing is written before a trigger: say now if it could not be.
                header::check_writable(dir)?;
                sinks.push(Box::new(FlightSink::new(keep, dir.clone(), bounds, header, args.post_trigger)));
            }
            None => {
                let r = Recorder::create(dir, bounds, header)?;
                sinks.push(Box::new(RecordSink::new(r, dir.display().to_string())));
            }
        }
    }
    if !args.no_report {
        sinks.push(Box::new(SessionReport::new(args.json)));
    }
    Ok(sinks)
}

/// What `watch` keeps between intervals besides the session: the status it printed, the
/// listen counters' baselines, when the interval began.
struct Watch {
    session: Session,
    /// Open fds of the processes near their limit: the fd warning, and the fd hook attached
    /// on demand (`on_demand`).
    fds: LiveArming,
    on_demand: bool,
    status: Status,
    listen: ListenPoller,
    last: Instant,
    /// Rate-limited failures reported since (see `commands::owed`).
    owed: Owed,
}

impl Watch {
    /// The state before the first interval: counter baselines, listen counter baselines of
    /// every namespace that exists now, and the status.
    fn new(args: &WatchArgs, probe: &mut Probe) -> Result<Watch> {
        // Only the set_state fallback infers tw-bucket overflows; the others see
        // inet_twsk_alloc's own result.
        let infer_tw =
            probe.status.signal(Signal::TwOverflow).is_some_and(|s| matches!(s.mode, Mode::TpBtf | Mode::Tracepoint));
        let filter = Filter { pids: args.pids.iter().copied().collect(), comms: args.comms.clone() };
        let session = Session::new(filter, args.interval, probe.snapshot()?, probe.dest_snapshot()?, infer_tw);
        let mut st = Watch {
            session,
            fds: LiveArming::default(),
            on_demand: probe.fd_on_demand(),
            status: probe.status.clone(),
            listen: ListenPoller::default(),
            last: Instant::now(),
            owed: Owed::default(),
        };
        let listening = st.listen.baseline();
        seed_listeners(probe, &listening);
        st.refresh_status(probe)?;
        Ok(st)
    }

    /// Refreshes losses and watched pids; true when the status changed.
    fn refresh_status(&mut self, probe: &Probe) -> Result<bool> {
        let losses = probe.losses()?;
        let watched: Vec<(u32, bool)> = self.session.filter().pids.iter().map(|p| (*p, procinfo::exists(*p))).collect();
        let changed = losses != self.status.losses || watched != self.status.watched;
        self.status.losses = losses;
        self.status.watched = watched;
        Ok(changed)
    }
}

/// The end of an interval: the counters first, then the events (the kernel submits a
/// failure's event before it counts it, so every failure counted in the read has its event
/// in the ring by then), then diagnosis and output.
fn end_interval<W: Write>(
    st: &mut Watch,
    probe: &mut Probe,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    offset: Duration,
    out: &mut Outputs<W>,
) -> Result<()> {
    let gone_before = st.session.exited(&mut LiveHost { probe, listen: &mut st.listen });
    let read = Read { gone_before, cur: probe.snapshot()?, cur_dest: probe.dest_snapshot()? };
    drain(ring, offset, st, probe, out)?;
    let now = Instant::now();
    let interval_s = now.duration_since(st.last).as_secs_f64();
    st.last = now;
    let step = st.session.end(read, SystemTime::now(), interval_s, &mut LiveHost { probe, listen: &mut st.listen });
    if !step.forget.is_empty() || !step.forget_dest.is_empty() {
        probe.forget(&step.forget, &step.forget_dest)?;
    }
    out.samples(&step.samples)?;
    settle_owed(st, probe, out, false)?;
    out.verdicts(&step.verdicts)?;
    probe.sweep_inflight()?;
    let mut changed = st.refresh_status(probe)?;
    let readings = st.fds.read(&step.samples, interval_s, st.session.filter());
    let want = st.fds.tick(&readings, interval_s);
    if st.on_demand && probe.arm_fd(want)? {
        st.status.signals = probe.status.signals.clone();
        changed = true;
        if want {
            st.session.set_fd_counted_from(SystemTime::now());
        }
    }
    st.session.set_fd_readings(readings);
    // A recording's losses and rotations show in status (its line counts alone do not
    // warrant one).
    let rec = out.recording();
    let key = |r: &Option<RecordingStatus>| {
        r.as_ref().map(|r| (r.stats.lines_lost, r.stats.segments, r.stats.segments_deleted))
    };
    if key(&rec) != key(&st.status.recording) {
        changed = true;
    }
    st.status.recording = rec;
    if changed {
        out.status(&st.status)?;
    }
    Ok(())
}

/// Prints the failures the event rate limit kept off the stream of processes that have gone
/// quiet (or of all, at the end of the run), for the watched processes.
fn settle_owed<W: Write>(st: &mut Watch, probe: &Probe, out: &mut Outputs<W>, all: bool) -> Result<()> {
    let entries = probe.limiter()?;
    for (pid, kind, count) in st.owed.settle(&entries, monotonic_ns(), all) {
        let comm = probe.kernel_comm(pid).or_else(|| procinfo::comm(pid)).unwrap_or_else(|| "unknown".into());
        if st.session.filter().matches(pid, &comm) {
            out.suppressed(pid, &comm, model::event_kind_name(kind), count)?;
        }
    }
    st.owed.forget(|pid| !procinfo::exists(pid) && !entries.iter().any(|e| e.0 == pid && e.2.suppressed > 0));
    Ok(())
}

/// CLOCK_MONOTONIC now, in ns: the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Passes every event in the ring buffer to the session, and prints those of watched
/// processes.
fn drain<W: Write>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    offset: Duration,
    st: &mut Watch,
    probe: &Probe,
    out: &mut Outputs<W>,
) -> Result<()> {
    let mut host = LiveHost { probe, listen: &mut st.listen };
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole `Event` (checked length); read_unaligned copes with
        // the ring buffer's 8-byte alignment.
        let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let mut rec = model::decode(&ev, offset);
        rec.suppressed = st.owed.on_event(ev.pid, ev.kind, ev.suppressed);
        if st.session.event(&rec, &mut host) {
            out.event(&rec)?;
        }
    }
    Ok(())
}

/// Records the owners of the listeners that existed before conntrace started (see
/// `Probe::seed_listeners`); the processes holding them are found in one pass over /proc.
fn seed_listeners(probe: &mut Probe, listening: &[(u32, u16, u32)]) {
    let inodes: std::collections::BTreeSet<u32> = listening.iter().map(|l| l.2).filter(|i| *i != 0).collect();
    if inodes.is_empty() {
        return;
    }
    let owners = procinfo::socket_owners(&inodes);
    let seeds: Vec<(u32, u16, u32, String)> = listening
        .iter()
        .filter_map(|&(ns, port, inode)| {
            let pid = *owners.get(&inode)?;
            Some((ns, port, pid, procinfo::comm(pid).unwrap_or_default()))
        })
        .collect();
    if let Err(e) = probe.seed_listeners(&seeds) {
        eprintln!("conntrace: the listeners that existed before start-up were not recorded: {e:#}");
    }
}
