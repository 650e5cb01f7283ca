//! Per-process counters, kept in the kernel in a per-CPU hash map and summed in user space.

/// Key of the `COUNTS` map: one counter per process, kind and detail.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    /// Thread-group id (the pid users see); 0 = owner unknown (see [`UNATTRIBUTED`]).
    pub tgid: u32,
    /// One of [`kind`].
    pub kind: u16,
    /// Detail: the errno for connect errors, else 0.
    pub aux: u16,
}

/// Key of the `DEST_COUNTS` map: per process and destination, for the failures and TIME_WAITs
/// whose cause is a destination (ephemeral ports are per destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub tgid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// [`kind::PORT_ASSIGN_FAILURE`] or [`kind::TIME_WAIT`] (TIME_WAIT of connected sockets
    /// only: those hold an ephemeral port).
    pub kind: u16,
    pub family: u16,
    /// Host order.
    pub dport: u16,
    pub _pad: u16,
    /// Network order; IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
}

/// Counts charged to a socket whose owner was never recorded (it was created before
/// conntrace started, or its owner record was evicted).
pub const UNATTRIBUTED: u32 = 0;

pub mod kind {
    /// connect() on a TCP socket (a new attempt, not a re-poll of a pending one).
    pub const CONNECT_ATTEMPT: u16 = 1;
    /// connect() returned 0.
    pub const CONNECT_OK: u16 = 2;
    /// connect() failed synchronously; aux = errno.
    pub const CONNECT_ERROR: u16 = 3;
    /// A non-blocking connect (EINPROGRESS) reached ESTABLISHED.
    pub const CONNECT_ASYNC_OK: u16 = 4;
    /// A non-blocking connect failed later; aux = errno (sk_err, or ECANCELED when the
    /// application closed it before it completed).
    pub const CONNECT_ASYNC_ERROR: u16 = 5;
    /// Ephemeral port assignment failed (inet_hash_connect returned -EADDRNOTAVAIL).
    pub const PORT_ASSIGN_FAILURE: u16 = 6;
    /// A TIME_WAIT (timewait) socket was created for a socket this process owned.
    pub const TIME_WAIT: u16 = 7;
    /// No TIME_WAIT socket could be created because the namespace's tcp_max_tw_buckets was
    /// reached (inet_twsk_alloc returned NULL): the connection closed without TIME_WAIT.
    pub const TW_OVERFLOW: u16 = 8;
    /// fd allocation failed with EMFILE (RLIMIT_NOFILE).
    pub const EMFILE: u16 = 9;
    /// file allocation failed with ENFILE (fs.file-max).
    pub const ENFILE: u16 = 10;
    /// bind() on a TCP socket failed; aux = errno (EADDRNOTAVAIL: the address is not local).
    pub const BIND_ERROR: u16 = 11;
    /// bind() to port 0 failed with EADDRINUSE: no port of the range was free for an
    /// exclusive bind (inet_csk_get_port → inet_csk_find_open_port found none).
    pub const BIND_PORT_EXHAUSTED: u16 = 12;
    /// connect() on a socket that already had a local port (bind before connect): that port
    /// is held exclusively, whatever the destination.
    pub const CONNECT_BOUND: u16 = 13;
    /// listen() on a TCP socket (CLOSE→LISTEN): tells user space which processes (and so
    /// which network namespaces) have listeners to watch.
    pub const LISTEN: u16 = 14;
    /// A TCP buffer allocation refused (__sk_mem_raise_allocated → sock:sock_exceed_buf_limit);
    /// aux bit 0: receive (else send), bit 1: TCP memory was below tcp_mem's pressure
    /// threshold, so the refusal came from the socket's memory cgroup, not tcp_mem.
    pub const TCP_MEM_REFUSED: u16 = 15;
    /// A packet of one of its TCP sockets dropped by netfilter (kfree_skb with
    /// SKB_DROP_REASON_NETFILTER_DROP): a rule, or conntrack unable to track it (table full).
    pub const NETFILTER_DROP: u16 = 16;
    /// A TIME_WAIT (aux = TIME_WAIT) or tw overflow (aux = TW_OVERFLOW) counted by the
    /// set_state fallback turned out to be an abort: the socket sent a reset right after its
    /// CLOSE (tcp_disconnect, tcp_close with unread data, FIN_WAIT aborts). User space takes
    /// it back.
    pub const TW_RETRACTED: u16 = 17;
    /// connect() failed with EADDRNOTAVAIL and no port search failed in it: the address
    /// cannot be used (not local, no route for its family), not port exhaustion. Also counted
    /// as CONNECT_ERROR. Counted apart, in the same program run, so that user space never
    /// has to subtract port failures from connect errors counted at other moments.
    pub const CONNECT_ADDR_UNAVAILABLE: u16 = 18;
}

/// Value of the `TW_TABLES` map, keyed by the tgid charged: its namespace's TIME_WAIT table
/// as the kernel saw it at the latest close of its that found no room (tcp_max_tw_buckets
/// reached). `count` is what inet_twsk_alloc() compares with the limit (`tw_refcount - 1`):
/// TIME_WAIT sockets plus orphaned FIN_WAIT2 ones already in the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwTable {
    pub count: u32,
    pub max: u32,
    /// Network namespace inode.
    pub netns: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] integers laid out without implicit padding; any bit pattern is valid.
unsafe impl aya::Pod for CountKey {}
#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain integers with no padding; any bit pattern is valid.
unsafe impl aya::Pod for TwTable {}
#[cfg(feature = "user")]
// SAFETY: #[repr(C)] integers and a byte array, padding spelled out as `_pad`; any bit
// pattern is valid.
unsafe impl aya::Pod for DestKey {}
