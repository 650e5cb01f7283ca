//! Load-time configuration: struct offsets resolved from the running kernel's BTF, and the
//! runtime role switches user space flips once it knows which hooks attached.
//!
//! Offsets are never compiled in: rustc emits no CO-RE relocations, so user space reads
//! /sys/kernel/btf/vmlinux, fills [`Config`] and writes it into the read-only global
//! `CONFIG` of the eBPF object before loading it.

/// Byte offsets inside kernel structs; `u32::MAX` means "not found in this kernel's BTF".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `struct sock_common`: `skc_daddr`, `skc_rcv_saddr`, `skc_dport`, `skc_num`.
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    /// `skc_net.net`: the `struct net *` of the socket's namespace.
    pub sk_net: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `struct sock::sk_err`.
    pub sk_err: u32,
    /// `struct sock::sk_protocol` (a u16 since Linux 5.6; `u32::MAX` when it is a bitfield).
    pub sk_protocol: u32,
    /// `struct net::ns.inum`: the namespace inode number `ls -l /proc/PID/ns/net` shows.
    pub net_ns_inum: u32,
    /// `struct net::ipv4.tcp_death_row.{tw_refcount,sysctl_max_tw_buckets}`: the namespace's
    /// TIME_WAIT count (+1) and its tcp_max_tw_buckets (include/net/inet_timewait_sock.h).
    pub net_tw_refcount: u32,
    pub net_max_tw_buckets: u32,
    /// fd → socket walk: `task_struct::files`, `files_struct::fdt`, `fdtable::{fd,max_fds}`,
    /// `file::private_data`, `socket::{type,sk}`.
    pub task_files: u32,
    pub files_fdt: u32,
    /// `sock::sk_socket`, `socket::file`, `file::f_flags`: whether a connecting socket is
    /// non-blocking (O_NONBLOCK), when no connect hook says so.
    pub sk_socket: u32,
    pub socket_file: u32,
    pub file_f_flags: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    /// `task_struct::signal` and `signal_struct::rlim` (RLIMIT_NOFILE is read from there).
    pub task_signal: u32,
    pub signal_rlim: u32,
    /// `struct pt_regs::orig_ax` (x86_64): the syscall number at raw `sys_exit`.
    pub regs_syscall_nr: u32,
    /// `struct sk_buff::sk`, and the value of SKB_DROP_REASON_NETFILTER_DROP in this kernel's
    /// `enum skb_drop_reason` (the numbering changes as reasons are added).
    pub skb_sk: u32,
    pub drop_reason_netfilter: u32,
    /// `struct proto::sysctl_mem`: pointer to the protocol's {low, pressure, high} (tcp_mem).
    pub proto_sysctl_mem: u32,
    /// Events per second and per (process, kind) sent through the ring buffer; the rest are
    /// only counted (the counters stay exact).
    pub events_per_sec: u32,
}

pub const OFFSET_MISSING: u32 = u32::MAX;

impl Config {
    pub const fn missing() -> Self {
        let m = OFFSET_MISSING;
        Config {
            sk_daddr: m,
            sk_rcv_saddr: m,
            sk_dport: m,
            sk_num: m,
            sk_family: m,
            sk_state: m,
            sk_net: m,
            sk_v6_daddr: m,
            sk_v6_rcv_saddr: m,
            sk_err: m,
            sk_protocol: m,
            net_ns_inum: m,
            net_tw_refcount: m,
            net_max_tw_buckets: m,
            task_files: m,
            files_fdt: m,
            sk_socket: m,
            socket_file: m,
            file_f_flags: m,
            fdt_fd: m,
            fdt_max_fds: m,
            file_private_data: m,
            socket_type: m,
            socket_sk: m,
            task_signal: m,
            signal_rlim: m,
            regs_syscall_nr: m,
            skb_sk: m,
            drop_reason_netfilter: m,
            proto_sysctl_mem: m,
            events_per_sec: 20,
        }
    }
}

