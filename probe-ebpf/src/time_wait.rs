//! TIME_WAIT creation and tw-bucket overflow: fexit/inet_twsk_alloc (exact), the set_state
//! fallback with tcp_send_reset telling aborts apart, kprobes last.

use crate::set_state;
use crate::shared::kernel::{fexit_ret, sk_is_tcp};
use crate::shared::stash::{stash, unstash, SLOT_TW};
use aya_ebpf::macros::{btf_tracepoint, fexit, kprobe, kretprobe, tracepoint};
use aya_ebpf::programs::{BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext};
use probe_common::config::arity;
use probe_common::counters::kind;

#[fexit(function = "inet_twsk_alloc")]
pub fn tw_fexit(ctx: FExitContext) -> u32 {
    // struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, ...): NULL when
    // tcp_max_tw_buckets is reached.
    let sk: u64 = ctx.arg(0);
    if !sk_is_tcp(sk) {
        return 0;
    }
    if fexit_ret::<u64>(&ctx, arity::INET_TWSK_ALLOC) == 0 {
        let _ = set_state::tw_refused(sk);
    } else {
        let _ = set_state::charge_to_owner(sk, kind::TIME_WAIT);
    }
    0
}

/// tcp:tcp_send_reset (`sk` is argument 0 on every kernel that has it).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    set_state::on_send_reset(ctx.arg(0));
    0
}

/// Classic tracepoint: `skaddr` at offset 16, checked against the format file.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn send_reset_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(16) } {
        set_state::on_send_reset(sk);
    }
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
    if !sk_is_tcp(sk) {
        return 0;
    }
    if ctx.ret::<u64>() == 0 {
        let _ = set_state::tw_refused(sk);
    } else {
        let _ = set_state::charge_to_owner(sk, kind::TIME_WAIT);
    }
    0
}
