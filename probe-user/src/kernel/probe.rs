//! The probe: loads conntrace's kernel programs, climbs every signal's attach ladder
//! (fentry/fexit, then tp_btf, then classic/raw tracepoints, then kprobes; see `hooks`), and
//! reads what the programs counted (counters, losses, run-time statistics).

use std::{collections::BTreeMap, os::fd::AsFd};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use probe_common::{
    config::{role, stat, OFFSET_MISSING},
    counters::{CountKey, DestKey},
};

pub use super::loader::ensure_tracefs;
use super::{
    bpf_info,
    hooks::{self, Kernel},
    ladder::{self, Allowed, Rung},
    loader::Loader,
};
use crate::{
    domain::model::Snapshot,
    domain::status::{AttachMode, SyscallHooks},
    domain::status::{Losses, Mode, ProgramStats, Signal, SignalStatus, Status},
    kernel::offsets,
    system::procinfo,
};

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrace-probe"));

/// The loaded programs and what they attached to.
pub struct Probe {
    ebpf: Ebpf,
    pub status: Status,
    /// In-flight connect records of exited threads removed by `sweep_inflight`.
    returns_swept: u64,
    /// The fd hook attached on demand (`--syscall-hooks on-demand`): its link while attached.
    fd_on_demand: Option<FdOnDemand>,
}

/// The raw `sys_exit` link while attached. A raw tracepoint attaches at once; the exit
/// tracepoints of the 43 fd-creating system calls take ~3 s to attach here (each
/// registration waits for the kernel to patch and synchronize), too late for a burst.
struct FdOnDemand {
    link: Option<RawTracePointLinkId>,
}

/// The raw tracepoint program that counts EMFILE/ENFILE at system-call exit.
const FD_SYS_EXIT: (&str, &str) = ("fd_sys_exit", "sys_exit");

/// Climbs every hooked signal's ladder, in the order their rungs depend on each other
/// (inet_sock_set_state, then connect, then the fallbacks built on both). Returns the
/// statuses and the `ROLES` switches to turn on.
fn attach_signals(
    l: &mut Loader,
    mode: AttachMode,
    c: &probe_common::config::Config,
    has_btf: bool,
    syscall_hooks: SyscallHooks,
) -> (Vec<(Signal, SignalStatus)>, Vec<u32>) {
    // Without the socket offsets no network hook can tell TCP sockets apart.
    let sock_ok = has(&[c.sk_family, c.socket_sk, c.socket_type]);
    let fd_walk_ok = sock_ok && has(&[c.task_files, c.files_fdt, c.fdt_fd, c.fdt_max_fds, c.file_private_data]);
    let allowed = Allowed {
        fexit: matches!(mode, AttachMode::Auto | AttachMode::Fexit) && has_btf,
        tracepoint: matches!(mode, AttachMode::Auto | AttachMode::Tracepoint),
        kprobe: matches!(mode, AttachMode::Auto | AttachMode::Kprobe),
    };
    let net = Allowed {
        fexit: allowed.fexit && sock_ok,
        tracepoint: allowed.tracepoint && sock_ok,
        kprobe: allowed.kprobe && sock_ok,
    };
    let mut roles = Vec::new();

    // inet_sock_set_state serves asynchronous connect outcomes in every mode (whatever the
    // family the mode forces), and the port and TIME_WAIT fallbacks.
    let any_net = Allowed { fexit: false, tracepoint: net.fexit || net.tracepoint || net.kprobe, kprobe: false };
    let set_state_status = if sock_ok {
        climb(l, hooks::set_state(), any_net, mode, &mut roles)
    } else {
        SignalStatus::unavailable("kernel BTF lacks struct sock/socket offsets")
    };
    let set_state = (set_state_status.mode != Mode::Unavailable)
        .then(|| (set_state_status.mode, set_state_status.hooks[0].clone()));
    let mut k = Kernel {
        fd_walk: fd_walk_ok,
        sk_err: c.sk_err != OFFSET_MISSING,
        netfilter_drop: c.skb_sk != OFFSET_MISSING && c.drop_reason_netfilter != OFFSET_MISSING,
        set_state: set_state.as_ref(),
        connect: None,
        syscall_hooks,
    };

    let mut connect = climb(l, hooks::connect(&k), net, mode, &mut roles);
    if connect.mode != Mode::Unavailable {
        roles.push(role::CONNECT);
        match &set_state {
            Some((_, h)) if !connect.hooks.contains(h) => connect.hooks.push(h.clone()),
            Some(_) => {}
            None => {
                connect.exact = false;
                let why = set_state_status.note.clone().unwrap_or_default();
                connect.note = Some(format!("outcomes of non-blocking connects are not seen ({why})"));
            }
        }
    }
    k.connect = Some(&connect);
    let owner = climb(l, hooks::accept_owner(&k), net, mode, &mut roles);
    let owner_hooks = if owner.mode == Mode::Unavailable { Vec::new() } else { owner.hooks };
    let port = climb(l, hooks::port_assign(&k), net, mode, &mut roles);
    let mut tw = climb(l, hooks::time_wait(&k), net, mode, &mut roles);
    with_owners(&mut tw, &connect, owner_hooks);
    let tw_overflow = tw_overflow_status(&tw, c.net_tw_refcount != OFFSET_MISSING);
    let fd = climb(l, hooks::fd_alloc(&k), allowed, mode, &mut roles);
    let bind = climb(l, hooks::bind(&k), net, mode, &mut roles);
    let tcp_mem = climb(l, hooks::tcp_mem(), net, mode, &mut roles);
    let nf_drop = climb(l, hooks::netfilter_drop(&k), net, mode, &mut roles);

    let signals = vec![
        (Signal::PortAssign, port),
        (Signal::TimeWait, tw),
        (Signal::TwOverflow, tw_overflow),
        (Signal::FdAlloc, fd),
        (Signal::Connect, connect),
        (Signal::Bind, bind),
        (Signal::TcpMem, tcp_mem),
        (Signal::NetfilterDrop, nf_drop),
    ];
    (signals, roles)
}

