//! Program entry points, grouped by signal. Names are what user space loads; each group lists
//! its hooks in order of preference.

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, fexit, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, FExitContext, RawTracePointContext, TracePointContext},
};
use probe_common::{
    config::{arity, role},
    counters::kind,
    event,
};

use crate::{
    bind, connect,
    count::{bump, bump_dest, current, current_comm, dest_of_sock, new_event},
    fd,
    kernel::{current_nofile_limit, current_stream_sock, fill_endpoints, read, sk_is_tcp, sk_netns, socket_stream_sk},
    maps::{role_on, INFLIGHT},
    state,
};

/// The return value of an fexit program's function: the trampoline stores it right after the
/// arguments, so it is argument number `nargs` (user space checks each function's parameter
/// count in BTF before attaching, see `probe_common::config::arity`).
///
/// Not `FExitContext::ret` (bpf_get_func_ret): its output slot starts as a constant 0 on the
/// stack, and Debian 6.1's verifier kept believing that 0 after the inlined helper wrote the
/// real value, so it pruned every branch taken on a non-zero return (seen as
/// fexit/inet_hash_connect firing 10 times and counting nothing).
#[inline(always)]
fn fexit_ret<T: aya_ebpf::Argument>(ctx: &FExitContext, nargs: usize) -> T {
    ctx.arg(nargs)
}

// ---- inet_sock_set_state (port fallback, TIME_WAIT fallback, async connect outcomes) ----

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    state::on_set_state(sk, old, new);
    0
}

/// Classic tracepoint; record offsets (skaddr 8, oldstate 16, newstate 20) are checked
/// against the event's format file by user space before attaching.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn set_state_tp(ctx: TracePointContext) -> u32 {
    let (Ok(sk), Ok(old), Ok(new)) =
        (unsafe { ctx.read_at::<u64>(8) }, unsafe { ctx.read_at::<i32>(16) }, unsafe { ctx.read_at::<i32>(20) })
    else {
        return 0;
    };
    state::on_set_state(sk, old, new);
    0
}

/// tcp:tcp_send_reset (`sk` is argument 0 on every kernel that has it).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    state::on_send_reset(ctx.arg(0));
    0
}

/// Classic tracepoint: `skaddr` at offset 16, checked against the format file.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn send_reset_tp(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(16) } {
        state::on_send_reset(sk);
    }
    0
}

// ---- TCP memory (net.ipv4.tcp_mem) ----

/// sock:sock_exceed_buf_limit fires only where __sk_mem_raise_allocated() refuses memory
/// (include/trace/events/sock.h): TP_PROTO(struct sock *sk, struct proto *prot, long
/// allocated, int kind), kind 0 = SK_MEM_SEND, 1 = SK_MEM_RECV.
#[btf_tracepoint(function = "sock_exceed_buf_limit")]
pub fn mem_refused_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(1);
    let allocated: i64 = ctx.arg(2);
    let kind: i32 = ctx.arg(3);
    if sk_is_tcp(sk) {
        // prot->sysctl_mem points at tcp_mem {low, pressure, high} (pages, longs). Below the
        // pressure threshold tcp_mem did not refuse: the memory cgroup did
        // (mem_cgroup_charge_skmem in the same function).
        let pressure = read::<u64>(prot, off!(proto_sysctl_mem)).and_then(|p| read::<i64>(p, 8));
        let memcg = pressure.is_some_and(|p| allocated <= p);
        let aux = (kind == 1) as u16 | if memcg { 2 } else { 0 };
        state::charge_to_owner_aux(sk, kind::TCP_MEM_REFUSED, aux);
    }
    0
}

// ---- netfilter drops (conntrack table full) ----

