//! What a listener did between two polls of the kernel's listen counters.

use std::{collections::BTreeMap, net::IpAddr};

/// What one listener did since the previous poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerDelta {
    pub netns: u32,
    pub inode: u32,
    pub addr: IpAddr,
    pub port: u16,
    /// SYNs/ACKs dropped since the previous poll (growth of sk_drops).
    pub drops: u64,
    /// Accept queue now: connections waiting for accept(), and the backlog in force
    /// (min(listen() backlog, net.core.somaxconn)).
    pub queue_len: u32,
    pub backlog: u32,
    /// Request sockets (SYN queue) toward this listener's port now.
    pub syn_recv: u64,
    /// SYNs answered with a syncookie because the SYN queue was full (the namespace's
    /// TCPReqQFullDoCookies growth, given to the listener whose SYN queue is full; no
    /// per-listener counter exists for it).
    pub cookies: u64,
}

impl ListenerDelta {
    pub fn accept_queue_full(&self) -> bool {
        // sk_acceptq_is_full(): sk_ack_backlog > sk_max_ack_backlog.
        self.queue_len > self.backlog
    }

    /// inet_csk_reqsk_queue_is_full(): more request sockets than the backlog.
    pub fn syn_queue_full(&self) -> bool {
        self.syn_recv > self.backlog as u64
    }
}

/// Growth of a namespace's listen counters since the previous poll.
pub type NsDelta = BTreeMap<&'static str, u64>;