/// The fd hook, when the ladder took the system-call rung: detached until a process nears its
/// limit (see [`Probe::arm_fd`]); it stays loaded, so attaching it later cannot fail
/// verification.
fn on_demand(l: &mut Loader, signals: &mut [(Signal, SignalStatus)]) -> Result<Option<FdOnDemand>> {
    let Some((_, fd)) = signals.iter_mut().find(|(s, _)| *s == Signal::FdAlloc) else { return Ok(None) };
    if fd.mode != Mode::RawTracepoint {
        return Ok(None);
    }
    let Some(i) = l.raw_links.iter().position(|(p, _)| p == FD_SYS_EXIT.0) else { return Ok(None) };
    let (_, link) = l.raw_links.swap_remove(i);
    raw_tp(&mut l.ebpf)?.detach(link).context("detaching the fd hook")?;
    fd.armed = Some(false);
    Ok(Some(FdOnDemand { link: None }))
}

fn raw_tp(ebpf: &mut Ebpf) -> Result<&mut RawTracePoint> {
    let p: &mut RawTracePoint = ebpf.program_mut(FD_SYS_EXIT.0).context("fd_sys_exit program")?.try_into()?;
    Ok(p)
}

/// TIME_WAIT is charged to the socket's owner: say where owners come from (the connect
/// hooks, the accept hooks) and list those hooks with the signal's own.
fn with_owners(tw: &mut SignalStatus, connect: &SignalStatus, owner_hooks: Vec<String>) {
    if tw.mode == Mode::Unavailable {
        return;
    }
    let connected = match connect.hooks.first() {
        Some(h) => format!("owners from {h}"),
        None => "owners of connected sockets unknown".into(),
    };
    let accepted = match owner_hooks.first() {
        // Both from inet_sock_set_state (--light): SYN_SENT, LISTEN and the first close.
        Some(h) if connect.hooks.first() == Some(h) => {
            "(the connecting task, the listen() caller for accepted sockets, then whoever closes first)".into()
        }
        Some(h) => format!("and {h}"),
        None => "; owners of accepted sockets unknown".into(),
    };
    let base = tw.note.take().map(|n| format!("{n}; ")).unwrap_or_default();
    tw.note = Some(format!("{base}{connected} {accepted}"));
    for h in owner_hooks {
        if !tw.hooks.contains(&h) {
            tw.hooks.push(h);
        }
    }
}

/// Climbs one signal's ladder; the roles its rung needs are added to `roles`.
fn climb(l: &mut Loader, rungs: Vec<Rung>, allowed: Allowed, mode: AttachMode, roles: &mut Vec<u32>) -> SignalStatus {
    let c = ladder::climb(l, &rungs, allowed, mode);
    roles.extend(c.roles);
    c.status
}

fn has(fields: &[u32]) -> bool {
    fields.iter().all(|&f| f != OFFSET_MISSING)
}

