//! The maps shared by all programs. Sizes bound the memory conntrace takes; when one fills up
//! the overflow is counted in `STATS` and reported, never silent.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use probe_common::{
    config::{role, stat, OWNERS_MAX},
    counters::{CountKey, DestKey, TwTable},
    sock::{BindCall, Inflight, ListenKey, SockOwner},
    COMM_LEN,
};

/// Per process, kind and errno. Entries of exited processes are removed by user space after
/// their last interval was reported.
#[map]
pub static COUNTS: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Per process and destination: port-assignment failures and TIME_WAIT of connected sockets.
#[map]
pub static DEST_COUNTS: PerCpuHashMap<DestKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// Process name at the time its first counter was created (for processes that exit).
#[map]
pub static COMMS: LruHashMap<u32, [u8; COMM_LEN]> = LruHashMap::with_max_entries(16384, 0);

/// Owner of each socket connected or accepted while conntrace runs, keyed by `struct sock *`,
/// removed when the socket reaches CLOSE. LRU so a flood of sockets degrades attribution
/// (counted as unattributed) instead of failing. One common LRU list: per-CPU lists
/// (BPF_F_NO_COMMON_LRU) would split the capacity by CPU and evict early on busy CPUs.
#[map]
pub static OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(OWNERS_MAX, 0);

/// Who listens on a port: (`struct net *`, local port) → the process that called listen()
/// (recorded at CLOSE→LISTEN, removed at the listener's CLOSE). Without accept hooks, each
/// accepted socket is charged to it until someone closes the socket.
#[map]
pub static LISTENERS: LruHashMap<ListenKey, SockOwner> = LruHashMap::with_max_entries(4096, 0);

/// connect() calls in progress, keyed by thread id: bounded by the threads inside connect() at
/// once, so a plain (cheaper) hash; a full map is counted in STATS.
#[map]
pub static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

/// bind() calls in progress (syscall tracepoint and kprobe modes), keyed by thread id.
#[map]
pub static BINDS: HashMap<u32, BindCall> = HashMap::with_max_entries(4096, 0);

/// Sockets that sent a reset (tcp:tcp_send_reset), removed at their CLOSE: such a close is
/// an abort, not a TIME_WAIT. LRU: a reset socket that never reaches CLOSE just ages out.
#[map]
pub static RST_SENT: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// The inet_sock_set_state event `set_state_btf` is handling on this CPU (0: none), so that
/// `set_state_btf_rescue` knows when it runs nested inside it (see `set_state`).
#[map]
pub static SET_STATE_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sockets whose CLOSE the set_state fallback just counted as TIME_WAIT or overflow:
/// [tgid << 32 | kind, the connection's identity (`kernel::sk_identity`)]. A reset sent by
/// such a socket after its CLOSE retracts the count. A socket later allocated at the same
/// address is another connection (another identity), so entries are never removed at other
/// closes (a delete on every close cost more than the rest of the close).
#[map]
pub static TW_CHARGED: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// TIME_WAIT count of each namespace (`struct net *`) at the last close that could enter
/// TIME_WAIT: tells the close that took the table's last slot from the first one refused.
#[map]
pub static TW_SEEN: LruHashMap<u64, u32> = LruHashMap::with_max_entries(1024, 0);

/// Per process charged: its namespace's TIME_WAIT table at its latest refused TIME_WAIT, so a
/// verdict's evidence says what the kernel compared with tcp_max_tw_buckets, even once the
/// process or its namespace is gone.
#[map]
pub static TW_TABLES: LruHashMap<u32, TwTable> = LruHashMap::with_max_entries(4096, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[map]
pub static ROLES: Array<u32> = Array::with_max_entries(role::COUNT, 0);

pub use probe_common::event::Limiter;

#[map]
pub static LIMITER: LruHashMap<u64, Limiter> = LruHashMap::with_max_entries(8192, 0);

/// Records `owner` for `sk`; a failed insert is counted in STATS. New entries are counted
/// (see `stat::OWNER_CREATED`); an existing one (a socket connecting again) is overwritten.
#[inline(always)]
pub fn record_owner(sk: u64, owner: &SockOwner) {
    if OWNERS.insert(sk, owner, BPF_NOEXIST as u64).is_ok() {
        stat_inc(stat::OWNER_CREATED);
    } else if OWNERS.insert(sk, owner, 0).is_err() {
        stat_inc(stat::OWNER_MAP_FULL);
    }
}

/// Forgets the owner of `sk` (its socket is done), counting the removal.
#[inline(always)]
pub fn forget_owner(sk: u64) {
    if OWNERS.remove(sk).is_ok() {
        stat_inc(stat::OWNER_REMOVED);
    }
}

#[inline(always)]
pub fn role_on(idx: u32) -> bool {
    ROLES.get(idx).is_some_and(|v| *v == 1)
}

#[inline(always)]
pub fn stat_inc(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        crate::shared::count::add_one(p);
    }
}
