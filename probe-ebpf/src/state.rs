//! `inet_sock_set_state`: one hook serving three signals (see `probe_common::config::role`).

use probe_common::{
    config::role,
    counters::{kind, UNATTRIBUTED},
    sock::{phase, tcp_state},
};

use crate::{
    connect,
    count::{bump, bump_dest, current, current_comm, dest_of_sock},
    kernel::{sk_err, sk_is_tcp, sk_tw_table},
    maps::{role_on, OWNERS, RST_SENT, TW_SEEN},
};

#[inline(always)]
pub fn on_set_state(sk: u64, oldstate: i32, newstate: i32) {
    // Only SYN_SENT→* and *→CLOSE matter; most of the ~10 changes of a connection's life
    // return here, before any kernel memory is read.
    if oldstate != tcp_state::SYN_SENT && newstate != tcp_state::CLOSE && newstate != tcp_state::LISTEN {
        return;
    }
    if !sk_is_tcp(sk) {
        return;
    }
    if newstate == tcp_state::LISTEN {
        // inet_csk_listen_start() runs in the listen() caller's context.
        let (tgid, _) = current();
        bump(tgid, kind::LISTEN, 0, &current_comm());
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
    let reset_sent = RST_SENT.get_ptr(sk).is_some();
    if reset_sent {
        let _ = RST_SENT.remove(sk);
    }
    // tcp_time_wait() runs from FIN_WAIT2 or CLOSING (FIN_WAIT1 first steps to FIN_WAIT2) and
    // ends in tcp_done(), whatever inet_twsk_alloc() returned. The other ways from those
    // states to CLOSE are aborts: a received reset sets sk_err first (tcp_reset →
    // tcp_done_with_error), and one sent by us (FIN_WAIT2 timeout, data after close, orphan
    // limits, linger 0) passes tcp:tcp_send_reset first. The socket is unhashed at this
    // tracepoint on every path (tcp_set_state unhashes before inet_sk_state_store traces),
    // so that cannot tell them apart.
    if (oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING)
        && role_on(role::TW_VIA_SET_STATE)
        && !reset_sent
        && sk_err(sk) == 0
    {
        charge_to_owner(sk, tw_outcome(sk));
    }
    // The socket is done: forget its owner, unless connect() is still running in the owner's
    // thread and will settle the outcome itself (connect::exit removes it then).
    if let Some(o) = OWNERS.get_ptr(sk) {
        if unsafe { (*o).phase } != phase::IN_CONNECT {
            let _ = OWNERS.remove(sk);
        }
    }
}

/// TIME_WAIT or tw-bucket overflow, for a close that went through tcp_time_wait(). Below
/// tcp_max_tw_buckets inet_twsk_alloc() succeeded. At the limit it either just took the
/// last slot (the count grew since the previous such close in this namespace) or was
/// refused. Approximate when TIME_WAITs expire while the table sits at the limit.
#[inline(always)]
fn tw_outcome(sk: u64) -> u16 {
    let Some((net, count, max)) = sk_tw_table(sk) else {
        return kind::TIME_WAIT;
    };
    let prev = TW_SEEN.get_ptr(net).map(|p| unsafe { *p });
    let _ = TW_SEEN.insert(net, count, 0);
    if count < max || prev.is_some_and(|p| count > p) {
        kind::TIME_WAIT
    } else {
        kind::TW_OVERFLOW
    }
}

/// tcp:tcp_send_reset: remember that `sk` aborted (see `on_set_state`).
#[inline(always)]
pub fn on_send_reset(sk: u64) {
    if sk != 0 && role_on(role::TW_VIA_SET_STATE) {
        let _ = RST_SENT.insert(sk, 1, 0);
    }
}

/// Like `charge_to_owner`, with a detail (`CountKey::aux`).
#[inline(always)]
pub fn charge_to_owner_aux(sk: u64, kind: u16, aux: u16) {
    match OWNERS.get_ptr(sk) {
        Some(o) => {
            let o = unsafe { &*o };
            let (tgid, comm) = (o.tgid, o.comm);
            bump(tgid, kind, aux, &comm);
        }
        None => bump(UNATTRIBUTED, kind, aux, &[0; 16]),
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
