//! `inet_sock_set_state`: one hook serving three signals (see `probe_common::config::role`).

use crate::accept;
use crate::connect;
use crate::shared::count::{bump, bump_dest, current, current_comm, dest_of_sock};
use crate::shared::kernel::{sk_err, sk_identity, sk_is_tcp, sk_netns, sk_state, sk_tw_table};
use crate::shared::maps::{
    forget_owner, role_on, stat_inc, OWNERS, RST_SENT, SET_STATE_BUSY, TW_CHARGED, TW_SEEN, TW_TABLES,
};
use aya_ebpf::macros::{btf_tracepoint, tracepoint};
use aya_ebpf::programs::{BtfTracePointContext, TracePointContext};
use probe_common::config::{role, stat};
use probe_common::counters::{kind, TwTable, UNATTRIBUTED};
use probe_common::sock::{phase, tcp_state};
#[inline(always)]
pub fn on_set_state(sk: u64, oldstate: i32, newstate: i32) {
    // Without connect or accept hooks, two more changes say who owns a socket (each switched
    // on by its role, checked before any kernel memory is read).
    match (oldstate, newstate) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            if role_on(role::CONNECT_VIA_SET_STATE) && sk_is_tcp(sk) {
                connect::state_attempt(sk);
            }
            return;
        }
        (_, tcp_state::FIN_WAIT1) => {
            if sk_is_tcp(sk) {
                if role_on(role::OWNERS_VIA_SET_STATE) {
                    accept::closing(sk);
                } else {
                    accept::closing_unowned(sk);
                }
            }
            return;
        }
        _ => {}
    }
    // Otherwise only SYN_SENT→*, *→LISTEN and *→CLOSE matter; most of the ~10 changes of a
    // connection's life return here, before any kernel memory is read.
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
        // In every mode: a socket nobody recorded (accepted before conntrace started, or its
        // owner evicted) is charged to its listener's process (`owner_of`).
        accept::listening(sk);
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
    if oldstate == tcp_state::LISTEN {
        accept::not_listening(sk);
        return;
    }
    // Only sockets in these states are marked (see `on_send_reset`): the lookup is skipped
    // for every other close.
    let from_fin =
        oldstate == tcp_state::FIN_WAIT1 || oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING;
    let reset_sent = from_fin && RST_SENT.get_ptr(sk).is_some();
    if reset_sent {
        let _ = RST_SENT.remove(sk);
    }
    // tcp_time_wait() runs from FIN_WAIT2 or CLOSING (FIN_WAIT1 first steps to FIN_WAIT2) and
    // ends in tcp_done(), whatever inet_twsk_alloc() returned. The other ways from those
    // states to CLOSE are aborts: a received reset sets sk_err first (tcp_reset →
    // tcp_done_with_error); a reset we send comes either before the CLOSE (FIN_WAIT2 timer,
    // orphan limits: tcp:tcp_send_reset marks the socket) or right after it (tcp_disconnect
    // for SO_LINGER 0, tcp_close with unread data, FIN_WAIT1 aborts in
    // tcp_rcv_state_process): then `on_send_reset` retracts what was counted here. The socket
    // is unhashed at this tracepoint on every path (tcp_set_state unhashes before
    // inet_sk_state_store traces), so that cannot tell them apart.
    if role_on(role::TW_VIA_SET_STATE)
        && (oldstate == tcp_state::FIN_WAIT2 || oldstate == tcp_state::CLOSING)
        && !reset_sent
        && sk_err(sk) == 0
    {
        let k = tw_outcome(sk);
        let tgid = if k == kind::TW_OVERFLOW { tw_refused(sk) } else { charge_to_owner(sk, k) };
        let _ = TW_CHARGED.insert(sk, [((tgid as u64) << 32) | k as u64, sk_identity(sk)], 0);
    }
    // The socket is done: forget its owner, unless connect() is still running in the owner's
    // thread and will settle the outcome itself (connect::exit removes it then).
    if let Some(o) = OWNERS.get_ptr(sk) {
        // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, used before any other map call.
        if unsafe { (*o).phase } != phase::IN_CONNECT {
            forget_owner(sk);
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
    // Updated in place: an LRU update takes the map's locks and a free node on every close.
    let prev = match TW_SEEN.get_ptr_mut(net) {
        Some(p) => {
            // SAFETY: a pointer to a live map value returned by the lookup just above, used before any other map call.
            let prev = unsafe { *p };
            if prev != count {
                // SAFETY: as above; a racing close in the same namespace writes a count as recent.
                unsafe { *p = count };
            }
            Some(prev)
        }
        None => {
            let _ = TW_SEEN.insert(net, count, 0);
            None
        }
    };
    if count < max || prev.is_some_and(|p| count > p) {
        kind::TIME_WAIT
    } else {
        kind::TW_OVERFLOW
    }
}

/// tcp:tcp_send_reset: `sk` aborts (see `on_set_state`). Before its CLOSE, mark it; after
/// it, take back a TIME_WAIT just counted for it.
#[inline(always)]
pub fn on_send_reset(sk: u64) {
    if sk == 0 || !role_on(role::TW_VIA_SET_STATE) {
        return;
    }
    let st = sk_state(sk) as i32;
    if st == tcp_state::FIN_WAIT1 || st == tcp_state::FIN_WAIT2 || st == tcp_state::CLOSING {
        let _ = RST_SENT.insert(sk, 1, 0);
    } else if st == tcp_state::CLOSE {
        if let Some(v) = TW_CHARGED.get_ptr(sk) {
            // SAFETY: a pointer to a live map value returned by the lookup just above, read before any other map call.
            let [v, ident] = unsafe { *v };
            let _ = TW_CHARGED.remove(sk);
            if ident == sk_identity(sk) {
                bump((v >> 32) as u32, kind::TW_RETRACTED, v as u16, &[0; 16]);
            }
        }
    }
}

/// Like `charge_to_owner`, with a detail (`CountKey::aux`).
#[inline(always)]
pub fn charge_to_owner_aux(sk: u64, kind: u16, aux: u16) {
    match owner_of(sk) {
        Some((tgid, comm)) => bump(tgid, kind, aux, &comm),
        None => bump(UNATTRIBUTED, kind, aux, &[0; 16]),
    }
}

/// The recorded owner of `sk`; without accept hooks, an accepted socket nobody has closed
/// yet belongs to the process listening on its port.
#[inline(always)]
fn owner_of(sk: u64) -> Option<(u32, [u8; 16])> {
    if let Some(o) = OWNERS.get_ptr(sk) {
        // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, read before any other map call.
        let o = unsafe { &*o };
        return Some((o.tgid, o.comm));
    }
    // Accepted before conntrace started, evicted, or (without accept hooks) never recorded:
    // the process listening on its port.
    accept::listener_owner(sk).map(|o| (o.tgid, o.comm))
}

/// Counts a refused TIME_WAIT for the owner of `sk`, and records the namespace's table as
/// inet_twsk_alloc() saw it (for the verdict's evidence).
#[inline(always)]
pub fn tw_refused(sk: u64) -> u32 {
    // Recorded before the count (events before counts, see `count::bump`): a verdict built
    // on the count finds the table.
    // The owner is looked up once; an overflow has no per-destination count.
    let (tgid, comm) = owner_of(sk).unwrap_or((UNATTRIBUTED, [0; 16]));
    if let Some((_, count, max)) = sk_tw_table(sk) {
        let _ = TW_TABLES.insert(tgid, TwTable { count, max, netns: sk_netns(sk), _pad: 0 }, 0);
    }
    bump(tgid, kind::TW_OVERFLOW, 0, &comm);
    tgid
}

/// Counts `kind` for the process that owns `sk` (recorded at connect/accept), or as
/// unattributed when no owner was recorded. Returns the tgid charged.
#[inline(always)]
pub fn charge_to_owner(sk: u64, kind: u16) -> u32 {
    match OWNERS.get_ptr(sk) {
        Some(o) => {
            // SAFETY: `o` points to a live OWNERS value returned by the lookup just above, used before any other map call.
            let o = unsafe { &*o };
            let (tgid, comm, ph) = (o.tgid, o.comm, o.phase);
            bump(tgid, kind, 0, &comm);
            // A connected (not accepted) socket holds an ephemeral port in TIME_WAIT: count it
            // per destination too, for the port-pressure prediction.
            if kind == kind::TIME_WAIT && (ph == phase::SYNC_DONE || ph == phase::ASYNC_DONE) {
                bump_dest(&dest_of_sock(tgid, kind, sk));
            }
            tgid
        }
        None => {
            let (tgid, comm) = owner_of(sk).unwrap_or((UNATTRIBUTED, [0; 16]));
            bump(tgid, kind, 0, &comm);
            tgid
        }
    }
}

/// The kernel runs a tp_btf program at most once at a time per CPU: an event raised while it
/// runs (a softirq interrupting it in process context, e.g. a TIME_WAIT while a connect() or
/// close() is being recorded) skips it (bpf_prog_info.recursion_misses). So two programs
/// serve this tracepoint, run one after the other for every event: this one handles every
/// event and marks itself busy on its CPU meanwhile; `set_state_btf_rescue` handles an event
/// only when it finds this one busy, i.e. runs nested inside it (for any one event the
/// rescue runs after this one has finished).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let busy = SET_STATE_BUSY.get_ptr_mut(0);
    if let Some(b) = busy {
        // SAFETY: this CPU's slot of a per-CPU array; the program cannot migrate while it runs.
        unsafe { *b = 1 };
    }
    on_set_state(sk, old, new);
    if let Some(b) = busy {
        // SAFETY: as above.
        unsafe { *b = 0 };
    }
    0
}

