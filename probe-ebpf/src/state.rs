//! `inet_sock_set_state`: one hook serving three signals (see `probe_common::config::role`).

use probe_common::{
    config::role,
    counters::{kind, UNATTRIBUTED},
    sock::{phase, tcp_state},
};

use crate::{
    connect,
    count::{bump, bump_dest, dest_of_sock},
    kernel::{sk_is_tcp, sk_unhashed},
    maps::{role_on, OWNERS},
};

#[inline(always)]
pub fn on_set_state(sk: u64, oldstate: i32, newstate: i32) {
    // Only SYN_SENT→* and *→CLOSE matter; most of the ~10 changes of a connection's life
    // return here, before any kernel memory is read.
    if oldstate != tcp_state::SYN_SENT && newstate != tcp_state::CLOSE {
        return;
    }
    if !sk_is_tcp(sk) {
        return;
    }
    if oldstate == tcp_state::SYN_SENT
        && (newstate == tcp_state::ESTABLISHED || newstate == tcp_state::CLOSE)
        && role_on(role::CONNECT)
    {
        connect::transition(sk, newstate);
    }
    if newstate != tcp_state::CLOSE {
        return;
    }
    // tcp_time_wait() is entered from FIN_WAIT2 or CLOSING (FIN_WAIT1 only through an
    // immediate FIN_WAIT2 step); only when it really created the timewait socket is the full
    // socket already unhashed here.
    if (oldstate == tcp_state::FIN_WAIT1 || oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING)
        && role_on(role::TW_VIA_SET_STATE)
        && sk_unhashed(sk) == Some(true)
    {
        charge_to_owner(sk, kind::TIME_WAIT);
    }
    // The socket is done: forget its owner, unless connect() is still running in the owner's
    // thread and will settle the outcome itself (connect::exit removes it then).
    if let Some(o) = OWNERS.get_ptr(sk) {
        if unsafe { (*o).phase } != phase::IN_CONNECT {
            let _ = OWNERS.remove(sk);
        }
    }
}

/// Counts `kind` for the process that owns `sk` (recorded at connect/accept), or as
/// unattributed when no owner was recorded.
#[inline(always)]
pub fn charge_to_owner(sk: u64, kind: u16) {
    match OWNERS.get_ptr(sk) {
        Some(o) => {
            let o = unsafe { &*o };
            let (tgid, comm, ph) = (o.tgid, o.comm, o.phase);
            bump(tgid, kind, 0, &comm);
            // A connected (not accepted) socket holds an ephemeral port in TIME_WAIT: count it
            // per destination too, for the port-pressure prediction.
            if kind == kind::TIME_WAIT && (ph == phase::SYNC_DONE || ph == phase::ASYNC_DONE) {
                bump_dest(&dest_of_sock(tgid, kind, sk));
            }
        }
        None => bump(UNATTRIBUTED, kind, 0, &[0; 16]),
    }
}
