//! The kprobe/kretprobe variants: the last resort of the attach strategy, for kernels that
//! refuse fentry/fexit and tracepoints alike. A kretprobe sees only the return value, so each
//! entry probe stashes the argument its return probe needs, per thread.

use aya_ebpf::{
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::counters::kind;

use crate::{bind, connect, count::current, fd, kernel::socket_stream_sk, progs::port_failed, state};

/// (thread id << 8 | slot) → the stashed argument.
#[map]
static STASH: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

const SLOT_PORT_V4: u64 = 1;
const SLOT_PORT_V6: u64 = 2;
const SLOT_TW: u64 = 3;
const SLOT_ALLOC_FD_END: u64 = 4;
const SLOT_ACCEPT: u64 = 5;

#[inline(always)]
fn key(slot: u64) -> u64 {
    let (_, tid) = current();
    ((tid as u64) << 8) | slot
}

#[inline(always)]
fn stash(slot: u64, v: u64) {
    let _ = STASH.insert(key(slot), v, 0);
}

#[inline(always)]
fn unstash(slot: u64) -> Option<u64> {
    let k = key(slot);
    let v = STASH.get_ptr(k).map(|p| unsafe { *p });
    let _ = STASH.remove(k);
    v
}

#[kprobe(function = "inet_stream_connect")]
pub fn connect_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(sock), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    if let Some(sk) = socket_stream_sk(sock) {
        connect::enter(sk, uaddr, false);
    }
    0
}

#[kretprobe(function = "inet_stream_connect")]
pub fn connect_kretprobe(ctx: RetProbeContext) -> u32 {
    connect::exit(ctx.ret::<i32>() as i64);
    0
}

/// inet_bind / inet6_bind entry: park the requested address for the return probe.
#[inline(always)]
fn bind_entry(ctx: &ProbeContext) {
    let (Some(sock), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    if let Some(sk) = socket_stream_sk(sock) {
        bind::enter(sk, bind::call(uaddr, false));
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
    bind::exit(ctx.ret::<i32>() as i64);
    0
}

#[kretprobe(function = "inet6_bind")]
pub fn bind_kretprobe_v6(ctx: RetProbeContext) -> u32 {
    bind::exit(ctx.ret::<i32>() as i64);
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

/// Entry of a port search: remember the socket for the return probe.
#[inline(always)]
fn port_entry(ctx: &ProbeContext, slot: u64) {
    // int inet{,6}_hash_connect(struct inet_timewait_death_row *, struct sock *sk)
    if let Some(sk) = ctx.arg::<u64>(1) {
        stash(slot, sk);
    }
}

/// Return of a port search: -EADDRNOTAVAIL is a port-assignment failure.
#[inline(always)]
fn port_return(ctx: &RetProbeContext, slot: u64) {
    let sk = unstash(slot);
    if ctx.ret::<i32>() == -99 {
        if let Some(sk) = sk {
            port_failed(sk);
        }
    }
}

#[kprobe(function = "inet_hash_connect")]
pub fn port_kprobe_v4(ctx: ProbeContext) -> u32 {
    port_entry(&ctx, SLOT_PORT_V4);
    0
}

#[kretprobe(function = "inet_hash_connect")]
pub fn port_kretprobe_v4(ctx: RetProbeContext) -> u32 {
    port_return(&ctx, SLOT_PORT_V4);
    0
}

#[kprobe(function = "inet6_hash_connect")]
pub fn port_kprobe_v6(ctx: ProbeContext) -> u32 {
    port_entry(&ctx, SLOT_PORT_V6);
    0
}

#[kretprobe(function = "inet6_hash_connect")]
pub fn port_kretprobe_v6(ctx: RetProbeContext) -> u32 {
    port_return(&ctx, SLOT_PORT_V6);
    0
}

#[kprobe(function = "inet_twsk_alloc")]
pub fn tw_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash(SLOT_TW, sk);
    }
    0
}

#[kretprobe(function = "inet_twsk_alloc")]
pub fn tw_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some(sk) = unstash(SLOT_TW) else {
        return 0;
    };
    if !crate::kernel::sk_is_tcp(sk) {
        return 0;
    }
    if ctx.ret::<u64>() == 0 {
        let _ = state::charge_to_owner(sk, kind::TW_OVERFLOW);
    } else {
        let _ = state::charge_to_owner(sk, kind::TIME_WAIT);
    }
    0
}

#[kprobe(function = "alloc_fd")]
pub fn fd_kprobe_alloc_fd(ctx: ProbeContext) -> u32 {
    if let Some(end) = ctx.arg::<u64>(1) {
        stash(SLOT_ALLOC_FD_END, end);
    }
    0
}

#[kretprobe(function = "alloc_fd")]
pub fn fd_kretprobe_alloc_fd(ctx: RetProbeContext) -> u32 {
    let end = unstash(SLOT_ALLOC_FD_END);
    if ctx.ret::<i32>() == -(fd::EMFILE as i32) {
        fd::failed(fd::EMFILE, end.unwrap_or(0) as u32 as u64, -1);
    }
    0
}

#[kretprobe(function = "alloc_empty_file")]
pub fn fd_kretprobe_alloc_file(ctx: RetProbeContext) -> u32 {
    if ctx.ret::<i64>() == -fd::ENFILE {
        fd::failed(fd::ENFILE, 0, -1);
    }
    0
}