/// See `set_state_btf`: an event it could not run for (it was busy with another one on this
/// CPU) is handled here and counted as rescued; otherwise it already handled the event. An
/// event raised in the few instructions before `set_state_btf` marks itself busy or after it
/// clears the mark is lost, and reported (its skips less the rescued ones).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf_rescue(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let Some(b) = SET_STATE_BUSY.get_ptr(0) else { return 0 };
    // SAFETY: this CPU's slot of a per-CPU array; the program cannot migrate while it runs.
    if unsafe { *b } == 0 {
        return 0;
    }
    stat_inc(stat::SET_STATE_RESCUED);
    on_set_state(sk, old, new);
    0
}

/// Classic tracepoint; record offsets (skaddr 8, oldstate 16, newstate 20) are checked
/// against the event's format file by user space before attaching.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn set_state_tp(ctx: TracePointContext) -> u32 {
    let (Ok(sk), Ok(old), Ok(new)) =
        // SAFETY: reads the tracepoint record at the offset its format file gives (user space checks it before attaching); read_at fails instead of faulting.
        (unsafe { ctx.read_at::<u64>(8) }, unsafe { ctx.read_at::<i32>(16) }, unsafe { ctx.read_at::<i32>(20) })
    else {
        return 0;
    };
    on_set_state(sk, old, new);
    0
}