/// Indexes into the `ROLES` array map. A value of 1 switches that piece of logic on.
///
/// Several signals share one hook (`inet_sock_set_state` serves port failures, TIME_WAIT and
/// asynchronous connect outcomes), and which of them that hook must handle depends on what
/// else attached: user space decides after attaching and writes these switches.
pub mod role {
    /// Port-assignment failures are detected from SYN_SENT→CLOSE during connect() (no fexit).
    pub const PORT_VIA_SET_STATE: u32 = 0;
    /// TIME_WAIT creation (and tw-bucket overflow) is inferred from FIN_WAIT2/CLOSING→CLOSE
    /// without an error or a reset.
    pub const TW_VIA_SET_STATE: u32 = 1;
    /// connect() outcomes are tracked (synchronous and asynchronous).
    pub const CONNECT: u32 = 2;
    /// fd-allocation failures come from the raw `sys_exit` tracepoint.
    pub const FD_VIA_SYS_EXIT: u32 = 3;
    /// connect() attempts and outcomes come from inet_sock_set_state alone (no connect hook):
    /// CLOSE→SYN_SENT in the connecting task, then the change out of SYN_SENT.
    pub const CONNECT_VIA_SET_STATE: u32 = 4;
    /// Owners without accept hooks: the task that closes a socket first (→FIN_WAIT1) becomes
    /// its owner (it keeps the TIME_WAIT); until then an accepted socket is charged to the
    /// process that called listen() on its port (recorded at LISTEN, looked up when needed).
    pub const OWNERS_VIA_SET_STATE: u32 = 5;
    pub const COUNT: u32 = 8;
}

/// Parameter counts of the functions hooked with fexit: the return value sits right after the
/// parameters. User space refuses the fexit hook (and falls back) when the running kernel's
/// BTF gives another count.
pub mod arity {
    /// `int inet_stream_connect(struct socket *, struct sockaddr *, int addr_len, int flags)`
    pub const INET_STREAM_CONNECT: usize = 4;
    /// `int inet_hash_connect(struct inet_timewait_death_row *, struct sock *)`
    pub const INET_HASH_CONNECT: usize = 2;
    /// `int inet6_hash_connect(struct inet_timewait_death_row *, struct sock *)`
    pub const INET6_HASH_CONNECT: usize = 2;
    /// `struct inet_timewait_sock *inet_twsk_alloc(const struct sock *,
    /// struct inet_timewait_death_row *, int state)`
    pub const INET_TWSK_ALLOC: usize = 3;
    /// `int inet_bind(struct socket *, struct sockaddr *, int addr_len)` and `inet6_bind`
    pub const INET_BIND: usize = 3;
    /// `static int alloc_fd(unsigned start, unsigned end, unsigned flags)` (fs/file.c)
    pub const ALLOC_FD: usize = 3;
    /// `struct file *alloc_empty_file(int flags, const struct cred *cred)` (fs/file_table.c)
    pub const ALLOC_EMPTY_FILE: usize = 2;
}

/// Entries of the `OWNERS` map (socket → process that owns it).
pub const OWNERS_MAX: u32 = 131_072;

/// Indexes into the per-CPU `STATS` array: things user space must report, never hide.
pub mod stat {
    /// A failure event did not fit in the ring buffer (user space too slow).
    pub const EVENTS_DROPPED: u32 = 0;
    /// A counter could not be created because the counter map was full.
    pub const COUNTER_MAP_FULL: u32 = 1;
    /// A socket owner could not be recorded.
    pub const OWNER_MAP_FULL: u32 = 2;
    /// An in-flight connect could not be recorded (per-thread map full).
    pub const INFLIGHT_MAP_FULL: u32 = 3;
    /// A connect() whose return was never seen: the thread entered connect() again while its
    /// previous call was still recorded as in flight. The kernel skips the fexit programs of
    /// calls in flight when the function's BPF trampoline is rebuilt (any tool attaching to or
    /// detaching from it: bpf_tramp_image_put).
    pub const CONNECT_RETURN_LOST: u32 = 4;
    /// inet_sock_set_state events the kernel did not run `set_state_btf` for (it was already
    /// running on that CPU: a softirq interrupted it) that `set_state_btf_rescue` handled.
    pub const SET_STATE_RESCUED: u32 = 5;
    /// Socket owners recorded (new OWNERS entries) and removed when their socket closed: the
    /// difference less the entries still in the map is what the LRU evicted to make room.
    pub const OWNER_CREATED: u32 = 6;
    pub const OWNER_REMOVED: u32 = 7;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
