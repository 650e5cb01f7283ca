//! Every signal's ladder: which kernel programs hook it, in order of preference (fentry/fexit,
//! then tracepoints, then kprobes), and what each rung needs from this kernel. Walked by
//! [`ladder::climb`](super::ladder::climb).

use probe_common::config::{arity, role};

use super::ladder::{Family, Hook, Rung};
use crate::domain::status::{Mode, SignalStatus, SyscallHooks};

mod fd;
pub use fd::fd_alloc;

pub const KRETPROBE_NOTE: &str = "approximate: a kprobe that fires while another BPF kprobe runs on the same CPU is \
     skipped by the kernel, and a kretprobe is missed when more calls are in flight than its instances (both \
     reported in lost_updates.skipped_runs from Linux 6.7 on, nowhere before)";

const NO_FD_WALK: &str = "kernel BTF lacks the fd→socket offsets";

/// Why a system-call tracepoint rung is not tried: `--syscall-hooks never` (`--light`).
pub const LIGHT: &str = "--light (--syscall-hooks never): no system-call tracepoint (each one slows every system call \
     on the host)";
/// Why a system-call tracepoint rung is not tried: `--syscall-hooks on-demand`, the default.
pub const ON_DEMAND: &str = "no system-call tracepoint by default (each one slows every system call on the host); \
     --syscall-hooks always attaches it";
/// Why a system-call tracepoint rung is not tried: `--syscall-hooks fd`.
pub const FD_ONLY: &str = "--syscall-hooks fd: the fd hook is the only system-call tracepoint (each one slows every \
     system call on the host); --syscall-hooks always attaches this one too";

/// While attached on demand, the fd hook's note.
pub const FD_ON_DEMAND: &str = "system calls that returned EMFILE/ENFILE, counted only while the hook is attached \
     (armed): from when a process holds half its RLIMIT_NOFILE, or would reach it within 10 s at its current rate, \
     until none has for 10 s; failures while it is detached are not counted (--syscall-hooks fd: always \
     attached, exact)";

/// What the running kernel offers that some rungs depend on.
pub struct Kernel<'a> {
    /// BTF has the offsets to walk from an fd to its socket (syscall tracepoints need them).
    pub fd_walk: bool,
    /// BTF has `sock.sk_err` (tells a reset from a TIME_WAIT in the set_state fallback).
    pub sk_err: bool,
    /// BTF has `sk_buff.sk` and SKB_DROP_REASON_NETFILTER_DROP.
    pub netfilter_drop: bool,
    /// inet_sock_set_state as attached: its mode and hook.
    pub set_state: Option<&'a (Mode, String)>,
    /// connect's status, once its ladder was climbed.
    pub connect: Option<&'a SignalStatus>,
    /// When system-call tracepoints may be attached.
    pub syscall_hooks: SyscallHooks,
}

fn fexit(prog: &'static str, func: &'static str, arity: usize) -> Hook {
    Hook::Fexit { prog, func, arity: Some(arity) }
}

fn kprobe(prog: &'static str, func: &'static str) -> Hook {
    Hook::Kprobe { prog, func }
}

fn kprobe_rung(hooks: Vec<Hook>) -> Rung {
    Rung::new(Mode::Kprobe, Family::Kprobe, "kprobe", hooks, KRETPROBE_NOTE)
}

/// inet_sock_set_state: asynchronous connect outcomes in every mode, and the fallback for
/// port failures and TIME_WAIT.
pub fn set_state() -> Vec<Rung> {
    vec![
        Rung::new(
            Mode::TpBtf,
            Family::Tracepoint,
            "tp_btf",
            // Two programs: the second handles the events the kernel skips the first for (it
            // runs at most once at a time per CPU); see the kernel side.
            vec![
                Hook::TpBtf { prog: "set_state_btf", tp: "inet_sock_set_state" },
                Hook::TpBtf { prog: "set_state_btf_rescue", tp: "inet_sock_set_state" },
            ],
            "",
        ),
        Rung::new(
            Mode::Tracepoint,
            Family::Tracepoint,
            "tracepoint",
            vec![Hook::Tracepoint {
                prog: "set_state_tp",
                points: &[("sock", "inet_sock_set_state")],
                layout: &[("skaddr", 8, 8), ("oldstate", 16, 4), ("newstate", 20, 4)],
            }],
            "",
        ),
    ]
}

