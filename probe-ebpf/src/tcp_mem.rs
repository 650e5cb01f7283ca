//! TCP memory refusals (sock:sock_exceed_buf_limit).

use crate::set_state;
use crate::shared::kernel::{read, sk_is_tcp};
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use probe_common::counters::kind;

/// sock:sock_exceed_buf_limit fires only where __sk_mem_raise_allocated() refuses memory
/// (include/trace/events/sock.h): TP_PROTO(struct sock *sk, struct proto *prot, long
/// allocated, int kind), kind 0 = SK_MEM_SEND, 1 = SK_MEM_RECV.
#[btf_tracepoint(function = "sock_exceed_buf_limit")]
pub fn mem_refused_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(1);
    let allocated: i64 = ctx.arg(2);
    let kind: i32 = ctx.arg(3);
    if sk_is_tcp(sk) {
        // prot->sysctl_mem points at tcp_mem {low, pressure, high} (pages, longs). Below the
        // pressure threshold tcp_mem did not refuse: the memory cgroup did
        // (mem_cgroup_charge_skmem in the same function).
        let pressure = read::<u64>(prot, off!(proto_sysctl_mem)).and_then(|p| read::<i64>(p, 8));
        let memcg = pressure.is_some_and(|p| allocated <= p);
        let aux = (kind == 1) as u16 | if memcg { 2 } else { 0 };
        set_state::charge_to_owner_aux(sk, kind::TCP_MEM_REFUSED, aux);
    }
    0
}
