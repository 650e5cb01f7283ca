//! Per-thread argument stash for kprobe/kretprobe pairs: a kretprobe sees only the return
//! value, so each entry probe stashes the argument its return probe needs.

use aya_ebpf::{macros::map, maps::LruHashMap};

use super::count::current;

/// (thread id << 8 | slot) → the stashed argument.
#[map]
pub static STASH: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

pub const SLOT_PORT_V4: u64 = 1;
pub const SLOT_PORT_V6: u64 = 2;
pub const SLOT_TW: u64 = 3;
pub const SLOT_ALLOC_FD_END: u64 = 4;
pub const SLOT_ACCEPT: u64 = 5;

#[inline(always)]
fn key(slot: u64) -> u64 {
    let (_, tid) = current();
    ((tid as u64) << 8) | slot
}

#[inline(always)]
pub fn stash(slot: u64, v: u64) {
    let _ = STASH.insert(key(slot), v, 0);
}

#[inline(always)]
pub fn unstash(slot: u64) -> Option<u64> {
    let k = key(slot);
    // SAFETY: a pointer to a live map value of this thread's key, read once right away.
    let v = STASH.get_ptr(k).map(|p| unsafe { *p });
    let _ = STASH.remove(k);
    v
}
