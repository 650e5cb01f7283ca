//! bind() failures on TCP sockets: port-0 binds that found no free port (bind-before-connect
//! hoarding) and addresses that are not local (EADDRNOTAVAIL).
//!
//! fexit sees the arguments and the result together; the syscall and kprobe hooks park the
//! requested address per thread at entry (`BINDS`) and settle at exit.

use crate::shared::count::{bump, current, current_comm, new_event};
use crate::shared::kernel::{current_stream_sock, fexit_ret, read_sockaddr, sk_is_tcp, sk_netns, socket_stream_sk};
use crate::shared::maps::{stat_inc, BINDS};
use aya_ebpf::macros::{fexit, kprobe, kretprobe, tracepoint};
use aya_ebpf::programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext};
use probe_common::config::{arity, stat};
use probe_common::counters::kind;
use probe_common::event;
use probe_common::sock::BindCall;
/// include/uapi/asm-generic/errno.h
const EADDRINUSE: u16 = 98;
const EADDRNOTAVAIL: u16 = 99;

/// The requested address of a bind() (`sockaddr` in user or kernel memory).
#[inline(always)]
pub fn call(sockaddr: u64, user: bool) -> BindCall {
    let mut c = BindCall { family: 0, port: 0, netns: 0, addr: [0; 16] };
    let (family, port) = read_sockaddr(sockaddr, user, &mut c.addr);
    c.family = family;
    c.port = port;
    c
}

/// Entry of a bind() on TCP socket `sk` (syscall and kprobe modes).
#[inline(always)]
pub fn enter(sk: u64, mut c: BindCall) {
    if !sk_is_tcp(sk) {
        // A parked entry whose exit was missed must not be settled by this call's exit.
        let (_, tid) = current();
        let _ = BINDS.remove(tid);
        return;
    }
    c.netns = sk_netns(sk);
    let (_, tid) = current();
    if BINDS.insert(tid, c, 0).is_err() {
        stat_inc(stat::INFLIGHT_MAP_FULL);
    }
}

/// Exit of a bind() whose entry was parked by `enter`.
#[inline(always)]
pub fn exit(ret: i64) {
    let (_, tid) = current();
    let Some(p) = BINDS.get_ptr(tid) else {
        return;
    };
    // SAFETY: a pointer to a live map value returned by the lookup just above, read before any other map call.
    let c = unsafe { *p };
    let _ = BINDS.remove(tid);
    result(ret, &c);
}

/// Counts a failed bind (`ret` < 0) of a TCP socket.
#[inline(always)]
pub fn result(ret: i64, c: &BindCall) {
    if ret >= 0 {
        return;
    }
    let err = (-ret) as u16;
    let (tgid, tid) = current();
    let comm = current_comm();
    // Event before count (see `count::bump`).
    if err == EADDRINUSE || err == EADDRNOTAVAIL {
        if let Some(mut e) = new_event(event::kind::BIND_ERROR, tgid, tid, err, &comm) {
            // SAFETY: new_event wrote a whole Event into the reserved entry.
            let ev = unsafe { e.assume_init_mut() };
            ev.family = c.family;
            ev.sport = c.port;
            ev.saddr = c.addr;
            ev.netns = c.netns;
            e.submit(0);
        }
    }
    bump(tgid, kind::BIND_ERROR, err, &comm);
    // inet_csk_get_port() with port 0 found no port it may bind exclusively
    // (inet_csk_find_open_port), and __inet_bind() reports that as EADDRINUSE.
    if err == EADDRINUSE && c.port == 0 {
        bump(tgid, kind::BIND_PORT_EXHAUSTED, 0, &comm);
    }
}

#[inline(always)]
fn bind_fexit(ctx: &FExitContext) {
    // int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len), and inet6_bind
    let ret = fexit_ret::<i32>(ctx, arity::INET_BIND);
    if ret >= 0 {
        return;
    }
    let sock: u64 = ctx.arg(0);
    let Some(sk) = socket_stream_sk(sock) else {
        return;
    };
    if !sk_is_tcp(sk) {
        return;
    }
    let mut c = call(ctx.arg(1), false);
    c.netns = sk_netns(sk);
    result(ret as i64, &c);
}

#[fexit(function = "inet_bind")]
pub fn bind_fexit_v4(ctx: FExitContext) -> u32 {
    bind_fexit(&ctx);
    0
}

#[fexit(function = "inet6_bind")]
pub fn bind_fexit_v6(ctx: FExitContext) -> u32 {
    bind_fexit(&ctx);
    0
}

/// sys_enter_bind: fd at 16, umyaddr at 24 (checked against the format file).
#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn bind_enter_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
    let (Ok(fd), Ok(addr)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe { ctx.read_at::<u64>(24) }) else {
        return 0;
    };
    if let Some(sk) = current_stream_sock(fd) {
        enter(sk, call(addr, true));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn bind_exit_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(16) } {
        exit(ret);
    }
    0
}

/// inet_bind / inet6_bind entry: park the requested address for the return probe.
#[inline(always)]
fn bind_entry(ctx: &ProbeContext) {
    let (Some(sock), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    if let Some(sk) = socket_stream_sk(sock) {
        enter(sk, call(uaddr, false));
    }
}

#[kprobe(function = "inet_bind")]
pub fn bind_kprobe_v4(ctx: ProbeContext) -> u32 {
    bind_entry(&ctx);
    0
}

#[kprobe(function = "inet6_bind")]
pub fn bind_kprobe_v6(ctx: ProbeContext) -> u32 {
    bind_entry(&ctx);
    0
}

#[kretprobe(function = "inet_bind")]
pub fn bind_kretprobe_v4(ctx: RetProbeContext) -> u32 {
    exit(ctx.ret::<i32>() as i64);
    0
}

#[kretprobe(function = "inet6_bind")]
pub fn bind_kretprobe_v6(ctx: RetProbeContext) -> u32 {
    exit(ctx.ret::<i32>() as i64);
    0
}
