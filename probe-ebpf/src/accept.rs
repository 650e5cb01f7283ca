//! Owners of sockets not connected here: accept() records the process that accepted a socket,
//! so a TIME_WAIT created later in softirq is charged to it; without accept hooks, the
//! listen() caller and then whoever closes first.

use crate::shared::count::{current, current_comm};
use crate::shared::kernel::{current_stream_sock, sk_is_tcp, sk_netns, sk_ports, socket_stream_sk};
use crate::shared::maps::{record_owner, LISTENERS, OWNERS};
use crate::shared::stash::{stash, unstash, SLOT_ACCEPT};
use aya_ebpf::macros::{fexit, kprobe, kretprobe, tracepoint};
use aya_ebpf::programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext};
use probe_common::sock::{phase, ListenKey, SockOwner};

#[inline(always)]
fn listen_key(sk: u64) -> ListenKey {
    ListenKey { netns: sk_netns(sk), port: sk_ports(sk).0 as u32 }
}

/// CLOSE→LISTEN, in the task that called listen() (inet_csk_listen_start).
#[inline(always)]
pub fn listening(sk: u64) {
    let (tgid, _) = current();
    let owner = SockOwner::new(tgid, phase::ACCEPTED, current_comm());
    let _ = LISTENERS.insert(listen_key(sk), owner, 0);
}

/// LISTEN→CLOSE: the port has no listener any more.
#[inline(always)]
pub fn not_listening(sk: u64) {
    let _ = LISTENERS.remove(listen_key(sk));
}

/// The process that listens on `sk`'s local port in its namespace: without accept hooks, the
/// owner of an accepted socket until someone closes it (`closing`). Looked up only
/// when such a socket has something to charge: nothing runs per accepted connection.
#[inline(always)]
pub fn listener_owner(sk: u64) -> Option<SockOwner> {
    // SAFETY: a pointer to a live map value returned by the lookup, read at once.
    LISTENERS.get_ptr(listen_key(sk)).map(|o| unsafe { *o })
}

/// The task closing `sk` first (ESTABLISHED/SYN_RECV→FIN_WAIT1, in tcp_close() or
/// tcp_shutdown()) becomes its owner: the side that closes first keeps the TIME_WAIT. What
/// the owner record says about how the socket was connected is kept.
#[inline(always)]
pub fn closing(sk: u64) {
    let (tgid, _) = current();
    let comm = current_comm();
    match OWNERS.get_ptr_mut(sk) {
        Some(o) => {
            // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, used before any other map call.
            let o = unsafe { &mut *o };
            o.tgid = tgid;
            o.comm = comm;
        }
        None => {
            let owner = SockOwner::new(tgid, phase::ACCEPTED, comm);
            record_owner(sk, &owner);
        }
    }
}

/// With connect and accept hooks: a socket closing first without a recorded owner existed
/// before conntrace started (or its owner was evicted). The closing task holds it: it becomes
/// the owner, so its TIME_WAIT is charged to it rather than to nobody.
#[inline(always)]
pub fn closing_unowned(sk: u64) {
    if OWNERS.get_ptr(sk).is_none() {
        let (tgid, _) = current();
        record_owner(sk, &SockOwner::new(tgid, phase::ACCEPTED, current_comm()));
    }
}

/// Records the process that accepted `sk`, so TIME_WAIT created later in softirq is charged
/// to it.
#[inline(always)]
pub fn accepted(sk: u64) {
    if !sk_is_tcp(sk) {
        return;
    }
    let (tgid, _) = current();
    let owner = SockOwner::new(tgid, phase::ACCEPTED, current_comm());
    record_owner(sk, &owner);
}

#[fexit(function = "inet_accept")]
pub fn accept_fexit(ctx: FExitContext) -> u32 {
    // inet_accept(struct socket *sock, struct socket *newsock, ...): newsock->sk is set on
    // success only.
    let newsock: u64 = ctx.arg(1);
    if let Some(sk) = socket_stream_sk(newsock) {
        accepted(sk);
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
            accepted(sk);
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
            accepted(sk);
        }
    }
    0
}
