//! Reading kernel memory at offsets resolved from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use probe_common::config::{Config, OFFSET_MISSING};

/// Filled by user space before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::missing();

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;
/// RLIMIT_NOFILE (include/uapi/asm-generic/resource.h); `struct rlimit` is two u64.
const RLIMIT_NOFILE: u64 = 7;

#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if off == OFFSET_MISSING || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies from kernel memory and returns an error on a bad address; it never faults.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[inline(always)]
pub fn sk_family(sk: u64) -> u16 {
    read::<u16>(sk, off!(sk_family)).unwrap_or(0)
}

#[inline(always)]
pub fn sk_state(sk: u64) -> u8 {
    read::<u8>(sk, off!(sk_state)).unwrap_or(0)
}

/// True for an IPv4/IPv6 TCP socket. `sk_protocol` is checked where the kernel has it as a
/// plain u16 (5.6+); MPTCP subflows are TCP sockets too.
#[inline(always)]
pub fn sk_is_tcp(sk: u64) -> bool {
    let family = sk_family(sk);
    if family != AF_INET && family != AF_INET6 {
        return false;
    }
    match read::<u16>(sk, off!(sk_protocol)) {
        Some(p) => p == IPPROTO_TCP,
        None => off!(sk_protocol) == OFFSET_MISSING,
    }
}

#[inline(always)]
pub fn sk_err(sk: u64) -> u16 {
    read::<i32>(sk, off!(sk_err)).unwrap_or(0) as u16
}

/// The connection's addresses and ports (`skc_addrpair`, `skc_portpair`: each pair is one
/// union in struct sock_common, so one read each) folded into one number: tells two
/// connections apart that the kernel gave the same socket address one after the other.
#[inline(always)]
pub fn sk_identity(sk: u64) -> u64 {
    let addrs = read::<u64>(sk, off!(sk_daddr)).unwrap_or(0);
    let ports = read::<u32>(sk, off!(sk_dport)).unwrap_or(0);
    addrs.rotate_left(17) ^ ports as u64
}

/// Inode number of the socket's network namespace (`ls -l /proc/PID/ns/net` shows it).
#[inline(always)]
pub fn sk_netns(sk: u64) -> u32 {
    let net = read::<u64>(sk, off!(sk_net)).unwrap_or(0);
    read::<u32>(net, off!(net_ns_inum)).unwrap_or(0)
}

/// The socket's namespace and its TIME_WAIT table: (`struct net *`, TIME_WAIT sockets,
/// tcp_max_tw_buckets). inet_twsk_alloc() refuses a new timewait socket when
/// `tw_refcount - 1 >= sysctl_max_tw_buckets` (net/ipv4/inet_timewait_sock.c; the refcount
/// starts at 1). None when the offsets are unknown on this kernel.
#[inline(always)]
pub fn sk_tw_table(sk: u64) -> Option<(u64, u32, u32)> {
    let net = read::<u64>(sk, off!(sk_net))?;
    let count = read::<u32>(net, off!(net_tw_refcount))?;
    let max = read::<i32>(net, off!(net_max_tw_buckets))?;
    Some((net, count.saturating_sub(1), max.max(0) as u32))
}

/// `skc_num` (local port, host order) and `skc_dport` (network order → host order).
#[inline(always)]
pub fn sk_ports(sk: u64) -> (u16, u16) {
    let sport = read::<u16>(sk, off!(sk_num)).unwrap_or(0);
    let dport = read::<u16>(sk, off!(sk_dport)).unwrap_or(0);
    (sport, u16::from_be(dport))
}

/// Source address (and destination, when `dst` is given) of the socket, IPv4 in the first
/// four bytes.
#[inline(always)]
pub fn sk_addrs(sk: u64, family: u16, saddr: &mut [u8; 16], daddr: Option<&mut [u8; 16]>) {
    if family == AF_INET6 {
        if let Some(a) = read::<[u8; 16]>(sk, off!(sk_v6_rcv_saddr)) {
            *saddr = a;
        }
        if let Some(d) = daddr {
            if let Some(a) = read::<[u8; 16]>(sk, off!(sk_v6_daddr)) {
                *d = a;
            }
        }
    } else {
        if let Some(a) = read::<[u8; 4]>(sk, off!(sk_rcv_saddr)) {
            saddr[..4].copy_from_slice(&a);
        }
        if let Some(d) = daddr {
            if let Some(a) = read::<[u8; 4]>(sk, off!(sk_daddr)) {
                d[..4].copy_from_slice(&a);
            }
        }
    }
}

/// Fills an event's family, ports, namespace and both addresses from the socket.
#[inline(always)]
pub fn fill_endpoints(ev: &mut probe_common::event::Event, sk: u64) {
    let family = sk_family(sk);
    ev.family = family;
    let (sport, dport) = sk_ports(sk);
    ev.sport = sport;
    ev.dport = dport;
    ev.netns = sk_netns(sk);
    sk_addrs(sk, family, &mut ev.saddr, Some(&mut ev.daddr));
}

