//! The signals conntrace watches: one list, used by the loader, `status`, the JSON contract
//! and the kernel matrix's table, so none of them can drift from the others.

/// One kind of kernel evidence, hooked (or polled) on its own and reported in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// Ephemeral port search failed (EADDRNOTAVAIL from inet_hash_connect).
    PortAssign,
    /// TIME_WAIT sockets created, charged to the socket's owner.
    TimeWait,
    /// No TIME_WAIT because tcp_max_tw_buckets was reached.
    TwOverflow,
    /// EMFILE and ENFILE.
    FdAlloc,
    /// connect() attempts and outcomes.
    Connect,
    /// Failed bind() calls.
    Bind,
    /// TCP buffer allocations refused (tcp_mem).
    TcpMem,
    /// Packets of TCP sockets dropped by netfilter (e.g. a full conntrack table).
    NetfilterDrop,
    /// SYNs/ACKs dropped by a listener whose accept queue is full.
    AcceptQueue,
    /// SYNs dropped (or answered with cookies) by a listener whose SYN queue is full.
    SynQueue,
}

impl Signal {
    /// Every signal, in the order `status` reports them.
    pub const ALL: [Signal; 10] = [
        Signal::PortAssign,
        Signal::TimeWait,
        Signal::TwOverflow,
        Signal::FdAlloc,
        Signal::Connect,
        Signal::Bind,
        Signal::TcpMem,
        Signal::NetfilterDrop,
        Signal::AcceptQueue,
        Signal::SynQueue,
    ];

    /// The name in `status` JSON (part of the output contract: never renamed).
    pub const fn name(self) -> &'static str {
        match self {
            Signal::PortAssign => "port_assign",
            Signal::TimeWait => "time_wait",
            Signal::TwOverflow => "tw_overflow",
            Signal::FdAlloc => "fd_alloc",
            Signal::Connect => "connect",
            Signal::Bind => "bind",
            Signal::TcpMem => "tcp_mem",
            Signal::NetfilterDrop => "netfilter_drop",
            Signal::AcceptQueue => "accept_queue",
            Signal::SynQueue => "syn_queue",
        }
    }

    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}