/// skb:kfree_skb, TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
/// ...): only SKB_DROP_REASON_NETFILTER_DROP (nf_hook_slow's NF_DROP) is looked at, charged
/// to the owner of the socket the packet belongs to (a SYN dropped at OUTPUT because
/// __nf_conntrack_alloc found the table full carries its socket in skb->sk).
#[btf_tracepoint(function = "kfree_skb")]
pub fn nf_drop_btf(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    if reason != off!(drop_reason_netfilter) {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    match read::<u64>(skb, off!(skb_sk)) {
        Some(sk) if sk != 0 && sk_is_tcp(sk) => state::charge_to_owner_aux(sk, kind::NETFILTER_DROP, 0),
        _ => {}
    }
    0
}

// ---- bind() ----

#[inline(always)]
fn bind_fexit(ctx: &FExitContext) {
    // int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len), and inet6_bind
    let ret = fexit_ret::<i32>(ctx, arity::INET_BIND);
    if ret >= 0 {
        return;
    }
    let sock: u64 = ctx.arg(0);
    let Some(sk) = socket_stream_sk(sock) else {
        return;
    };
    if !sk_is_tcp(sk) {
        return;
    }
    let mut c = bind::call(ctx.arg(1), false);
    c.netns = sk_netns(sk);
    bind::result(ret as i64, &c);
}

#[fexit(function = "inet_bind")]
pub fn bind_fexit_v4(ctx: FExitContext) -> u32 {
    bind_fexit(&ctx);
    0
}

#[fexit(function = "inet6_bind")]
pub fn bind_fexit_v6(ctx: FExitContext) -> u32 {
    bind_fexit(&ctx);
    0
}

/// sys_enter_bind: fd at 16, umyaddr at 24 (checked against the format file).
#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn bind_enter_tp(ctx: TracePointContext) -> u32 {
    let (Ok(fd), Ok(addr)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe { ctx.read_at::<u64>(24) }) else {
        return 0;
    };
    if let Some(sk) = current_stream_sock(fd) {
        bind::enter(sk, bind::call(addr, true));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn bind_exit_tp(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(16) } {
        bind::exit(ret);
    }
    0
}

// ---- connect() ----

#[fentry(function = "inet_stream_connect")]
pub fn connect_fentry(ctx: FEntryContext) -> u32 {
    // int inet_stream_connect(struct socket *sock, struct sockaddr *uaddr, int addr_len, int flags)
    let sock: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    if let Some(sk) = socket_stream_sk(sock) {
        connect::enter(sk, uaddr, false);
    }
    0
}

#[fexit(function = "inet_stream_connect")]
pub fn connect_fexit(ctx: FExitContext) -> u32 {
    connect::exit(fexit_ret::<i32>(&ctx, arity::INET_STREAM_CONNECT) as i64);
    0
}

/// Syscall tracepoint records: args are 8-byte slots from offset 16 (fd, uservaddr, addrlen).
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn connect_enter_tp(ctx: TracePointContext) -> u32 {
    let (Ok(fd), Ok(addr)) = (unsafe { ctx.read_at::<u64>(16) }, unsafe { ctx.read_at::<u64>(24) }) else {
        return 0;
    };
    if !role_on(role::CONNECT) {
        return 0;
    }
    if let Some(sk) = current_stream_sock(fd) {
        connect::enter(sk, addr, true);
    }
    0
}

/// `ret` is the long at offset 16 of every syscalls:sys_exit_* record.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn connect_exit_tp(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(16) } {
        connect::exit(ret);
    }
    0
}

// ---- accept(): record socket owners for TIME_WAIT attribution ----

#[fexit(function = "inet_accept")]
pub fn accept_fexit(ctx: FExitContext) -> u32 {
    // inet_accept(struct socket *sock, struct socket *newsock, ...): newsock->sk is set on
    // success only.
    let newsock: u64 = ctx.arg(1);
    if let Some(sk) = socket_stream_sk(newsock) {
        connect::accepted(sk);
    }
    0
}

/// Attached to sys_exit_accept4 and sys_exit_accept: the returned fd is the new socket.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn accept_exit_tp(ctx: TracePointContext) -> u32 {
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else {
        return 0;
    };
    if ret >= 0 {
        if let Some(sk) = current_stream_sock(ret as u64) {
            connect::accepted(sk);
        }
    }
    0
}

// ---- port assignment (preferred: the return value of the port search itself) ----

