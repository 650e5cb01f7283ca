//! Packets of TCP sockets dropped by netfilter (skb:kfree_skb with NETFILTER_DROP).

use crate::set_state;
use crate::shared::kernel::{read, sk_is_tcp};
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use probe_common::counters::kind;

/// skb:kfree_skb, TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
/// ...): only SKB_DROP_REASON_NETFILTER_DROP (nf_hook_slow's NF_DROP) is looked at, charged
/// to the owner of the socket the packet belongs to (a SYN dropped at OUTPUT because
/// __nf_conntrack_alloc found the table full carries its socket in skb->sk).
#[btf_tracepoint(function = "kfree_skb")]
pub fn nf_drop_btf(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    if reason != off!(drop_reason_netfilter) {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    match read::<u64>(skb, off!(skb_sk)) {
        Some(sk) if sk != 0 && sk_is_tcp(sk) => set_state::charge_to_owner_aux(sk, kind::NETFILTER_DROP, 0),
        _ => {}
    }
    0
}