/// The `struct sock *` behind file descriptor `fd` of the current task, if it is a stream
/// socket: current->files->fdt->fd[fd]->private_data (a `struct socket *`)->sk.
#[inline(always)]
pub fn current_stream_sock(fd: u64) -> Option<u64> {
    // SAFETY: a BPF helper that takes no arguments.
    let task = unsafe { bpf_get_current_task() };
    let files = read::<u64>(task, off!(task_files))?;
    let fdt = read::<u64>(files, off!(files_fdt))?;
    let max = read::<u32>(fdt, off!(fdt_max_fds))?;
    if fd >= max as u64 {
        return None;
    }
    let fds = read::<u64>(fdt, off!(fdt_fd))?;
    let file = read::<u64>(fds, (fd * 8) as u32)?;
    let socket = read::<u64>(file, off!(file_private_data))?;
    socket_stream_sk(socket)
}

/// `socket->sk` when `socket->type` is SOCK_STREAM.
#[inline(always)]
pub fn socket_stream_sk(socket: u64) -> Option<u64> {
    let ty = read::<u16>(socket, off!(socket_type))?;
    if ty != SOCK_STREAM {
        return None;
    }
    let sk = read::<u64>(socket, off!(socket_sk))?;
    if sk == 0 {
        None
    } else {
        Some(sk)
    }
}

/// O_NONBLOCK (include/uapi/asm-generic/fcntl.h; the same on x86_64 and arm64).
const O_NONBLOCK: u32 = 0o4000;

/// Whether the file of the socket `sk` is non-blocking (sk->sk_socket->file->f_flags): its
/// connect() returns EINPROGRESS and the outcome comes later. False when unknown.
#[inline(always)]
pub fn sk_nonblocking(sk: u64) -> bool {
    let Some(socket) = read::<u64>(sk, off!(sk_socket)) else {
        return false;
    };
    let Some(file) = read::<u64>(socket, off!(socket_file)) else {
        return false;
    };
    read::<u32>(file, off!(file_f_flags)).is_some_and(|f| f & O_NONBLOCK != 0)
}

/// Soft RLIMIT_NOFILE of the current process (`current->signal->rlim[RLIMIT_NOFILE]`).
#[inline(always)]
pub fn current_nofile_limit() -> u64 {
    // SAFETY: a BPF helper that takes no arguments.
    let task = unsafe { bpf_get_current_task() };
    let Some(signal) = read::<u64>(task, off!(task_signal)) else {
        return 0;
    };
    let rlim = off!(signal_rlim);
    if rlim == OFFSET_MISSING {
        return 0;
    }
    read::<u64>(signal, rlim + (RLIMIT_NOFILE * 16) as u32).unwrap_or(0)
}

/// Destination requested by connect(): family, port (host order) and address, from a
/// `struct sockaddr` in user memory (syscall tracepoints) or kernel memory (fentry). One
/// read covers `struct sockaddr_in6` up to the address (family, port, flowinfo, addr).
#[inline(always)]
pub fn read_sockaddr(ptr: u64, user: bool, daddr: &mut [u8; 16]) -> (u16, u16) {
    if ptr == 0 {
        return (0, 0);
    }
    let mut buf = [0u8; 24];
    // SAFETY: the probe-read helpers copy into our stack buffer and return an error on a bad
    // address (user or kernel); they never fault.
    let ok = unsafe {
        if user {
            aya_ebpf::helpers::bpf_probe_read_user_buf(ptr as *const u8, &mut buf).is_ok()
                // A connect() with a short sockaddr_in (16 bytes) at the end of a page.
                || aya_ebpf::helpers::bpf_probe_read_user_buf(ptr as *const u8, &mut buf[..16]).is_ok()
        } else {
            aya_ebpf::helpers::bpf_probe_read_kernel_buf(ptr as *const u8, &mut buf).is_ok()
        }
    };
    if !ok {
        return (0, 0);
    }
    let family = u16::from_ne_bytes([buf[0], buf[1]]);
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    if family == AF_INET {
        daddr[..4].copy_from_slice(&buf[4..8]);
    } else if family == AF_INET6 {
        daddr.copy_from_slice(&buf[8..24]);
    }
    (family, port)
}

/// The return value of an fexit program's function: the trampoline stores it right after the
/// arguments, so it is argument number `nargs` (user space checks each function's parameter
/// count in BTF before attaching, see `probe_common::config::arity`).
///
/// Not `FExitContext::ret` (bpf_get_func_ret): its output slot starts as a constant 0 on the
/// stack, and Debian 6.1's verifier kept believing that 0 after the inlined helper wrote the
/// real value, so it pruned every branch taken on a non-zero return (seen as
/// fexit/inet_hash_connect firing 10 times and counting nothing).
#[inline(always)]
pub fn fexit_ret<T: aya_ebpf::Argument>(ctx: &aya_ebpf::programs::FExitContext, nargs: usize) -> T {
    ctx.arg(nargs)
}
