//! Loading the kernel programs and choosing, per signal, the best hook the running kernel
//! accepts: fentry/fexit, then tp_btf, then classic/raw tracepoints, then kprobes (last:
//! approximate, see `KRETPROBE_NOTE`).

use std::{collections::BTreeMap, os::fd::AsFd, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use probe_common::{
    config::{arity, role, stat, OFFSET_MISSING},
    counters::{CountKey, DestKey},
};

use crate::{
    domain::model::Snapshot,
    domain::status::AttachMode,
    domain::status::{Losses, Mode, ProgramStats, Signal, SignalStatus, Status},
    kernel::offsets,
    kernel::tpformat,
    system::procinfo,
};

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrace-probe"));

/// The loaded programs and what they attached to.
pub struct Probe {
    ebpf: Ebpf,
    pub status: Status,
}

/// Short reason for a failed load/attach, for `status` notes.
fn reason(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    if full.contains("Operation not permitted") || full.contains("os error 1)") {
        return "refused by this kernel (EPERM)".into();
    }
    if full.contains("No such file or directory") || full.contains("not found") {
        return "hook not present in this kernel".into();
    }
    full.chars().take(160).collect()
}

/// Makes sure tracefs is reachable for classic tracepoints (a fresh machine has it unmounted).
pub fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .context("running mount -t tracefs")?;
    if !status.success() || !Path::new("/sys/kernel/tracing/events").exists() {
        return Err(anyhow!(
            "tracefs is not mounted and mounting it failed: run `sudo mount -t tracefs tracefs /sys/kernel/tracing`"
        ));
    }
    Ok(())
}

fn tracefs_format(category: &str, name: &str) -> Option<String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/{category}/{name}/format")).ok())
}

struct Loader<'a> {
    ebpf: Ebpf,
    btf: Option<&'a Btf>,
    /// The same BTF through conntrace's own reader (function parameter counts).
    types: Option<&'a crate::kernel::btf::Btf>,
    /// Hook families to pretend the kernel refuses (`CONNTRACE_SKIP_HOOKS`), so tests can
    /// prove every fallback level on a kernel that would take the preferred one.
    skip: Vec<String>,
    /// `ROLES` switches to turn on once everything is attached.
    roles: Vec<u32>,
}

