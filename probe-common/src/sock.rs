//! Per-socket and per-thread state used to attribute work done in softirq to the process
//! that owns the socket, and to pair connect() entry and exit.

use crate::COMM_LEN;

/// TCP states (include/net/tcp_states.h).
/// TCP states as numbered in include/net/tcp_states.h: the one list both sides use.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// A request socket (the SYN queue of a listener).
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    pub fn from_u8(v: u8) -> Option<TcpState> {
        TcpState::ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// The name `ss` and the kernel's tracepoints print.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

/// The states the kernel programs compare against (inet_sock_set_state's `int` arguments).
pub mod tcp_state {
    use super::TcpState;
    pub const ESTABLISHED: i32 = TcpState::Established as i32;
    pub const SYN_SENT: i32 = TcpState::SynSent as i32;
    pub const SYN_RECV: i32 = TcpState::SynRecv as i32;
    pub const FIN_WAIT1: i32 = TcpState::FinWait1 as i32;
    pub const FIN_WAIT2: i32 = TcpState::FinWait2 as i32;
    pub const CLOSE: i32 = TcpState::Close as i32;
    pub const LISTEN: i32 = TcpState::Listen as i32;
    pub const CLOSING: i32 = TcpState::Closing as i32;
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
    /// The socket came from accept() (or, without accept hooks, from a listener).
    pub const ACCEPTED: u8 = 5;
    /// A blocking connect seen only through its state changes (no connect hook): the next
    /// change out of SYN_SENT is its outcome.
    pub const SYNC_PENDING: u8 = 6;
}

/// `SockOwner::pending`: an outcome seen while connect() was still running.
pub mod pending {
    pub const NONE: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const FAILED: u8 = 2;
}

/// Key of the `LISTENERS` map: a listening port of a network namespace (by inode, so user
/// space can record the listeners that existed before conntrace started).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u32,
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

impl SockOwner {
    /// `tgid` owns the socket in `phase`, with no outcome pending yet.
    pub const fn new(tgid: u32, phase: u8, comm: [u8; COMM_LEN]) -> SockOwner {
        SockOwner { tgid, phase, pending: pending::NONE, pending_err: 0, comm }
    }
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
unsafe impl aya::Pod for ListenKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BindCall {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Inflight {}
