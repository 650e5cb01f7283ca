//! connect() outcomes and port-assignment failures seen from connect().
//!
//! `enter` runs at connect() entry (sys_enter_connect or fentry/inet_stream_connect),
//! `exit` at its return, `transition` on SYN_SENT→ESTABLISHED/CLOSE. Without connect hooks
//! (`role::CONNECT_VIA_SET_STATE`), `state_attempt` at CLOSE→SYN_SENT takes `enter`'s place
//! and `transition` settles the outcome alone. The outcome of a
//! non-blocking connect is counted when the state changes; a state change seen while
//! connect() still runs (loopback handshakes complete inside connect()) is parked in the
//! owner record and settled at `exit`, so each attempt is counted exactly once.

use crate::shared::count::{bump, bump_dest, current, current_comm, new_event};
use crate::shared::kernel::{
    current_stream_sock, fexit_ret, fill_endpoints, read_sockaddr, sk_addrs, sk_err, sk_is_tcp, sk_netns, sk_ports,
    sk_state, socket_stream_sk,
};
use crate::shared::maps::{forget_owner, record_owner, role_on, stat_inc, INFLIGHT, OWNERS};
use aya_ebpf::macros::{fentry, fexit, kprobe, kretprobe, tracepoint};
use aya_ebpf::maps::ring_buf::RingBufEntry;
use aya_ebpf::programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext};
use probe_common::config::{arity, role, stat};
use probe_common::counters::{kind, DestKey};
use probe_common::event::Event;
use probe_common::sock::{pending, phase, tcp_state, Inflight, SockOwner};
use probe_common::{event, COMM_LEN};

mod state;
pub use state::state_attempt;
use state::state_failed;
const EADDRNOTAVAIL: u16 = 99;
const EINPROGRESS: u16 = 115;
const ECANCELED: u16 = 125;
/// ERESTARTSYS..ERESTART_RESTARTBLOCK (include/linux/errno.h): the syscall is restarted and
/// the connection goes on, as with EINPROGRESS.
const ERESTART_MIN: u16 = 512;
const ERESTART_MAX: u16 = 516;