impl Probe {
    /// Loads the programs and attaches every signal; `syscall_hooks`: when system-call
    /// tracepoints may be attached.
    pub fn load(mode: AttachMode, events_per_sec: u32, syscall_hooks: SyscallHooks) -> Result<Self> {
        let kernel = procinfo::kernel_release();
        // BTF feeds both the typed hooks (aya) and the offsets (our reader).
        let aya_btf = Btf::from_sys_fs().ok();
        let our_btf = crate::kernel::btf::Btf::from_sys_fs().ok();
        let resolved = offsets::resolve(our_btf.as_ref(), events_per_sec);
        let c = resolved.config;

        let ebpf = EbpfLoader::new()
            .btf(aya_btf.as_ref())
            .override_global("CONFIG", &c, true)
            .load(PROGRAMS)
            .context("loading conntrace's kernel programs")?;
        let skip = std::env::var("CONNTRACE_SKIP_HOOKS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let mut l = Loader { ebpf, btf: aya_btf.as_ref(), types: our_btf.as_ref(), skip, raw_links: Vec::new() };

        let (mut signals, roles) = attach_signals(&mut l, mode, &c, aya_btf.is_some(), syscall_hooks);
        let fd_on_demand =
            if syscall_hooks == SyscallHooks::OnDemand { on_demand(&mut l, &mut signals)? } else { None };
        if signals.iter().all(|(_, s)| s.mode == Mode::Unavailable) {
            let first = signals[0].1.note.clone().unwrap_or_default();
            bail!("no signal could be attached on this kernel ({first}); try --attach-mode auto");
        }
        // Listen-queue drops come from the kernel's own counters, polled: see `listeners`.
        let polled = |what: &str| {
            SignalStatus {
            mode: Mode::SockDiag,
            exact: true,
            hooks: vec!["sock_diag listeners (sk_drops)".into(), "/proc/net/netstat TcpExt".into()],
            armed: None,
            note: Some(format!(
                "{what}, read each interval in every namespace conntrace watches; drops of a listener closed between two reads are counted only in its namespace's TcpExt totals"
            )),
        }
        };
        signals.push((Signal::AcceptQueue, polled("per-listener drop counter and ListenOverflows")));
        signals.push((Signal::SynQueue, polled("per-listener drop counter, TCPReqQFullDrop and TCPReqQFullDoCookies")));
        debug_assert!(signals.iter().map(|(s, _)| *s).eq(Signal::ALL), "status must list every signal in order");
        let Loader { mut ebpf, .. } = l;
        {
            let mut r: Array<_, u32> = Array::try_from(ebpf.map_mut("ROLES").context("ROLES map")?)?;
            for idx in roles {
                r.set(idx, 1, 0)?;
            }
        }
        let status = Status {
            kernel,
            signals,
            losses: Losses::default(),
            watched: Vec::new(),
            missing_offsets: resolved.missing,
        };
        Ok(Probe { ebpf, status, returns_swept: 0, fd_on_demand })
    }

    /// Attaches (`on`) or detaches the fd hook attached on demand; true when that changed
    /// something (never without `--syscall-hooks on-demand` and the system-call rung).
    pub fn arm_fd(&mut self, on: bool) -> Result<bool> {
        let Some(d) = self.fd_on_demand.as_mut() else { return Ok(false) };
        if d.link.is_some() == on {
            return Ok(false);
        }
        let p = raw_tp(&mut self.ebpf)?;
        match d.link.take() {
            Some(link) => p.detach(link).context("detaching the fd hook")?,
            None => d.link = Some(p.attach(FD_SYS_EXIT.1).context("attaching the fd hook")?),
        }
        for (s, st) in &mut self.status.signals {
            if *s == Signal::FdAlloc {
                st.armed = Some(on);
            }
        }
        Ok(true)
    }

    /// Whether the fd hook is attached on demand (`arm_fd` has something to do).
    pub fn fd_on_demand(&self) -> bool {
        self.fd_on_demand.is_some()
    }

    /// All counters, summed over CPUs.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let map: PerCpuHashMap<_, CountKey, u64> =
            PerCpuHashMap::try_from(self.ebpf.map("COUNTS").context("COUNTS map")?)?;
        let mut out = Snapshot::new();
        for item in map.iter() {
            let (k, values) = item?;
            out.insert(k, values.iter().sum());
        }
        Ok(out)
    }

    /// Per-destination counters, summed over CPUs.
    pub fn dest_snapshot(&self) -> Result<BTreeMap<DestKey, u64>> {
        let map: PerCpuHashMap<_, DestKey, u64> =
            PerCpuHashMap::try_from(self.ebpf.map("DEST_COUNTS").context("DEST_COUNTS map")?)?;
        let mut out = BTreeMap::new();
        for item in map.iter() {
            let (k, values) = item?;
            out.insert(k, values.iter().sum());
        }
        Ok(out)
    }

    /// Forgets the counters of processes that are gone (after their last report).
    pub fn forget(&mut self, keys: &[CountKey], dest_keys: &[DestKey]) -> Result<()> {
        let mut map: PerCpuHashMap<_, CountKey, u64> =
            PerCpuHashMap::try_from(self.ebpf.map_mut("COUNTS").context("COUNTS map")?)?;
        for k in keys {
            let _ = map.remove(k);
        }
        let mut map: PerCpuHashMap<_, DestKey, u64> =
            PerCpuHashMap::try_from(self.ebpf.map_mut("DEST_COUNTS").context("DEST_COUNTS map")?)?;
        for k in dest_keys {
            let _ = map.remove(k);
        }
        Ok(())
    }