#[inline(always)]
pub(crate) fn port_failed(sk: u64) {
    if !sk_is_tcp(sk) {
        return;
    }
    let (tgid, tid) = current();
    let comm = current_comm();
    // Tell connect::exit the event is out, so it does not send a second one.
    if let Some(p) = INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: a pointer into this thread's INFLIGHT entry, written only by this thread.
        unsafe { (*p).port_event_sent = 1 };
    }
    // Event before count (see `count::bump`).
    if let Some(mut e) = new_event(event::kind::PORT_ASSIGN_FAILURE, tgid, tid, 99, &comm) {
        // SAFETY: new_event wrote a whole Event into the reserved entry.
        let ev = unsafe { e.assume_init_mut() };
        fill_endpoints(ev, sk);
        e.submit(0);
    }
    bump(tgid, kind::PORT_ASSIGN_FAILURE, 0, &comm);
    bump_dest(&dest_of_sock(tgid, kind::PORT_ASSIGN_FAILURE, sk));
}

/// -EADDRNOTAVAIL (include/uapi/asm-generic/errno.h).
const NEG_EADDRNOTAVAIL: i32 = -99;

#[fexit(function = "inet_hash_connect")]
pub fn port_fexit_v4(ctx: FExitContext) -> u32 {
    // int inet_hash_connect(struct inet_timewait_death_row *death_row, struct sock *sk)
    if fexit_ret::<i32>(&ctx, arity::INET_HASH_CONNECT) == NEG_EADDRNOTAVAIL {
        port_failed(ctx.arg(1));
    }
    0
}

#[fexit(function = "inet6_hash_connect")]
pub fn port_fexit_v6(ctx: FExitContext) -> u32 {
    if fexit_ret::<i32>(&ctx, arity::INET6_HASH_CONNECT) == NEG_EADDRNOTAVAIL {
        port_failed(ctx.arg(1));
    }
    0
}

// ---- TIME_WAIT (preferred: the timewait allocation itself) ----

#[fexit(function = "inet_twsk_alloc")]
pub fn tw_fexit(ctx: FExitContext) -> u32 {
    // struct inet_timewait_sock *inet_twsk_alloc(const struct sock *sk, ...): NULL when
    // tcp_max_tw_buckets is reached.
    let sk: u64 = ctx.arg(0);
    if !sk_is_tcp(sk) {
        return 0;
    }
    if fexit_ret::<u64>(&ctx, arity::INET_TWSK_ALLOC) == 0 {
        let _ = state::charge_to_owner(sk, kind::TW_OVERFLOW);
    } else {
        let _ = state::charge_to_owner(sk, kind::TIME_WAIT);
    }
    0
}

// ---- fd exhaustion ----

#[fexit(function = "alloc_fd")]
pub fn fd_fexit_alloc_fd(ctx: FExitContext) -> u32 {
    // static int alloc_fd(unsigned start, unsigned end, unsigned flags): end is the
    // RLIMIT_NOFILE in force (fs/file.c); -EMFILE when no fd below it is free.
    if fexit_ret::<i32>(&ctx, arity::ALLOC_FD) == -(fd::EMFILE as i32) {
        let end: u32 = ctx.arg(1);
        fd::failed(fd::EMFILE, end as u64, -1);
    }
    0
}

#[fexit(function = "alloc_empty_file")]
pub fn fd_fexit_alloc_file(ctx: FExitContext) -> u32 {
    // struct file *alloc_empty_file(int flags, const struct cred *cred): ERR_PTR(-ENFILE)
    // above fs.file-max (fs/file_table.c).
    if fexit_ret::<i64>(&ctx, arity::ALLOC_EMPTY_FILE) == -fd::ENFILE {
        fd::failed(fd::ENFILE, 0, -1);
    }
    0
}

/// Fallback: every syscall that returns EMFILE/ENFILE, i.e. exactly what applications saw.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn fd_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if ret != -fd::EMFILE && ret != -fd::ENFILE {
        return 0;
    }
    if !role_on(role::FD_VIA_SYS_EXIT) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let nr = read::<u64>(regs, off!(regs_syscall_nr)).map(|n| n as i32).unwrap_or(-1);
    let limit = if ret == -fd::EMFILE { current_nofile_limit() } else { 0 };
    fd::failed(-ret, limit, nr);
    0
}
