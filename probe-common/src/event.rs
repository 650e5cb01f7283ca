//! Failure events sent to user space through the ring buffer (failures only: successes are
//! just counted).

use crate::COMM_LEN;

/// The failures that send an event: numbered as their counters ([`crate::counters::kind`]),
/// so a failure has one number on both paths. A connect error event may also carry
/// `CONNECT_ASYNC_ERROR`'s outcome: it is sent as `CONNECT_ERROR` with [`flag::ASYNC`].
/// For `BIND_ERROR`, `sport` is the requested port (0 = any) and `saddr` the requested address.
pub mod kind {
    pub use crate::counters::kind::{BIND_ERROR, CONNECT_ERROR, EMFILE, ENFILE, PORT_ASSIGN_FAILURE};
}

/// Event rate limiter state per (process, kind), keyed by `tgid << 16 | kind`: the events
/// sent in the current one-second window from `window_start` (CLOCK_MONOTONIC ns), and the
/// failures not sent since the last event that was, which the next event carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limiter {
    pub window_start: u64,
    pub sent: u32,
    pub suppressed: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Limiter {}

/// `Event::flags` bits.
pub mod flag {
    /// The connect failed after connect() returned EINPROGRESS.
    pub const ASYNC: u32 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// RLIMIT_NOFILE in force for EMFILE; 0 otherwise.
    pub limit: u64,
    pub kind: u16,
    /// AF_INET / AF_INET6 for network events, 0 otherwise.
    pub family: u16,
    /// Positive errno.
    pub errno: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Source port, host byte order (0 when none was assigned).
    pub sport: u16,
    pub _pad: u16,
    /// Process (thread-group) id and thread id.
    pub pid: u32,
    pub tid: u32,
    /// Network namespace inode number; 0 if unknown.
    pub netns: u32,
    /// Syscall number for fd failures seen at sys_exit; -1 if not known.
    pub syscall_nr: i32,
    pub flags: u32,
    /// Events of the same process and kind not sent since the previous one (rate limit).
    pub suppressed: u32,
    /// Network order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
