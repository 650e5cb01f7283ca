//! What a verdict shows as proof: one typed struct per cause family. Serialized, each is the
//! `evidence` object of the JSON contract (field order is key order); the summaries and fixes
//! are written from the same values.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// The evidence of one verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Proof {
    FdLimit(FdLimitProof),
    FdPressure(FdPressureProof),
    FileMax(FileMaxProof),
    /// Ephemeral ports toward a destination (ephemeral_ports).
    Ports(PortProof),
    /// The destination's namespace could not be read.
    PortsUnknown(UnreadableNet),
    TimeWaitPressure(TimeWaitPressureProof),
    TwBuckets(TwBucketsProof),
    TwTablePressure(TwTablePressureProof),
    PortPressure(PortPressureProof),
    /// conntrack_pressure and tcp_mem_pressure: a table filling toward its limit.
    TablePressure(TablePressureProof),
    AcceptQueuePressure(QueuePressureProof),
    BindHoarding(BindHoardingProof),
    AddressUnavailable(AddressProof),
    /// accept_queue and syn_queue.
    ListenQueue(ListenProof),
    Conntrack(ConntrackProof),
    TcpMem(TcpMemProof),
}

/// Per-namespace counters by name (TcpExt, conntrack statistics).
pub type NamedCounters = BTreeMap<&'static str, u64>;

/// What is not known is left out, and `note` says why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FdLimitProof {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nofile_soft: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nofile_hard: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_fds: Option<u64>,
    /// Open fds that are sockets: its concurrent connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Open fds growing toward RLIMIT_NOFILE (fd_pressure).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FdPressureProof {
    pub open_fds: u64,
    pub nofile_soft: u64,
    pub nofile_hard: Option<u64>,
    /// fds opened per second over the last readings (one decimal).
    pub rate_per_s: f64,
    /// Until the limit at that rate.
    pub seconds_left: u64,
}

/// A listener's accept queue staying near its backlog (accept_queue_pressure).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueuePressureProof {
    pub queue_len: u32,
    pub backlog: u32,
    /// How long every reading has found it at least 4/5 full.
    pub for_s: u64,
    pub netns: u32,
}

/// A namespace's TIME_WAIT table filling (tw_table_pressure).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TwTablePressureProof {
    /// TIME_WAIT sockets in the namespace (/proc/net/sockstat `tw`).
    pub time_wait: u64,
    pub tcp_max_tw_buckets: u64,
    /// Net growth of the table per second over the last readings (one decimal).
    pub rate_per_s: f64,
    pub seconds_left: u64,
    pub netns: u32,
}

/// Ports in use toward a destination growing toward the usable range (port_pressure).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortPressureProof {
    /// Sockets holding an ephemeral port toward the destination, every state.
    pub in_use: u64,
    /// `low-high` of net.ipv4.ip_local_port_range.
    pub range: String,
    /// Ports of the range that are not reserved.
    pub usable: u64,
    pub states: BTreeMap<&'static str, u64>,
    /// Net growth per second over the last readings (one decimal).
    pub rate_per_s: f64,
    pub seconds_left: u64,
    pub netns: u32,
}

/// A kernel table filling toward its limit (conntrack_pressure: entries toward
/// nf_conntrack_max; tcp_mem_pressure: pages toward tcp_mem's pressure threshold).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TablePressureProof {
    pub value: u64,
    pub limit: u64,
    /// What `value` and `limit` count.
    pub unit: &'static str,
    /// Net growth per second over the last readings (one decimal).
    pub rate_per_s: f64,
    pub seconds_left: u64,
    /// The namespace (conntrack; TCP memory is machine-wide).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileMaxProof {
    pub file_nr: Option<u64>,
    pub file_max: Option<u64>,
}

/// The ports toward one destination, from the local port range down to their states.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortProof {
    /// `low-high` of net.ipv4.ip_local_port_range.
    pub range: String,
    pub range_size: u64,
    /// net.ipv4.ip_local_reserved_ports, as ports and `low-high` runs.
    pub reserved: Vec<String>,
    /// Ports of the range that are not reserved.
    pub usable: u64,
    pub established: u64,
    pub time_wait: u64,
    /// Every other state.
    pub other: u64,
    pub states: BTreeMap<&'static str, u64>,
    pub tcp_tw_reuse: Option<u32>,
    /// Whether tcp_tw_reuse lets connect() reuse TIME_WAIT ports toward this destination.
    pub tcp_tw_reuse_applies: bool,
    pub netns: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnreadableNet {
    pub netns: u32,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeWaitPressureProof {
    #[serde(flatten)]
    pub ports: PortProof,
    /// TIME_WAIT sockets created per second toward the destination (one decimal).
    pub rate_per_s: f64,
    pub seconds_left: u64,
    /// TIME_WAIT sockets alive at once at this rate (rate × 60 s).
    pub predicted_time_wait: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TwBucketsProof {
    /// Why the namespace could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub tcp_max_tw_buckets: Option<u64>,
    pub time_wait: Option<u64>,
    pub netns_tw_overflows: Option<u64>,
    pub netns: Option<u32>,
}

/// The host's ephemeral ports, all destinations together.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RangeTaken {
    pub range: String,
    pub usable: u64,
    pub in_use: u64,
    pub states: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BindHoardingProof {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Connects this interval on sockets bound to a port beforehand.
    pub bound_connects: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeTaken>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AddressProof {
    pub bind_eaddrnotavail: u64,
    pub connect_eaddrnotavail: u64,
    /// `addr:port` the process asked for, from the failure events.
    pub addresses: BTreeSet<String>,
    /// Why `addresses` is empty, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses_missing: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenProof {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub listener: String,
    pub backlog: u32,
    pub queue_len: u32,
    pub drops: u64,
    pub syn_recv: u64,
    pub syncookies: u64,
    pub somaxconn: Option<u64>,
    pub netns: u32,
    /// The namespace's TcpExt growth this interval (ListenOverflows, TCPReqQFullDrop, …).
    pub netns_counters: NamedCounters,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConntrackProof {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub drop: u64,
    pub early_drop: u64,
    pub insert_failed: u64,
    pub netns: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpMemProof {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// net.ipv4.tcp_mem: low, pressure, high (pages).
    pub tcp_mem: Option<[u64; 3]>,
    /// Pages in use (the TCP line of /proc/net/sockstat).
    pub mem_pages: Option<u64>,
    pub orphans: Option<u64>,
    pub send_refused: u64,
    pub recv_refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_counters: Option<NamedCounters>,
}
