//! Per-socket and per-thread state used to attribute work done in softirq to the process
//! that owns the socket, and to pair connect() entry and exit.

use crate::COMM_LEN;

/// TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
}

/// `SockOwner::phase`.
pub mod phase {
    /// connect() is running in the owner's thread.
    pub const IN_CONNECT: u8 = 1;
    /// connect() returned EINPROGRESS; the outcome arrives later as a state change.
    pub const ASYNC_PENDING: u8 = 2;
    /// The asynchronous outcome has been counted.
    pub const ASYNC_DONE: u8 = 3;
    /// connect() returned its result synchronously.
    pub const SYNC_DONE: u8 = 4;
    /// The socket came from accept().
    pub const ACCEPTED: u8 = 5;
}

/// `SockOwner::pending`: an outcome seen while connect() was still running.
pub mod pending {
    pub const NONE: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const FAILED: u8 = 2;
}

/// Value of the `OWNERS` LRU map, keyed by `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockOwner {
    pub tgid: u32,
    pub phase: u8,
    pub pending: u8,
    /// sk_err captured with a FAILED pending outcome.
    pub pending_err: u16,
    pub comm: [u8; COMM_LEN],
}

/// Value of the `INFLIGHT` map, keyed by thread id: one connect() in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Inflight {
    pub sk: u64,
    /// 1 when this connect() is a re-poll of an asynchronous connect already tracked.
    pub repoll: u8,
    /// 1 when the socket went SYN_SENT→CLOSE inside this connect() (port search failed
    /// if connect() then returns EADDRNOTAVAIL: tcp_v4_connect's `failure:` path).
    pub closed_in_connect: u8,
    /// 1 when a fexit hook already emitted the port_assign_failure event.
    pub port_event_sent: u8,
    pub _pad: [u8; 1],
    pub family: u16,
    pub dport: u16,
    pub sport: u16,
    pub _pad2: u16,
    pub netns: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Value of the `BINDS` map, keyed by thread id: one bind() in progress (syscall and kprobe
/// hooks see the arguments at entry and the result at exit).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BindCall {
    pub family: u16,
    /// Requested port, host order.
    pub port: u16,
    /// Network namespace inode of the socket.
    pub netns: u32,
    /// Requested address, network order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for SockOwner {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BindCall {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Inflight {}
