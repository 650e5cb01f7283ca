//! Counting per process and emitting failure events.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    maps::{ring_buf::RingBufEntry, PerCpuHashMap},
};
use probe_common::{
    config::stat,
    counters::{CountKey, DestKey},
    event::Event,
    COMM_LEN,
};

use crate::shared::maps::{stat_inc, Limiter, COMMS, COUNTS, DEST_COUNTS, EVENTS, LIMITER};

#[inline(always)]
pub fn current() -> (u32, u32) {
    let pt = bpf_get_current_pid_tgid();
    ((pt >> 32) as u32, pt as u32)
}

#[inline(always)]
pub fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// Adds one to this CPU's slot of a per-CPU counter, atomically: another program (or the
/// set_state rescue) can run nested on this CPU in the middle of a plain read-add-write and
/// its increment of the same counter would be overwritten.
#[inline(always)]
pub fn add_one(p: *mut u64) {
    // SAFETY: `p` points to this CPU's slot of a live per-CPU map value (the caller's lookup);
    // the program cannot migrate while it runs. The result is unused: BPF_XADD (lock add).
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, 1) };
}

/// Adds one to `key` of a per-CPU counter map on this CPU; true when this created the entry.
/// A full map is counted in STATS.
#[inline(always)]
fn increment<K>(map: &PerCpuHashMap<K, u64>, key: &K) -> bool {
    if let Some(p) = map.get_ptr_mut(key) {
        add_one(p);
        return false;
    }
    if map.insert(key, 1, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Another CPU (or a program nested on this one) created the entry meanwhile (EEXIST):
    // count on ours.
    match map.get_ptr_mut(key) {
        Some(p) => add_one(p),
        None => stat_inc(stat::COUNTER_MAP_FULL),
    }
    false
}

/// Adds one to the counter (tgid, kind, aux) on this CPU.
///
/// A failure's event is submitted *before* its count: user space reads the counters, then
/// drains the ring buffer, so every failure in the counts it read already has its event in
/// the ring, unless the rate limit suppressed it (reported with the process's next event) or
/// the ring was full (counted as dropped). The other order leaves a window (wide on PREEMPT_RT,
/// where a BPF program can be preempted between the two) in which a count arrives without
/// the addresses, limit and time its event carries.
#[inline(always)]
pub fn bump(tgid: u32, kind: u16, aux: u16, comm: &[u8; COMM_LEN]) {
    if increment(&COUNTS, &CountKey { tgid, kind, aux }) {
        let _ = COMMS.insert(tgid, comm, 0);
    }
}

/// Adds one to the per-destination counter `key` on this CPU.
#[inline(always)]
pub fn bump_dest(key: &DestKey) {
    increment(&DEST_COUNTS, key);
}

/// The per-destination key of socket `sk` (destination read from the socket).
#[inline(always)]
pub fn dest_of_sock(tgid: u32, kind: u16, sk: u64) -> DestKey {
    let family = crate::shared::kernel::sk_family(sk);
    let (_, dport) = crate::shared::kernel::sk_ports(sk);
    let mut key =
        DestKey { tgid, netns: crate::shared::kernel::sk_netns(sk), kind, family, dport, _pad: 0, daddr: [0; 16] };
    let mut saddr = [0u8; 16];
    crate::shared::kernel::sk_addrs(sk, family, &mut saddr, Some(&mut key.daddr));
    key
}

/// Per (process, kind) token window: at most `events_per_sec` events a second go through
/// the ring buffer; the rest are counted as `suppressed` and reported with the next event.
/// Returns the suppressed count to attach, or None when this event must not be sent.
#[inline(always)]
fn event_allowed(tgid: u32, kind: u16) -> Option<u32> {
    let key = ((tgid as u64) << 16) | kind as u64;
    // SAFETY: a BPF helper that takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let limit = off!(events_per_sec);
    match LIMITER.get_ptr_mut(key) {
        Some(l) => {
            // SAFETY: a pointer to a live LIMITER value returned by the lookup just above, used before any other map call.
            let l = unsafe { &mut *l };
            if now.wrapping_sub(l.window_start) >= 1_000_000_000 {
                l.window_start = now;
                l.sent = 0;
            }
            if l.sent < limit {
                l.sent += 1;
                let s = l.suppressed;
                l.suppressed = 0;
                Some(s)
            } else {
                l.suppressed += 1;
                None
            }
        }
        None => {
            let _ = LIMITER.insert(key, Limiter { window_start: now, sent: 1, suppressed: 0 }, 0);
            Some(0)
        }
    }
}

/// Reserves an event of `kind` for process `tgid`, pre-filled with the header fields, or
/// None when rate-limited or the ring buffer is full (then counted in STATS).
#[inline(always)]
pub fn new_event(kind: u16, tgid: u32, tid: u32, errno: u16, comm: &[u8; COMM_LEN]) -> Option<RingBufEntry<Event>> {
    let suppressed = event_allowed(tgid, kind)?;
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        stat_inc(stat::EVENTS_DROPPED);
        return None;
    };
    entry.write(Event {
        // SAFETY: a BPF helper that takes no arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        limit: 0,
        kind,
        family: 0,
        errno,
        dport: 0,
        sport: 0,
        _pad: 0,
        pid: tgid,
        tid,
        netns: 0,
        syscall_nr: -1,
        flags: 0,
        suppressed,
        saddr: [0; 16],
        daddr: [0; 16],
        comm: *comm,
    });
    Some(entry)
}
