//! bind() failures on TCP sockets: port-0 binds that found no free port (bind-before-connect
//! hoarding) and addresses that are not local (EADDRNOTAVAIL).
//!
//! fexit sees the arguments and the result together; the syscall and kprobe hooks park the
//! requested address per thread at entry (`BINDS`) and settle at exit.

use probe_common::{config::stat, counters::kind, event, sock::BindCall};

use crate::{
    count::{bump, current, current_comm, new_event},
    kernel::{read_sockaddr, sk_is_tcp, sk_netns},
    maps::{stat_inc, BINDS},
};

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