pub fn connect(k: &Kernel) -> Vec<Rung> {
    vec![
        Rung::new(
            Mode::Fexit,
            Family::Fexit,
            "fexit",
            vec![
                Hook::Fentry { prog: "connect_fentry", func: "inet_stream_connect" },
                fexit("connect_fexit", "inet_stream_connect", arity::INET_STREAM_CONNECT),
            ],
            "TCP connects by any path (syscall or io_uring)",
        ),
        Rung::new(
            Mode::Tracepoint,
            Family::Tracepoint,
            "tracepoint",
            vec![
                Hook::Tracepoint {
                    prog: "connect_enter_tp",
                    points: &[("syscalls", "sys_enter_connect")],
                    layout: &[],
                },
                Hook::Tracepoint { prog: "connect_exit_tp", points: &[("syscalls", "sys_exit_connect")], layout: &[] },
            ],
            "connect(2) system calls; io_uring connects are not seen",
        )
        .blocked_unless(k.fd_walk, NO_FD_WALK)
        .blocked_unless(k.syscall_hooks == SyscallHooks::Always, k.why_no_syscall_hook()),
        via_set_state_rung(
            k,
            "connects that reach SYN_SENT, by any path; errors returned before a SYN is sent (no route, an unusable \
             address, bad arguments) are not seen",
        )
        .role(role::CONNECT_VIA_SET_STATE)
        .partial(),
        kprobe_rung(vec![
            kprobe("connect_kprobe", "inet_stream_connect"),
            kprobe("connect_kretprobe", "inet_stream_connect"),
        ]),
    ]
}

/// The owner of accepted sockets (TIME_WAIT attribution); not a signal of its own.
pub fn accept_owner(k: &Kernel) -> Vec<Rung> {
    vec![
        Rung::new(
            Mode::Fexit,
            Family::Fexit,
            "fexit",
            vec![Hook::Fexit { prog: "accept_fexit", func: "inet_accept", arity: None }],
            "",
        ),
        Rung::new(
            Mode::Tracepoint,
            Family::Tracepoint,
            "tracepoint",
            vec![Hook::Tracepoint {
                prog: "accept_exit_tp",
                points: &[("syscalls", "sys_exit_accept4"), ("syscalls", "sys_exit_accept")],
                layout: &[],
            }],
            "",
        )
        .blocked_unless(k.fd_walk, NO_FD_WALK)
        .blocked_unless(k.syscall_hooks == SyscallHooks::Always, k.why_no_syscall_hook()),
        via_set_state_rung(
            k,
            "accepted sockets are the listen() caller's (fork-shared listeners: the process that called listen()) \
             until a process closes them",
        )
        .role(role::OWNERS_VIA_SET_STATE),
        kprobe_rung(vec![kprobe("accept_kprobe", "inet_accept"), kprobe("accept_kretprobe", "inet_accept")]),
    ]
}

/// The hooks a set_state fallback rung builds on, and its mode.
fn via_set_state(k: &Kernel) -> (Mode, Vec<String>) {
    match k.set_state {
        Some((m, h)) => (*m, vec![h.clone()]),
        None => (Mode::TpBtf, Vec::new()),
    }
}

/// A rung that only switches on logic in the inet_sock_set_state program.
fn via_set_state_rung(k: &Kernel, note: &str) -> Rung {
    let (mode, shared) = via_set_state(k);
    Rung::new(mode, Family::Tracepoint, "set_state", Vec::new(), note)
        .shared(shared)
        .blocked_unless(k.set_state.is_some(), "needs inet_sock_set_state")
}

pub fn port_assign(k: &Kernel) -> Vec<Rung> {
    let (mode, mut shared) = via_set_state(k);
    let connect_ok = k.connect.is_some_and(|c| c.mode != Mode::Unavailable);
    for h in k.connect.map(|c| c.hooks.clone()).unwrap_or_default() {
        if !shared.contains(&h) {
            shared.push(h);
        }
    }
    vec![
        Rung::new(
            Mode::Fexit,
            Family::Fexit,
            "fexit",
            vec![fexit("port_fexit_v4", "inet_hash_connect", arity::INET_HASH_CONNECT)],
            "",
        )
        .optional(vec![fexit("port_fexit_v6", "inet6_hash_connect", arity::INET6_HASH_CONNECT)]),
        Rung::new(
            mode,
            Family::Tracepoint,
            "fallback",
            Vec::new(),
            "SYN_SENT→CLOSE with no local port inside connect() (tcp_v4_connect's failure path after inet_hash_connect)",
        )
        .shared(shared)
        .role(role::PORT_VIA_SET_STATE)
        .blocked_unless(k.set_state.is_some() && connect_ok, "needs inet_sock_set_state and the connect hooks"),
        kprobe_rung(vec![
            kprobe("port_kprobe_v4", "inet_hash_connect"),
            kprobe("port_kretprobe_v4", "inet_hash_connect"),
        ])
        .optional(vec![
            kprobe("port_kprobe_v6", "inet6_hash_connect"),
            kprobe("port_kretprobe_v6", "inet6_hash_connect"),
        ]),
    ]
}

