//! The probe: loads conntrace's kernel programs, climbs every signal's attach ladder
//! (fentry/fexit, then tp_btf, then classic/raw tracepoints, then kprobes; see `hooks`), and
//! reads what the programs counted (counters, losses, run-time statistics).

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuHashMap, RingBuf},
    Btf, Ebpf, EbpfLoader,
};
use probe_common::{
    config::{role, OFFSET_MISSING, OWNERS_MAX},
    counters::{CountKey, DestKey},
};

pub use super::loader::ensure_tracefs;
use super::{
    fd_arm::{on_demand, FdOnDemand},
    hooks::{self, Kernel},
    ladder::{self, Allowed, Rung},
    loader::Loader,
    losses::OwnersEvicted,
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
    pub(super) ebpf: Ebpf,
    pub status: Status,
    /// In-flight connect records of exited threads removed by `sweep_inflight`.
    pub(super) returns_swept: u64,
    /// The fd hook attached on demand (`--syscall-hooks on-demand`): its link while attached.
    pub(super) fd_on_demand: Option<FdOnDemand>,
    /// Socket owners the LRU evicted, as last counted (see `losses`).
    pub(super) owners_evicted: OwnersEvicted,
}

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

/// Entries of the socket-owner map: `CONNTRACE_OWNERS_MAX`, for hosts with more sockets open
/// at once than the default holds (each entry ~100 bytes of kernel memory).
/// The map update flag that creates an entry only if the key has none (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

fn owners_max() -> Result<u32> {
    match std::env::var("CONNTRACE_OWNERS_MAX") {
        Err(_) => Ok(OWNERS_MAX),
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if (1024..=16_777_216).contains(&n) => Ok(n),
            _ => bail!("CONNTRACE_OWNERS_MAX={v}: expected a number of sockets from 1024 to 16777216"),
        },
    }
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

        let owners_max = owners_max()?;
        let ebpf = EbpfLoader::new()
            .btf(aya_btf.as_ref())
            .override_global("CONFIG", &c, true)
            .map_max_entries("OWNERS", owners_max)
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
            recording: None,
        };
        Ok(Probe { ebpf, status, returns_swept: 0, fd_on_demand, owners_evicted: OwnersEvicted::new(owners_max) })
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

    /// Records the owners of listeners that existed before conntrace started, as the kernel
    /// programs record those created later (at CLOSE→LISTEN): without accept hooks, what
    /// their accepted connections incur is charged to them from the first interval. A listener
    /// the programs recorded meanwhile keeps its entry. Returns how many were recorded.
    pub fn seed_listeners(&mut self, listeners: &[(u32, u16, u32, String)]) -> Result<usize> {
        let mut map: aya::maps::HashMap<_, probe_common::sock::ListenKey, probe_common::sock::SockOwner> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("LISTENERS").context("LISTENERS map")?)?;
        let mut n = 0;
        for (netns, port, pid, comm) in listeners {
            let key = probe_common::sock::ListenKey { netns: *netns, port: u32::from(*port) };
            let mut c = [0u8; probe_common::COMM_LEN];
            for (d, s) in c.iter_mut().zip(comm.bytes().take(probe_common::COMM_LEN - 1)) {
                *d = s;
            }
            let owner = probe_common::sock::SockOwner::new(*pid, probe_common::sock::phase::ACCEPTED, c);
            // BPF_NOEXIST: the kernel's own record (a listen() seen since) wins.
            if map.insert(key, owner, BPF_NOEXIST).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The event rate limiter's state: (tgid, event kind, state) per entry.
    pub fn limiter(&self) -> Result<Vec<(u32, u16, probe_common::event::Limiter)>> {
        let map: aya::maps::HashMap<_, u64, probe_common::event::Limiter> =
            aya::maps::HashMap::try_from(self.ebpf.map("LIMITER").context("LIMITER map")?)?;
        Ok(map.iter().filter_map(|e| e.ok()).map(|(k, v)| ((k >> 16) as u32, (k & 0xffff) as u16, v)).collect())
    }

    pub fn kernel_comm(&self, tgid: u32) -> Option<String> {
        let map: aya::maps::HashMap<_, u32, [u8; 16]> = aya::maps::HashMap::try_from(self.ebpf.map("COMMS")?).ok()?;
        map.get(&tgid, 0).ok().map(|c| crate::domain::model::comm_str(&c))
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
