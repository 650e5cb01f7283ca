//! accept(): records the owner of accepted sockets, so a TIME_WAIT created later in softirq
//! is charged to the process that accepted the connection.

use crate::connect;
use crate::shared::count::{current, current_comm};
use crate::shared::kernel::{current_stream_sock, sk_net, sk_ports, socket_stream_sk};
use crate::shared::maps::{ListenKey, LISTENERS};
use crate::shared::stash::{stash, unstash, SLOT_ACCEPT};
use aya_ebpf::macros::{fexit, kprobe, kretprobe, tracepoint};
use aya_ebpf::programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext};
use probe_common::sock::{pending, phase, SockOwner};

#[inline(always)]
fn listen_key(sk: u64) -> ListenKey {
    ListenKey { net: sk_net(sk), port: sk_ports(sk).0 as u32, _pad: 0 }
}

/// CLOSE→LISTEN, in the task that called listen() (inet_csk_listen_start).
#[inline(always)]
pub fn listening(sk: u64) {
    let (tgid, _) = current();
    let owner =
        SockOwner { tgid, phase: phase::ACCEPTED, pending: pending::NONE, pending_err: 0, comm: current_comm() };
    let _ = LISTENERS.insert(listen_key(sk), owner, 0);
}

/// LISTEN→CLOSE: the port has no listener any more.
#[inline(always)]
pub fn not_listening(sk: u64) {
    let _ = LISTENERS.remove(listen_key(sk));
}

/// The process that listens on `sk`'s local port in its namespace: without accept hooks, the
/// owner of an accepted socket until someone closes it (`connect::closing`). Looked up only
/// when such a socket has something to charge: nothing runs per accepted connection.
#[inline(always)]
pub fn listener_owner(sk: u64) -> Option<SockOwner> {
    // SAFETY: a pointer to a live map value returned by the lookup, read at once.
    LISTENERS.get_ptr(listen_key(sk)).map(|o| unsafe { *o })
}

#[fexit(function = "inet_accept")]
pub fn accept_fexit(ctx: FExitContext) -> u32 {
    // inet_accept(struct socket *sock, struct socket *newsock, ...): newsock->sk is set on
    // success only.
    let newsock: u64 = ctx.arg(1);
    if let Some(sk) = socket_stream_sk(newsock) {
        connect::accepted(sk);
    }
    0
}

/// Attached to sys_exit_accept4 and sys_exit_accept: the returned fd is the new socket.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn accept_exit_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else {
        return 0;
    };
    if ret >= 0 {
        if let Some(sk) = current_stream_sock(ret as u64) {
            connect::accepted(sk);
        }
    }
    0
}

#[kprobe(function = "inet_accept")]
pub fn accept_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(newsock) = ctx.arg::<u64>(1) {
        stash(SLOT_ACCEPT, newsock);
    }
    0
}

#[kretprobe(function = "inet_accept")]
pub fn accept_kretprobe(ctx: RetProbeContext) -> u32 {
    let newsock = unstash(SLOT_ACCEPT);
    if ctx.ret::<i32>() == 0 {
        if let Some(sk) = newsock.and_then(socket_stream_sk) {
            connect::accepted(sk);
        }
    }
    0
}