    /// The comm recorded in the kernel when the process's first counter was created.
    /// The kernel's record of `tgid`'s namespace tw table at its latest refused TIME_WAIT.
    pub fn tw_table(&self, tgid: u32) -> Option<probe_common::counters::TwTable> {
        let map: aya::maps::HashMap<_, u32, probe_common::counters::TwTable> =
            aya::maps::HashMap::try_from(self.ebpf.map("TW_TABLES")?).ok()?;
        map.get(&tgid, 0).ok()
    }

    pub fn kernel_comm(&self, tgid: u32) -> Option<String> {
        let map: aya::maps::HashMap<_, u32, [u8; 16]> = aya::maps::HashMap::try_from(self.ebpf.map("COMMS")?).ok()?;
        map.get(&tgid, 0).ok().map(|c| crate::domain::model::comm_str(&c))
    }

    pub fn losses(&self) -> Result<Losses> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map("STATS").context("STATS map")?)?;
        let get = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
        Ok(Losses {
            dropped_events: get(stat::EVENTS_DROPPED)?,
            counter_map_full: get(stat::COUNTER_MAP_FULL)?,
            owner_map_full: get(stat::OWNER_MAP_FULL)?,
            inflight_map_full: get(stat::INFLIGHT_MAP_FULL)?,
            connect_returns_lost: get(stat::CONNECT_RETURN_LOST)? + self.returns_swept,
            skipped_runs: self.skipped_runs(get(stat::SET_STATE_RESCUED)?),
        })
    }

    /// Drops the in-flight connect records of threads that have exited: a thread leaves
    /// connect() through its return hook whatever ends the call (even a fatal signal), so
    /// such a record is a return the kernel did not show (counted in `losses`).
    pub fn sweep_inflight(&mut self) -> Result<()> {
        let mut map: aya::maps::HashMap<_, u32, probe_common::sock::Inflight> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("INFLIGHT").context("INFLIGHT map")?)?;
        let gone: Vec<u32> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|tid| !std::path::Path::new(&format!("/proc/{tid}")).exists())
            .collect();
        for tid in gone {
            // Recounted only if the removal is the one that took it out.
            if map.remove(&tid).is_ok() {
                self.returns_swept += 1;
            }
        }
        Ok(())
    }

    /// Per program, the runs the kernel skipped or lost: BPF recursion misses, plus for
    /// kprobes the hits the kprobe layer lost (a kretprobe without a free instance). The
    /// set_state program's skips that its rescue program handled (`rescued`) are not lost, and
    /// the rescue program's own skips never are (the first program ran for those events).
    fn skipped_runs(&self, rescued: u64) -> BTreeMap<String, u64> {
        let progs: Vec<(String, u32, u64)> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let id = p.info().ok()?.id();
                let fd = p.fd().ok()?;
                Some((name.to_string(), id, bpf_info::recursion_misses(fd.as_fd(), id).unwrap_or(0)))
            })
            .collect();
        let kprobes: Vec<u32> =
            progs.iter().filter(|(n, ..)| n.contains("kprobe") || n.contains("kretprobe")).map(|p| p.1).collect();
        let missed = if kprobes.is_empty() { Vec::new() } else { bpf_info::kprobe_missed(&kprobes) };
        progs
            .into_iter()
            .filter(|(name, ..)| name != "set_state_btf_rescue")
            .map(|(name, id, n)| {
                let n = if name == "set_state_btf" { n.saturating_sub(rescued) } else { n };
                (name, n + missed.iter().filter(|m| m.0 == id).map(|m| m.1).sum::<u64>())
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Run counts and times of the attached programs (zero unless BPF stats are enabled).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStats {
                    name: name.to_string(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(self.ebpf.take_map("EVENTS").context("EVENTS map")?)?)
    }
}

/// tw-bucket overflow comes from the TIME_WAIT hook: exact where that hook sees
/// inet_twsk_alloc's result (fexit, kprobe), inferred from a full tw table in the set_state
/// fallback.
fn tw_overflow_status(tw: &SignalStatus, table_offsets: bool) -> SignalStatus {
    let mut s = tw.clone();
    match tw.mode {
        Mode::Fexit | Mode::Kprobe | Mode::Unavailable => {}
        _ if table_offsets => {
            s.exact = false;
            s.note = Some(
                "inferred per close (the namespace's tw table is full and did not grow), then corrected each \
                 interval with the namespace's exact TcpExt TCPTimeWaitOverflow: exact per namespace, the split \
                 between processes of one namespace approximate"
                    .into(),
            );
        }
        _ => s = SignalStatus::unavailable("kernel BTF lacks net.ipv4.tcp_death_row (tw table fill)"),
    }
    s
}
