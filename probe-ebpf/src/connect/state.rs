//! connect() seen through inet_sock_set_state alone (`role::CONNECT_VIA_SET_STATE`, when no
//! connect hook is attached): the attempt at CLOSE→SYN_SENT, the outcome at the change out of
//! SYN_SENT (`super::transition`).

use super::{async_failed, EADDRNOTAVAIL, ECANCELED};
use crate::shared::count::{bump, bump_dest, current, current_comm, dest_of_sock, new_event};
use crate::shared::kernel::{fill_endpoints, sk_err, sk_nonblocking, sk_ports};
use crate::shared::maps::{record_owner, role_on};
use probe_common::config::role;
use probe_common::counters::kind;
use probe_common::sock::{phase, SockOwner};
use probe_common::{event, COMM_LEN};

/// CLOSE→SYN_SENT without connect hooks: tcp_v4_connect()/tcp_v6_connect() set SYN_SENT in
/// the connecting task, before inet_hash_connect() picks the local port; so a local port
/// already there was chosen by bind() (bind-before-connect). Errors returned before this point
/// (no route, an unusable address, bad arguments) are not seen this way.
#[inline(always)]
pub fn state_attempt(sk: u64) {
    let (tgid, _) = current();
    let comm = current_comm();
    bump(tgid, kind::CONNECT_ATTEMPT, 0, &comm);
    if sk_ports(sk).0 != 0 {
        bump(tgid, kind::CONNECT_BOUND, 0, &comm);
    }
    // A non-blocking connect() returns EINPROGRESS: its outcome is asynchronous.
    let ph = if sk_nonblocking(sk) { phase::ASYNC_PENDING } else { phase::SYNC_PENDING };
    let owner = SockOwner::new(tgid, ph, comm);
    record_owner(sk, &owner);
}

/// SYN_SENT→CLOSE of a connect tracked by `state_attempt`. With no error and no local port,
/// inet_hash_connect() found no free port and connect() returns EADDRNOTAVAIL at once (also
/// for non-blocking sockets); otherwise sk_err is the error connect() reports.
#[inline(always)]
pub(super) fn state_failed(sk: u64, tgid: u32, asynchronous: bool, comm: &[u8; COMM_LEN]) {
    let err = sk_err(sk);
    if err == 0 && sk_ports(sk).0 == 0 && role_on(role::PORT_VIA_SET_STATE) {
        // Events before counts (see `count::bump`).
        if let Some(mut e) = new_event(event::kind::PORT_ASSIGN_FAILURE, tgid, 0, EADDRNOTAVAIL, comm) {
            // SAFETY: new_event wrote a whole Event into the reserved entry.
            fill_endpoints(unsafe { e.assume_init_mut() }, sk);
            e.submit(0);
        }
        bump(tgid, kind::PORT_ASSIGN_FAILURE, 0, comm);
        bump_dest(&dest_of_sock(tgid, kind::PORT_ASSIGN_FAILURE, sk));
        bump(tgid, kind::CONNECT_ERROR, EADDRNOTAVAIL, comm);
        return;
    }
    if asynchronous {
        async_failed(sk, tgid, err, comm);
        return;
    }
    // No error with a port: the connect was abandoned (another thread closed the socket) or
    // tcp_connect() failed to send the SYN.
    let err = if err == 0 { ECANCELED } else { err };
    if let Some(mut e) = new_event(event::kind::CONNECT_ERROR, tgid, 0, err, comm) {
        // SAFETY: new_event wrote a whole Event into the reserved entry.
        fill_endpoints(unsafe { e.assume_init_mut() }, sk);
        e.submit(0);
    }
    bump(tgid, kind::CONNECT_ERROR, err, comm);
}