#[inline(always)]
pub fn enter(sk: u64, sockaddr: u64, user_sockaddr: bool) {
    if !role_on(role::CONNECT) || !sk_is_tcp(sk) {
        return;
    }
    let (tgid, tid) = current();
    let mut inf = Inflight {
        sk,
        repoll: 0,
        closed_in_connect: 0,
        port_event_sent: 0,
        _pad: [0; 1],
        family: 0,
        dport: 0,
        sport: 0,
        _pad2: 0,
        netns: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    let (family, dport) = read_sockaddr(sockaddr, user_sockaddr, &mut inf.daddr);
    inf.family = family;
    inf.dport = dport;
    // A second connect() on a socket whose non-blocking connect is already tracked only
    // polls it (EALREADY, or the final result): not a new attempt.
    if let Some(o) = OWNERS.get_ptr(sk) {
        // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, used before any other map call.
        let p = unsafe { (*o).phase };
        if p == phase::ASYNC_PENDING || p == phase::ASYNC_DONE {
            inf.repoll = 1;
        }
    }
    if inf.repoll == 0 {
        let comm = current_comm();
        // Counted here, not at the return: a return can go unseen (see
        // stat::CONNECT_RETURN_LOST), an attempt then still counts.
        bump(tgid, kind::CONNECT_ATTEMPT, 0, &comm);
        // A local port before connect() means bind() chose it (bind-before-connect): it is
        // held exclusively, so it cannot serve other destinations (inet_csk_get_port).
        if sk_ports(sk).0 != 0 {
            bump(tgid, kind::CONNECT_BOUND, 0, &comm);
        }
        let owner = SockOwner::new(tgid, phase::IN_CONNECT, comm);
        record_owner(sk, &owner);
    }
    // This thread's previous connect() is still recorded as in flight: its return was not seen.
    if INFLIGHT.get_ptr(tid).is_some() {
        stat_inc(stat::CONNECT_RETURN_LOST);
    }
    if INFLIGHT.insert(tid, inf, 0).is_err() {
        stat_inc(stat::INFLIGHT_MAP_FULL);
    }
}

#[inline(always)]
pub fn exit(ret: i64) {
    let (tgid, tid) = current();
    let Some(p) = INFLIGHT.get_ptr(tid) else {
        return;
    };
    // SAFETY: a pointer to a live map value returned by the lookup just above, read before any other map call.
    let inf = unsafe { *p };
    let _ = INFLIGHT.remove(tid);
    if inf.repoll == 1 {
        return;
    }
    let sk = inf.sk;
    let comm = current_comm();
    let owner = OWNERS.get_ptr_mut(sk);
    if ret == 0 {
        bump(tgid, kind::CONNECT_OK, 0, &comm);
        if let Some(o) = owner {
            // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, used before any other map call.
            unsafe { (*o).phase = phase::SYNC_DONE };
        }
        return;
    }
    let err = (-ret) as u16;
    if err == EINPROGRESS || (ERESTART_MIN..=ERESTART_MAX).contains(&err) {
        if let Some(o) = owner {
            in_progress(o, sk, tgid, &comm);
        }
        return;
    }
    failed(sk, tgid, tid, err, &inf, &comm);
    // A failed connect leaves the socket in CLOSE (no later transition removes the owner).
    if sk_state(sk) as i32 == tcp_state::CLOSE {
        forget_owner(sk);
    } else if let Some(o) = owner {
        // SAFETY: `o` points to a live OWNERS value returned by the lookup above; `failed`
        // never removes OWNERS entries, and this program runs to completion on this CPU.
        unsafe { (*o).phase = phase::SYNC_DONE };
    }
}

/// connect() returned EINPROGRESS (or was interrupted): the outcome may already be known
/// (set_state saw it while connect() ran), else it comes later in softirq.
#[inline(always)]
fn in_progress(o: *mut SockOwner, sk: u64, tgid: u32, comm: &[u8; COMM_LEN]) {
    // SAFETY: `o` points to a live OWNERS value the caller looked up, used before any other map call.
    let o = unsafe { &mut *o };
    match o.pending {
        pending::ESTABLISHED => {
            bump(tgid, kind::CONNECT_ASYNC_OK, 0, comm);
            o.phase = phase::ASYNC_DONE;
        }
        pending::FAILED => {
            let e = o.pending_err;
            async_failed(sk, tgid, e, comm);
            forget_owner(sk);
        }
        _ => o.phase = phase::ASYNC_PENDING,
    }
}

/// connect() failed with `err`: its event first, then its counts (see `count::bump`).
#[inline(always)]
fn failed(sk: u64, tgid: u32, tid: u32, err: u16, inf: &Inflight, comm: &[u8; COMM_LEN]) {
    let port_failure = err == EADDRNOTAVAIL && inf.closed_in_connect == 1;
    // Without the set_state port role, inet_hash_connect's own return hook counts the
    // failure and sets port_event_sent. That hook can be skipped for a call in flight: when
    // another BPF program attaches to or detaches from the function, bpf_tramp_image_put()
    // patches the old trampoline to skip its fexit programs (a task sleeping in the port
    // search's locks on PREEMPT_RT is in flight long enough), and a kretprobe can run out of
    // instances. The socket going SYN_SENT→CLOSE inside connect() with EADDRNOTAVAIL is the
    // port search failing (tcp_v4_connect/tcp_v6_connect's failure path): count it here then.
    if port_failure && (role_on(role::PORT_VIA_SET_STATE) || inf.port_event_sent == 0) {
        if let Some(mut e) = new_event(event::kind::PORT_ASSIGN_FAILURE, tgid, tid, err, comm) {
            fill_from_inflight(&mut e, inf);
            e.submit(0);
        }
        bump(tgid, kind::PORT_ASSIGN_FAILURE, 0, comm);
        bump_dest(&DestKey {
            tgid,
            netns: inf.netns,
            kind: kind::PORT_ASSIGN_FAILURE,
            family: inf.family,
            dport: inf.dport,
            _pad: 0,
            daddr: inf.daddr,
        });
    } else if !(err == EADDRNOTAVAIL && inf.port_event_sent == 1) {
        if let Some(mut e) = new_event(event::kind::CONNECT_ERROR, tgid, tid, err, comm) {
            fill_from_inflight(&mut e, inf);
            // SAFETY: new_event wrote a whole Event into the reserved entry.
            let ev = unsafe { e.assume_init_mut() };
            let (sport, _) = sk_ports(sk);
            ev.sport = sport;
            ev.netns = sk_netns(sk);
            sk_addrs(sk, inf.family, &mut ev.saddr, None);
            e.submit(0);
        }
    }
    bump(tgid, kind::CONNECT_ERROR, err, comm);
    // inet_hash_connect's failure was seen (fexit/kretprobe set port_event_sent) or the
    // socket went SYN_SENT→CLOSE inside connect() (tcp_v4_connect/tcp_v6_connect undoing a
    // failed port search): anything else with EADDRNOTAVAIL is the address itself.
    if err == EADDRNOTAVAIL && inf.closed_in_connect == 0 && inf.port_event_sent == 0 {
        bump(tgid, kind::CONNECT_ADDR_UNAVAILABLE, 0, comm);
    }
}

#[inline(always)]
fn fill_from_inflight(e: &mut RingBufEntry<Event>, inf: &Inflight) {
    // SAFETY: new_event wrote a whole Event into the reserved entry.
    let ev = unsafe { e.assume_init_mut() };
    ev.family = inf.family;
    ev.dport = inf.dport;
    ev.sport = inf.sport;
    ev.netns = inf.netns;
    ev.saddr = inf.saddr;
    ev.daddr = inf.daddr;
}

/// Counts a non-blocking connect that failed: `err` is sk_err at the SYN_SENT→CLOSE change
/// (tcp_reset/tcp_write_err set it before tcp_done), 0 when the application closed it first.
#[inline(always)]
pub(crate) fn async_failed(sk: u64, tgid: u32, err: u16, comm: &[u8; COMM_LEN]) {
    let err = if err == 0 { ECANCELED } else { err };
    // Event before count (see `count::bump`).
    if let Some(mut e) = new_event(event::kind::CONNECT_ERROR, tgid, 0, err, comm) {
        // SAFETY: new_event wrote a whole Event into the reserved entry.
        let ev = unsafe { e.assume_init_mut() };
        ev.flags = event::flag::ASYNC;
        fill_endpoints(ev, sk);
        e.submit(0);
    }
    bump(tgid, kind::CONNECT_ASYNC_ERROR, err, comm);
}

/// SYN_SENT → ESTABLISHED or CLOSE. Runs in whatever context the kernel is in (often
/// softirq): the owner record, not the current task, says whose connect it was.
#[inline(always)]
pub fn transition(sk: u64, newstate: i32) {
    if newstate == tcp_state::CLOSE {
        // tcp_v4_connect()/tcp_v6_connect() failure path: inet_hash_connect failed and the
        // socket goes back to CLOSE inside the caller's connect(). Remember it for `exit`.
        let (_, tid) = current();
        if let Some(p) = INFLIGHT.get_ptr_mut(tid) {
            // SAFETY: a pointer to a live map value returned by the lookup just above, read before any other map call.
            let inf = unsafe { &mut *p };
            if inf.sk == sk {
                inf.closed_in_connect = 1;
                let (sport, _) = sk_ports(sk);
                inf.sport = sport;
                inf.netns = sk_netns(sk);
                let family = inf.family;
                sk_addrs(sk, family, &mut inf.saddr, None);
            }
        }
    }
    let Some(o) = OWNERS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, used before any other map call.
    let o = unsafe { &mut *o };
    match o.phase {
        phase::IN_CONNECT => {
            if newstate == tcp_state::ESTABLISHED {
                o.pending = pending::ESTABLISHED;
            } else {
                o.pending = pending::FAILED;
                o.pending_err = sk_err(sk);
            }
        }
        phase::ASYNC_PENDING => {
            o.phase = phase::ASYNC_DONE;
            let tgid = o.tgid;
            let comm = o.comm;
            if newstate == tcp_state::ESTABLISHED {
                bump(tgid, kind::CONNECT_ASYNC_OK, 0, &comm);
            } else if role_on(role::CONNECT_VIA_SET_STATE) {
                state_failed(sk, tgid, true, &comm);
            } else {
                async_failed(sk, tgid, sk_err(sk), &comm);
            }
        }
        phase::SYNC_PENDING => {
            o.phase = phase::SYNC_DONE;
            let tgid = o.tgid;
            let comm = o.comm;
            if newstate == tcp_state::ESTABLISHED {
                bump(tgid, kind::CONNECT_OK, 0, &comm);
            } else {
                state_failed(sk, tgid, false, &comm);
            }
        }
        _ => {}
    }
}

#[fentry(function = "inet_stream_connect")]
pub fn connect_fentry(ctx: FEntryContext) -> u32 {
    // int inet_stream_connect(struct socket *sock, struct sockaddr *uaddr, int addr_len, int flags)
    let sock: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    if let Some(sk) = socket_stream_sk(sock) {
        enter(sk, uaddr, false);
    }
    0
}

#[fexit(function = "inet_stream_connect")]
pub fn connect_fexit(ctx: FExitContext) -> u32 {
    exit(fexit_ret::<i32>(&ctx, arity::INET_STREAM_CONNECT) as i64);
    0
}

/// Syscall tracepoint records: args are 8-byte slots from offset 16 (fd, uservaddr, addrlen).
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn connect_enter_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
    let (Ok(fd), Ok(addr)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe { ctx.read_at::<u64>(24) }) else {
        return 0;
    };
    if !role_on(role::CONNECT) {
        return 0;
    }
    if let Some(sk) = current_stream_sock(fd) {
        enter(sk, addr, true);
    }
    0
}

/// `ret` is the long at offset 16 of every syscalls:sys_exit_* record.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn connect_exit_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(16) } {
        exit(ret);
    }
    0
}

#[kprobe(function = "inet_stream_connect")]
pub fn connect_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(sock), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    if let Some(sk) = socket_stream_sk(sock) {
        enter(sk, uaddr, false);
    }
    0
}

#[kretprobe(function = "inet_stream_connect")]
pub fn connect_kretprobe(ctx: RetProbeContext) -> u32 {
    exit(ctx.ret::<i32>() as i64);
    0
}