impl Loader<'_> {
    fn skipped(&self, family: &str) -> Result<()> {
        if self.skip.iter().any(|s| s == family) {
            return Err(anyhow!("skipped by CONNTRACE_SKIP_HOOKS"));
        }
        Ok(())
    }

    /// fexit on `func`; `arity` is the parameter count the program reads the return value
    /// after (None when it does not use it), checked against this kernel's BTF.
    fn fexit(&mut self, prog: &str, func: &str, arity: Option<usize>) -> Result<String> {
        self.skipped("fexit")?;
        let btf = self.btf.context("no kernel BTF")?;
        if let Some(want) = arity {
            let have = self.types.and_then(|t| t.function_arity(func));
            if have != Some(want) {
                return Err(anyhow!("{func} has {have:?} parameters in this kernel, the program expects {want}"));
            }
        }
        let p: &mut FExit = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load(func, btf)?;
        p.attach()?;
        Ok(format!("fexit/{func}"))
    }

    fn fentry(&mut self, prog: &str, func: &str) -> Result<String> {
        self.skipped("fexit")?;
        let btf = self.btf.context("no kernel BTF")?;
        let p: &mut FEntry = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load(func, btf)?;
        p.attach()?;
        Ok(format!("fentry/{func}"))
    }

    fn tp_btf(&mut self, prog: &str, tp: &str) -> Result<String> {
        self.skipped("tp_btf")?;
        let btf = self.btf.context("no kernel BTF")?;
        let p: &mut BtfTracePoint = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load(tp, btf)?;
        p.attach()?;
        Ok(format!("tp_btf/{tp}"))
    }

    fn tracepoint(&mut self, prog: &str, points: &[(&str, &str)]) -> Result<Vec<String>> {
        self.skipped("tracepoint")?;
        let p: &mut TracePoint = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load()?;
        let mut hooks = Vec::new();
        for (cat, name) in points {
            p.attach(cat, name)?;
            hooks.push(format!("tracepoint/{cat}/{name}"));
        }
        Ok(hooks)
    }

    /// A kprobe or kretprobe program (the kind comes from the program's section).
    fn kprobe(&mut self, prog: &str, func: &str) -> Result<String> {
        self.skipped("kprobe")?;
        // aya attaches through the kprobe PMU; without CONFIG_KPROBES it does not exist.
        if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            return Err(anyhow!("this kernel has no kprobes (CONFIG_KPROBES unset)"));
        }
        let p: &mut KProbe = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load()?;
        p.attach(func, 0)?;
        let kind = if prog.contains("kretprobe") { "kretprobe" } else { "kprobe" };
        Ok(format!("{kind}/{func}"))
    }

    /// Several kprobes, all or none (the ones attached are unloaded on failure).
    fn kprobes(&mut self, progs: &[(&str, &str)]) -> Result<Vec<String>> {
        let mut hooks = Vec::new();
        for (prog, func) in progs {
            match self.kprobe(prog, func) {
                Ok(h) => hooks.push(h),
                Err(e) => {
                    for (p, _) in progs {
                        self.unload(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(hooks)
    }

    fn raw_tp(&mut self, prog: &str, tp: &str) -> Result<String> {
        self.skipped("raw_tracepoint")?;
        let p: &mut RawTracePoint = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load()?;
        p.attach(tp)?;
        Ok(format!("raw_tracepoint/{tp}"))
    }

    /// Detaches and unloads a program after a partial attach.
    fn unload(&mut self, prog: &str) {
        if let Some(p) = self.ebpf.program_mut(prog) {
            let _ = match p {
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                _ => Ok(()),
            };
        }
    }
}

fn has(fields: &[u32]) -> bool {
    fields.iter().all(|&f| f != OFFSET_MISSING)
}

const KRETPROBE_NOTE: &str = "approximate: a kprobe that fires while another BPF kprobe runs on the same CPU is \
     skipped by the kernel, and a kretprobe is missed when more calls are in flight than its instances";

/// Which hook families the attach mode allows on this kernel.
struct Allowed {
    fexit: bool,
    tp: bool,
    kprobe: bool,
}

/// One signal's way through its candidate hooks: the first that attached, and why the ones
/// before it did not.
#[derive(Default)]
struct Attempt {
    status: Option<SignalStatus>,
    why: Vec<String>,
}

impl Attempt {
    fn attached(&mut self, mode: Mode, hooks: Vec<String>, note: &str) {
        let note = (!note.is_empty()).then(|| note.to_string());
        // kprobe programs share one per-CPU recursion guard (bpf_prog_active): a probe firing
        // while another of them runs on that CPU (softirq on top of a task) is skipped.
        let exact = mode != Mode::Kprobe;
        self.status = Some(SignalStatus { mode, exact, hooks, note });
    }

    fn failed(&mut self, what: &str, e: impl std::fmt::Display) {
        self.why.push(format!("{what}: {e}"));
    }

    fn done(&self) -> bool {
        self.status.is_some()
    }

    /// The hook in use (with why the preferred ones were not used), or unavailable.
    fn finish(self, mode: AttachMode) -> SignalStatus {
        match self.status {
            Some(s) => fell_back(s, &self.why),
            None => SignalStatus::unavailable(why(&self.why, mode)),
        }
    }
}

impl Loader<'_> {
    /// inet_sock_set_state: asynchronous connect outcomes in every mode, and the fallback for
    /// port failures and TIME_WAIT. Returns its mode and hook.
    fn set_state(&mut self, a: &Allowed, why: &mut Vec<String>) -> Option<(Mode, String)> {
        if !(a.fexit || a.tp || a.kprobe) {
            return None;
        }
        match self.tp_btf("set_state_btf", "inet_sock_set_state") {
            Ok(h) => return Some((Mode::TpBtf, h)),
            Err(e) => why.push(format!("tp_btf: {}", reason(&e))),
        }
        // The classic tracepoint's record layout is checked against this kernel's format file.
        let layout = tracefs_format("sock", "inet_sock_set_state")
            .ok_or_else(|| "tracepoint sock/inet_sock_set_state not found".to_string())
            .and_then(|f| tpformat::check(&f, &[("skaddr", 8, 8), ("oldstate", 16, 4), ("newstate", 20, 4)]));
        if let Err(e) = layout {
            why.push(format!("tracepoint: {e}"));
            return None;
        }
        match self.tracepoint("set_state_tp", &[("sock", "inet_sock_set_state")]) {
            Ok(mut h) => Some((Mode::Tracepoint, h.remove(0))),
            Err(e) => {
                why.push(format!("tracepoint: {}", reason(&e)));
                None
            }
        }
    }

    fn connect(&mut self, a: &Allowed, fd_walk_ok: bool) -> Attempt {
        let mut at = Attempt::default();
        if a.fexit {
            let r = self.fentry("connect_fentry", "inet_stream_connect").and_then(|h| {
                Ok([h, self.fexit("connect_fexit", "inet_stream_connect", Some(arity::INET_STREAM_CONNECT))?])
            });
            match r {
                Ok(hooks) => at.attached(Mode::Fexit, hooks.into(), "TCP connects by any path (syscall or io_uring)"),
                Err(e) => {
                    self.unload("connect_fentry");
                    at.failed("fexit", reason(&e));
                }
            }
        }
        if !at.done() && a.tp {
            if !fd_walk_ok {
                at.failed("tracepoint", "kernel BTF lacks the fd→socket offsets");
                return at;
            }
            let r = self.tracepoint("connect_enter_tp", &[("syscalls", "sys_enter_connect")]).and_then(|mut h| {
                h.extend(self.tracepoint("connect_exit_tp", &[("syscalls", "sys_exit_connect")])?);
                Ok(h)
            });
            match r {
                Ok(hooks) => {
                    at.attached(Mode::Tracepoint, hooks, "connect(2) system calls; io_uring connects are not seen")
                }
                Err(e) => at.failed("tracepoint", reason(&e)),
            }
        }
        if !at.done() && a.kprobe {
            match self
                .kprobes(&[("connect_kprobe", "inet_stream_connect"), ("connect_kretprobe", "inet_stream_connect")])
            {
                Ok(hooks) => at.attached(Mode::Kprobe, hooks, KRETPROBE_NOTE),
                Err(e) => at.failed("kprobe", reason(&e)),
            }
        }
        at
    }

    /// Hooks that record the owner of accepted sockets (TIME_WAIT attribution).
    fn accept_owner(&mut self, a: &Allowed, fd_walk_ok: bool) -> Vec<String> {
        if a.fexit {
            if let Ok(h) = self.fexit("accept_fexit", "inet_accept", None) {
                return vec![h];
            }
        }
        if a.tp && fd_walk_ok {
            let points = [("syscalls", "sys_exit_accept4"), ("syscalls", "sys_exit_accept")];
            if let Ok(h) = self.tracepoint("accept_exit_tp", &points) {
                return h;
            }
        }
        if a.kprobe {
            if let Ok(h) = self.kprobes(&[("accept_kprobe", "inet_accept"), ("accept_kretprobe", "inet_accept")]) {
                return h;
            }
        }
        Vec::new()
    }

    fn port_assign(&mut self, a: &Allowed, set_state: Option<&(Mode, String)>, connect: &SignalStatus) -> Attempt {
        let mut at = Attempt::default();
        if a.fexit {
            match self.fexit("port_fexit_v4", "inet_hash_connect", Some(arity::INET_HASH_CONNECT)) {
                Ok(h) => {
                    let mut hooks = vec![h];
                    let mut note = String::new();
                    match self.fexit("port_fexit_v6", "inet6_hash_connect", Some(arity::INET6_HASH_CONNECT)) {
                        Ok(h6) => hooks.push(h6),
                        Err(e) => note = format!("IPv6 not watched: {}", reason(&e)),
                    }
                    at.attached(Mode::Fexit, hooks, &note);
                }
                Err(e) => at.failed("fexit", reason(&e)),
            }
        }
        if !at.done() && a.tp {
            match set_state {
                Some((m, h)) if connect.mode != Mode::Unavailable => {
                    self.roles.push(role::PORT_VIA_SET_STATE);
                    let mut hooks = vec![h.clone()];
                    hooks.extend(connect.hooks.iter().filter(|x| *x != h).cloned());
                    at.attached(
                        *m,
                        hooks,
                        "SYN_SENT→CLOSE inside connect() that returns EADDRNOTAVAIL (tcp_v4_connect failure path)",
                    );
                }
                _ => at.failed("fallback", "needs inet_sock_set_state and the connect hooks"),
            }
        }
        if !at.done() && a.kprobe {
            match self.kprobes(&[("port_kprobe_v4", "inet_hash_connect"), ("port_kretprobe_v4", "inet_hash_connect")]) {
                Ok(mut hooks) => {
                    let mut note = KRETPROBE_NOTE.to_string();
                    match self.kprobes(&[
                        ("port_kprobe_v6", "inet6_hash_connect"),
                        ("port_kretprobe_v6", "inet6_hash_connect"),
                    ]) {
                        Ok(h6) => hooks.extend(h6),
                        Err(e) => note = format!("{note}; IPv6 not watched: {}", reason(&e)),
                    }
                    at.attached(Mode::Kprobe, hooks, &note);
                }
                Err(e) => at.failed("kprobe", reason(&e)),
            }
        }
        at
    }

    /// The hook that tells aborts from TIME_WAIT in the set_state fallback: tcp:tcp_send_reset.
    fn send_reset(&mut self) -> Result<String, String> {
        match self.tp_btf("send_reset_btf", "tcp_send_reset") {
            Ok(h) => return Ok(h),
            Err(e) => {
                let layout = tracefs_format("tcp", "tcp_send_reset")
                    .ok_or_else(|| "tracepoint tcp/tcp_send_reset not found".to_string())
                    .and_then(|f| tpformat::check(&f, &[("skaddr", 16, 8)]));
                if let Err(e2) = layout {
                    return Err(format!("tp_btf: {}; tracepoint: {e2}", reason(&e)));
                }
            }
        }
        self.tracepoint("send_reset_tp", &[("tcp", "tcp_send_reset")])
            .map(|mut h| h.remove(0))
            .map_err(|e| format!("tracepoint: {}", reason(&e)))
    }

    /// TIME_WAIT creation and tw-bucket overflow (one hook serves both).
    fn time_wait(&mut self, a: &Allowed, set_state: Option<&(Mode, String)>, err_ok: bool) -> Attempt {
        let mut at = Attempt::default();
        if a.fexit {
            match self.fexit("tw_fexit", "inet_twsk_alloc", Some(arity::INET_TWSK_ALLOC)) {
                Ok(h) => at.attached(Mode::Fexit, vec![h], ""),
                Err(e) => at.failed("fexit", reason(&e)),
            }
        }
        if !at.done() && a.tp {
            match set_state {
                Some((m, h)) if err_ok => match self.send_reset() {
                    Ok(rst) => {
                        self.roles.push(role::TW_VIA_SET_STATE);
                        at.attached(
                            *m,
                            vec![h.clone(), rst],
                            "FIN_WAIT2/CLOSING→CLOSE without sk_err and without a reset sent (tcp_time_wait → tcp_done)",
                        );
                    }
                    Err(e) => at.failed("fallback", e),
                },
                _ => at.failed("fallback", "needs inet_sock_set_state and sock.sk_err in BTF"),
            }
        }
        if !at.done() && a.kprobe {
            match self.kprobes(&[("tw_kprobe", "inet_twsk_alloc"), ("tw_kretprobe", "inet_twsk_alloc")]) {
                Ok(hooks) => at.attached(Mode::Kprobe, hooks, KRETPROBE_NOTE),
                Err(e) => at.failed("kprobe", reason(&e)),
            }
        }
        at
    }

    /// TCP memory refusals. The tracepoint is the preferred hook here: it fires only when
    /// __sk_mem_raise_allocated() refuses, where an fexit or kprobe on that function would run
    /// on every buffer charge.
    fn tcp_mem(&mut self, a: &Allowed) -> Attempt {
        let mut at = Attempt::default();
        if !a.tp {
            at.failed("tracepoint", "only hooked by tracepoint (sock:sock_exceed_buf_limit), not allowed in this mode");
            return at;
        }
        match self.tp_btf("mem_refused_btf", "sock_exceed_buf_limit") {
            Ok(h) => at.attached(
                Mode::TpBtf,
                vec![h],
                "buffer allocations refused over net.ipv4.tcp_mem, charged to the socket's owner",
            ),
            Err(e) => at.failed("tp_btf", reason(&e)),
        }
        at
    }

    /// Packets of TCP sockets dropped by netfilter (kfree_skb's drop reason; 5.17+).
    fn netfilter_drop(&mut self, a: &Allowed, offsets: bool) -> Attempt {
        let mut at = Attempt::default();
        if !a.tp {
            at.failed("tracepoint", "only hooked by tracepoint (skb:kfree_skb), not allowed in this mode");
        } else if !offsets {
            at.failed("tp_btf", "kernel BTF lacks sk_buff.sk or SKB_DROP_REASON_NETFILTER_DROP");
        } else {
            match self.tp_btf("nf_drop_btf", "kfree_skb") {
                Ok(h) => at.attached(
                    Mode::TpBtf,
                    vec![h],
                    "packets of TCP sockets dropped by netfilter (NF_DROP), charged to the socket's owner",
                ),
                Err(e) => at.failed("tp_btf", reason(&e)),
            }
        }
        at
    }

    /// Failed bind() calls on TCP sockets.
    fn bind(&mut self, a: &Allowed, fd_walk_ok: bool) -> Attempt {
        let mut at = Attempt::default();
        if a.fexit {
            match self.fexit("bind_fexit_v4", "inet_bind", Some(arity::INET_BIND)) {
                Ok(h) => {
                    let mut hooks = vec![h];
                    let mut note = String::new();
                    match self.fexit("bind_fexit_v6", "inet6_bind", Some(arity::INET_BIND)) {
                        Ok(h6) => hooks.push(h6),
                        Err(e) => note = format!("IPv6 not watched: {}", reason(&e)),
                    }
                    at.attached(Mode::Fexit, hooks, &note);
                }
                Err(e) => at.failed("fexit", reason(&e)),
            }
        }
        if !at.done() && a.tp {
            if !fd_walk_ok {
                at.failed("tracepoint", "kernel BTF lacks the fd→socket offsets");
            } else {
                let layout = tracefs_format("syscalls", "sys_enter_bind")
                    .ok_or_else(|| "tracepoint syscalls/sys_enter_bind not found".to_string())
                    .and_then(|f| tpformat::check(&f, &[("fd", 16, 8), ("umyaddr", 24, 8)]));
                let r = layout.map_err(anyhow::Error::msg).and_then(|_| {
                    let mut h = self.tracepoint("bind_enter_tp", &[("syscalls", "sys_enter_bind")])?;
                    h.extend(self.tracepoint("bind_exit_tp", &[("syscalls", "sys_exit_bind")])?);
                    Ok(h)
                });
                match r {
                    Ok(hooks) => at.attached(Mode::Tracepoint, hooks, "bind(2) system calls"),
                    Err(e) => {
                        self.unload("bind_enter_tp");
                        at.failed("tracepoint", reason(&e))
                    }
                }
            }
        }
        if !at.done() && a.kprobe {
            match self.kprobes(&[("bind_kprobe_v4", "inet_bind"), ("bind_kretprobe_v4", "inet_bind")]) {
                Ok(mut hooks) => {
                    let mut note = KRETPROBE_NOTE.to_string();
                    match self.kprobes(&[("bind_kprobe_v6", "inet6_bind"), ("bind_kretprobe_v6", "inet6_bind")]) {
                        Ok(h6) => hooks.extend(h6),
                        Err(e) => note = format!("{note}; IPv6 not watched: {}", reason(&e)),
                    }
                    at.attached(Mode::Kprobe, hooks, &note);
                }
                Err(e) => at.failed("kprobe", reason(&e)),
            }
        }
        at
    }

    fn fd_alloc(&mut self, a: &Allowed) -> Attempt {
        let mut at = Attempt::default();
        if a.fexit {
            let r = self.fexit("fd_fexit_alloc_fd", "alloc_fd", Some(arity::ALLOC_FD)).and_then(|h| {
                Ok([h, self.fexit("fd_fexit_alloc_file", "alloc_empty_file", Some(arity::ALLOC_EMPTY_FILE))?])
            });
            match r {
                Ok(hooks) => at.attached(
                    Mode::Fexit,
                    hooks.into(),
                    "every fd/file allocation failure, including kernel-internal ones",
                ),
                Err(e) => {
                    self.unload("fd_fexit_alloc_fd");
                    at.failed("fexit", reason(&e));
                }
            }
        }
        if !at.done() && a.tp {
            match self.raw_tp("fd_sys_exit", "sys_exit") {
                Ok(h) => {
                    self.roles.push(role::FD_VIA_SYS_EXIT);
                    at.attached(
                        Mode::RawTracepoint,
                        vec![h],
                        "system calls that returned EMFILE/ENFILE, i.e. what applications saw",
                    );
                }
                Err(e) => at.failed("raw_tracepoint", reason(&e)),
            }
        }
        if !at.done() && a.kprobe {
            match self.kprobes(&[
                ("fd_kprobe_alloc_fd", "alloc_fd"),
                ("fd_kretprobe_alloc_fd", "alloc_fd"),
                ("fd_kretprobe_alloc_file", "alloc_empty_file"),
            ]) {
                Ok(hooks) => at.attached(Mode::Kprobe, hooks, KRETPROBE_NOTE),
                Err(e) => at.failed("kprobe", reason(&e)),
            }
        }
        at
    }
}

impl Probe {
    pub fn load(mode: AttachMode, events_per_sec: u32) -> Result<Self> {
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
        let mut l = Loader { ebpf, btf: aya_btf.as_ref(), types: our_btf.as_ref(), skip, roles: Vec::new() };

        // Without the socket offsets no network hook can tell TCP sockets apart.
        let sock_ok = has(&[c.sk_family, c.socket_sk, c.socket_type]);
        let fd_walk_ok = sock_ok && has(&[c.task_files, c.files_fdt, c.fdt_fd, c.fdt_max_fds, c.file_private_data]);
        let allowed = Allowed {
            fexit: matches!(mode, AttachMode::Auto | AttachMode::Fexit) && aya_btf.is_some(),
            tp: matches!(mode, AttachMode::Auto | AttachMode::Tracepoint),
            kprobe: matches!(mode, AttachMode::Auto | AttachMode::Kprobe),
        };
        let net =
            Allowed { fexit: allowed.fexit && sock_ok, tp: allowed.tp && sock_ok, kprobe: allowed.kprobe && sock_ok };

        let mut set_state_why = Vec::new();
        if !sock_ok {
            set_state_why.push("kernel BTF lacks struct sock/socket offsets".to_string());
        }
        let set_state = l.set_state(&net, &mut set_state_why);

        let mut connect = l.connect(&net, fd_walk_ok).finish(mode);
        if connect.mode != Mode::Unavailable {
            l.roles.push(role::CONNECT);
            match &set_state {
                Some((_, h)) => connect.hooks.push(h.clone()),
                None => {
                    connect.exact = false;
                    connect.note =
                        Some(format!("outcomes of non-blocking connects are not seen ({})", set_state_why.join("; ")));
                }
            }
        }
        let owner_hooks = l.accept_owner(&net, fd_walk_ok);
        let port = l.port_assign(&net, set_state.as_ref(), &connect).finish(mode);
        let mut tw = l.time_wait(&net, set_state.as_ref(), c.sk_err != OFFSET_MISSING).finish(mode);
        if tw.mode != Mode::Unavailable {
            let connected = match connect.hooks.first() {
                Some(h) => format!("owners from {h}"),
                None => "owners of connected sockets unknown".into(),
            };
            let accepted = match owner_hooks.first() {
                Some(h) => format!("and {h}"),
                None => "; owners of accepted sockets unknown".into(),
            };
            let base = tw.note.take().map(|n| format!("{n}; ")).unwrap_or_default();
            tw.note = Some(format!("{base}{connected} {accepted}"));
            tw.hooks.extend(owner_hooks);
        }
        let tw_overflow = tw_overflow_status(&tw, c.net_tw_refcount != OFFSET_MISSING);
        let fd = l.fd_alloc(&allowed).finish(mode);
        let bind = l.bind(&net, fd_walk_ok).finish(mode);
        let tcp_mem = l.tcp_mem(&net).finish(mode);
        let nf_drop = l
            .netfilter_drop(&net, c.skb_sk != OFFSET_MISSING && c.drop_reason_netfilter != OFFSET_MISSING)
            .finish(mode);

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
        if signals.iter().all(|(_, s)| s.mode == Mode::Unavailable) {
            let first = signals[0].1.note.clone().unwrap_or_default();
            bail!("no signal could be attached on this kernel ({first}); try --attach-mode auto");
        }
        // Listen-queue drops come from the kernel's own counters, polled: see `listeners`.
        let mut signals = signals;
        let polled = |what: &str| {
            SignalStatus {
            mode: Mode::SockDiag,
            exact: true,
            hooks: vec!["sock_diag listeners (sk_drops)".into(), "/proc/net/netstat TcpExt".into()],
            note: Some(format!(
                "{what}, read each interval in every namespace conntrace watches; drops of a listener closed between two reads are counted only in its namespace's TcpExt totals"
            )),
        }
        };
        signals.push((Signal::AcceptQueue, polled("per-listener drop counter and ListenOverflows")));
        signals.push((Signal::SynQueue, polled("per-listener drop counter, TCPReqQFullDrop and TCPReqQFullDoCookies")));
        debug_assert!(signals.iter().map(|(s, _)| *s).eq(Signal::ALL), "status must list every signal in order");
        let Loader { mut ebpf, roles, .. } = l;
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
        Ok(Probe { ebpf, status })
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
            skipped_runs: self
                .ebpf
                .programs()
                .filter_map(|(name, p)| {
                    let id = p.info().ok()?.id();
                    let fd = p.fd().ok()?;
                    let n = recursion_misses(fd.as_fd(), id)?;
                    (n > 0).then(|| (name.to_string(), n))
                })
                .collect(),
        })
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

/// Adds to a fallback's note why the preferred hooks were not used.
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

/// bpf_prog_info.recursion_misses of a program (include/uapi/linux/bpf.h): aya does not
/// expose it. The answer is used only if the program id read from the same struct matches
/// the one aya read.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>, id: u32) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // Offsets in struct bpf_prog_info (stable uapi): id 4, recursion_misses 208 (Linux 5.12+).
    const ID: usize = 4;
    const RECURSION_MISSES: usize = 208;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = [0u8; 256];
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr { bpf_fd: fd.as_raw_fd() as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`, which lives
    // across the call; attr is a valid bpf_attr prefix for this command.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr as *mut Attr, size_of::<Attr>() as u32)
    };
    if r != 0 || (attr.info_len as usize) < RECURSION_MISSES + 8 {
        return None;
    }
    let got_id = u32::from_ne_bytes(info[ID..ID + 4].try_into().ok()?);
    (got_id == id)
        .then(|| u64::from_ne_bytes(info[RECURSION_MISSES..RECURSION_MISSES + 8].try_into().unwrap_or([0; 8])))
}

fn fell_back(mut s: SignalStatus, reasons: &[String]) -> SignalStatus {
    if !reasons.is_empty() && s.mode != Mode::Unavailable {
        let why = format!("not {}", reasons.join("; "));
        s.note = Some(match s.note.take() {
            Some(n) => format!("{n}; {why}"),
            None => why,
        });
    }
    s
}

fn why(reasons: &[String], mode: AttachMode) -> String {
    let forced = match mode {
        AttachMode::Auto => "",
        AttachMode::Fexit => "attach mode fexit: no fallback allowed; ",
        AttachMode::Tracepoint => "attach mode tracepoint: fexit not tried; ",
        AttachMode::Kprobe => "attach mode kprobe: no fallback allowed; ",
    };
    format!("{forced}{}", if reasons.is_empty() { "no usable hook".to_string() } else { reasons.join("; ") })
}
