//! fd and file allocation failures.

use probe_common::{counters::kind, event};

use crate::count::{bump, current, current_comm, new_event};

pub const EMFILE: i64 = 24;
pub const ENFILE: i64 = 23;

/// Counts one EMFILE (with the RLIMIT_NOFILE in force) or ENFILE for the current process.
#[inline(always)]
pub fn failed(errno: i64, limit: u64, syscall_nr: i32) {
    let (tgid, tid) = current();
    let comm = current_comm();
    let (count_kind, event_kind) =
        if errno == EMFILE { (kind::EMFILE, event::kind::EMFILE) } else { (kind::ENFILE, event::kind::ENFILE) };
    // Event before count (see `count::bump`).
    if let Some(mut e) = new_event(event_kind, tgid, tid, errno as u16, &comm) {
        // SAFETY: new_event wrote a whole Event into the reserved entry.
        let ev = unsafe { e.assume_init_mut() };
        ev.limit = limit;
        ev.syscall_nr = syscall_nr;
        e.submit(0);
    }
    bump(tgid, count_kind, 0, &comm);
}