/// TIME_WAIT creation and tw-bucket overflow (one hook serves both).
pub fn time_wait(k: &Kernel) -> Vec<Rung> {
    let (mode, shared) = via_set_state(k);
    // Tells aborts from TIME_WAIT in the set_state fallback.
    let send_reset = Hook::FirstOf(vec![
        Hook::TpBtf { prog: "send_reset_btf", tp: "tcp_send_reset" },
        Hook::Tracepoint { prog: "send_reset_tp", points: &[("tcp", "tcp_send_reset")], layout: &[("skaddr", 16, 8)] },
    ]);
    vec![
        Rung::new(
            Mode::Fexit,
            Family::Fexit,
            "fexit",
            vec![fexit("tw_fexit", "inet_twsk_alloc", arity::INET_TWSK_ALLOC)],
            "",
        ),
        Rung::new(
            mode,
            Family::Tracepoint,
            "fallback",
            vec![send_reset],
            "FIN_WAIT2/CLOSING→CLOSE without sk_err and without a reset sent (tcp_time_wait → tcp_done)",
        )
        .shared(shared)
        .role(role::TW_VIA_SET_STATE)
        .blocked_unless(k.set_state.is_some() && k.sk_err, "needs inet_sock_set_state and sock.sk_err in BTF"),
        kprobe_rung(vec![kprobe("tw_kprobe", "inet_twsk_alloc"), kprobe("tw_kretprobe", "inet_twsk_alloc")]),
    ]
}

impl Kernel<'_> {
    fn why_no_syscall_hook(&self) -> &'static str {
        match self.syscall_hooks {
            SyscallHooks::Never => LIGHT,
            SyscallHooks::Fd => FD_ONLY,
            _ => ON_DEMAND,
        }
    }
}

/// Failed bind() calls on TCP sockets.
pub fn bind(k: &Kernel) -> Vec<Rung> {
    vec![
        Rung::new(Mode::Fexit, Family::Fexit, "fexit", vec![fexit("bind_fexit_v4", "inet_bind", arity::INET_BIND)], "")
            .optional(vec![fexit("bind_fexit_v6", "inet6_bind", arity::INET_BIND)]),
        Rung::new(
            Mode::Tracepoint,
            Family::Tracepoint,
            "tracepoint",
            vec![
                Hook::Tracepoint {
                    prog: "bind_enter_tp",
                    points: &[("syscalls", "sys_enter_bind")],
                    layout: &[("fd", 16, 8), ("umyaddr", 24, 8)],
                },
                Hook::Tracepoint { prog: "bind_exit_tp", points: &[("syscalls", "sys_exit_bind")], layout: &[] },
            ],
            "bind(2) system calls",
        )
        .blocked_unless(k.fd_walk, NO_FD_WALK)
        .blocked_unless(k.syscall_hooks == SyscallHooks::Always, k.why_no_syscall_hook()),
        kprobe_rung(vec![kprobe("bind_kprobe_v4", "inet_bind"), kprobe("bind_kretprobe_v4", "inet_bind")])
            .optional(vec![kprobe("bind_kprobe_v6", "inet6_bind"), kprobe("bind_kretprobe_v6", "inet6_bind")]),
    ]
}

/// TCP memory refusals. Only the tracepoint: it fires when __sk_mem_raise_allocated()
/// refuses, where an fexit or kprobe on that function would run on every buffer charge.
pub fn tcp_mem() -> Vec<Rung> {
    vec![Rung::new(
        Mode::TpBtf,
        Family::Tracepoint,
        "tp_btf",
        vec![Hook::TpBtf { prog: "mem_refused_btf", tp: "sock_exceed_buf_limit" }],
        "buffer allocations refused over net.ipv4.tcp_mem, charged to the socket's owner",
    )]
}

/// Packets of TCP sockets dropped by netfilter (kfree_skb's drop reason; 5.17+).
pub fn netfilter_drop(k: &Kernel) -> Vec<Rung> {
    vec![Rung::new(
        Mode::TpBtf,
        Family::Tracepoint,
        "tp_btf",
        vec![Hook::TpBtf { prog: "nf_drop_btf", tp: "kfree_skb" }],
        "packets of TCP sockets dropped by netfilter (NF_DROP), charged to the socket's owner",
    )
    .blocked_unless(k.netfilter_drop, "kernel BTF lacks sk_buff.sk or SKB_DROP_REASON_NETFILTER_DROP")]
}
