//! Ephemeral port search failures (EADDRNOTAVAIL from inet_hash_connect): fexit, or
//! kprobe/kretprobe; the set_state fallback lives in connect.rs and set_state.rs.

use crate::shared::count::{bump, bump_dest, current, current_comm, dest_of_sock, new_event};
use crate::shared::kernel::{fexit_ret, fill_endpoints, sk_is_tcp};
use crate::shared::maps::INFLIGHT;
use crate::shared::stash::{stash, unstash, SLOT_PORT_V4, SLOT_PORT_V6};
use aya_ebpf::macros::{fexit, kprobe, kretprobe};
use aya_ebpf::programs::{FExitContext, ProbeContext, RetProbeContext};
use probe_common::config::arity;
use probe_common::counters::kind;
use probe_common::event;

#[inline(always)]
pub(crate) fn port_failed(sk: u64) {
    if !sk_is_tcp(sk) {
        return;
    }
    let (tgid, tid) = current();
    let comm = current_comm();
    // Tell connect::exit the event is out, so it does not send a second one.
    if let Some(p) = INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: a pointer into this thread's INFLIGHT entry, written only by this thread.
        unsafe { (*p).port_event_sent = 1 };
    }
    // Event before count (see `count::bump`).
    if let Some(mut e) = new_event(event::kind::PORT_ASSIGN_FAILURE, tgid, tid, 99, &comm) {
        // SAFETY: new_event wrote a whole Event into the reserved entry.
        let ev = unsafe { e.assume_init_mut() };
        fill_endpoints(ev, sk);
        e.submit(0);
    }
    bump(tgid, kind::PORT_ASSIGN_FAILURE, 0, &comm);
    bump_dest(&dest_of_sock(tgid, kind::PORT_ASSIGN_FAILURE, sk));
}

/// -EADDRNOTAVAIL (include/uapi/asm-generic/errno.h).
const NEG_EADDRNOTAVAIL: i32 = -99;

#[fexit(function = "inet_hash_connect")]
pub fn port_fexit_v4(ctx: FExitContext) -> u32 {
    // int inet_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)
    if fexit_ret::<i32>(&ctx, arity::INET_HASH_CONNECT) == NEG_EADDRNOTAVAIL {
        port_failed(ctx.arg(1));
    }
    0
}

#[fexit(function = "inet6_hash_connect")]
pub fn port_fexit_v6(ctx: FExitContext) -> u32 {
    if fexit_ret::<i32>(&ctx, arity::INET6_HASH_CONNECT) == NEG_EADDRNOTAVAIL {
        port_failed(ctx.arg(1));
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
