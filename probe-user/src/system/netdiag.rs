//! TCP sockets of a network namespace through sock_diag netlink (NETLINK_SOCK_DIAG,
//! SOCK_DIAG_BY_FAMILY): the kernel's own socket table, fast even at 100k sockets where
//! parsing /proc/net/tcp is not. Entering another process's namespace is done on a scoped
//! thread (setns(2) affects only the calling thread).

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context as _, Result};

pub use crate::domain::net::{state_name, TcpSocket, ESTABLISHED, LISTEN, NEW_SYN_RECV, SYN_RECV, TIME_WAIT};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_msg (include/uapi/linux/inet_diag.h): family, state, timer, retrans,
/// sockid (48 bytes), expires, rqueue, wqueue, uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;

/// `idiag_ext` bit asking for INET_DIAG_SKMEMINFO (attribute 7: bit 7 - 1).
const EXT_SKMEMINFO: u8 = 1 << (INET_DIAG_SKMEMINFO - 1);
const INET_DIAG_SKMEMINFO: u16 = 7;
/// Index of SK_MEMINFO_DROPS in the skmeminfo array (include/uapi/linux/sock_diag.h).
const SK_MEMINFO_DROPS: usize = 8;
/// Every state.
const ALL_STATES: u32 = u32::MAX;
/// LISTEN alone: the kernel answers from its listening hash.
pub const LISTEN_STATES: u32 = 1 << LISTEN;
/// SYN_RECV / NEW_SYN_RECV, the request sockets of SYN queues: the kernel walks its whole
/// established hash (every TCP socket of the host, TIME_WAITs included) to find them.
pub const REQUEST_STATES: u32 = (1 << SYN_RECV) | (1 << NEW_SYN_RECV);

/// The older TCP dump request (struct inet_diag_req, include/uapi/linux/inet_diag.h): the
/// kernel answers it with one walk of its socket tables for both families
/// (inet_diag_dump_compat sets AF_UNSPEC), where SOCK_DIAG_BY_FAMILY needs one walk per
/// family, each over every TCP socket of the host whichever its family.
const TCPDIAG_GETSOCK: u16 = 18;

/// INET_DIAG_REQ_BYTECODE: the attribute carrying a filter program (`diag_filter`).
const INET_DIAG_REQ_BYTECODE: u16 = 1;

fn request(family: u8, seq: u32, states: u32, ext: u8, bc: &[u8]) -> Vec<u8> {
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48 bytes).
    let mut req = vec![family, libc::IPPROTO_TCP as u8, ext, 0];
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    with_filter(&mut req, bc);
    message(SOCK_DIAG_BY_FAMILY, seq, &req)
}

/// Appends the filter program as a netlink attribute (requests and programs are multiples
/// of 4 bytes: no padding).
fn with_filter(req: &mut Vec<u8>, bc: &[u8]) {
    if bc.is_empty() {
        return;
    }
    req.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
    req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    req.extend_from_slice(bc);
}

fn request_both_families(seq: u32, states: u32, ext: u8, bc: &[u8]) -> Vec<u8> {
    // struct inet_diag_req: family (ignored by the dump), src_len, dst_len, ext, sockid
    // (48 bytes), states, dbs.
    let mut req = vec![libc::AF_INET as u8, 0, 0, ext];
    req.extend_from_slice(&[0u8; 48]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    with_filter(&mut req, bc);
    message(TCPDIAG_GETSOCK, seq, &req)
}

fn message(ty: u16, seq: u32, req: &[u8]) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + req.len()) as u32;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(req);
    msg
}

fn addr(family: u8, raw: &[u8]) -> IpAddr {
    if family as i32 == libc::AF_INET6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&raw[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Parses one inet_diag_msg payload.
pub fn parse_msg(p: &[u8]) -> Option<TcpSocket> {
    if p.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = p[0];
    let u32_at = |o: usize| u32::from_ne_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]);
    // sockid at 4: sport(be16) dport(be16) src[16] dst[16] if cookie[8]
    Some(TcpSocket {
        state: p[1],
        sport: u16::from_be_bytes([p[4], p[5]]),
        dport: u16::from_be_bytes([p[6], p[7]]),
        src: addr(family, &p[8..24]),
        dst: addr(family, &p[24..40]),
        rqueue: u32_at(56),
        wqueue: u32_at(60),
        inode: u32_at(68),
        drops: skmeminfo_drops(&p[INET_DIAG_MSG_LEN..]),
    })
}

/// SK_MEMINFO_DROPS out of the attributes that follow an inet_diag_msg.
fn skmeminfo_drops(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == INET_DIAG_SKMEMINFO {
            let at = 4 + SK_MEMINFO_DROPS * 4;
            // Within this attribute only: a short one has no drop counter.
            let v = attrs[..len].get(at..at + 4)?;
            return Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// Parses a buffer of netlink messages; Ok(true) once NLMSG_DONE is seen.
pub fn parse_messages(buf: &[u8], out: &mut Vec<TcpSocket>) -> Result<bool> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into()?) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into()?);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            bail!("malformed netlink message");
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                // struct nlmsgerr: the negative errno right after the header.
                let raw = buf.get(off + NLMSG_HDRLEN..off + len).and_then(|p| p.get(..4));
                let Some(raw) = raw else { bail!("malformed netlink error message ({len} bytes)") };
                let errno = i32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
                bail!("sock_diag: {}", io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(errno)));
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => out.extend(parse_msg(&buf[off + NLMSG_HDRLEN..off + len])),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// Every TCP socket (IPv4 and IPv6) of the calling thread's network namespace.
pub fn tcp_sockets() -> Result<Vec<TcpSocket>> {
    dump(ALL_STATES, 0, &[])
}

/// The sockets of the calling thread's namespace that hold an ephemeral port: local port in
/// `range`, not listening, not accepted by a listener on one of `listening` (the caller
/// filters what exceeds `diag_filter::MAX_EXCLUDED`). The kernel drops the others before it
/// describes them.
pub fn ephemeral_sockets(range: (u16, u16), listening: &[u16]) -> Result<Vec<TcpSocket>> {
    let bc = super::diag_filter::ephemeral_ports(range, listening);
    dump(ALL_STATES & !LISTEN_STATES, 0, &bc)
}

/// Listeners (with their drop counters) of the calling thread's network namespace: a dump
/// of the kernel's listening hash, cheap however many connections there are.
pub fn listeners() -> Result<Vec<TcpSocket>> {
    dump(LISTEN_STATES, EXT_SKMEMINFO, &[])
}

/// Request sockets (SYN queues) of the calling thread's network namespace; costs a walk of
/// every TCP socket of the host, so read only when a listener dropped.
pub fn request_sockets() -> Result<Vec<TcpSocket>> {
    dump(REQUEST_STATES, 0, &[])
}

fn dump(states: u32, ext: u8, bc: &[u8]) -> Result<Vec<TcpSocket>> {
    let sock = diag_socket()?;
    let mut buf = vec![0u8; 64 * 1024];
    // One walk for both families; a kernel that refuses the older request gets one per family.
    let mut out = Vec::new();
    if receive(&sock, &request_both_families(1, states, ext, bc), &mut buf, &mut out).is_ok() {
        return Ok(out);
    }
    out.clear();
    receive(&sock, &request(libc::AF_INET as u8, 2, states, ext, bc), &mut buf, &mut out)?;
    // A kernel without IPv6 answers the AF_INET6 dump with an error: skip it.
    let mut v6 = Vec::new();
    if receive(&sock, &request(libc::AF_INET6 as u8, 3, states, ext, bc), &mut buf, &mut v6).is_ok() {
        out.append(&mut v6);
    }
    Ok(out)
}

fn diag_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a sock_diag netlink socket");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one dump request and parses the replies into `out` until NLMSG_DONE.
fn receive(sock: &OwnedFd, req: &[u8], buf: &mut [u8], out: &mut Vec<TcpSocket>) -> Result<()> {
    // SAFETY: sending our own buffer on our own socket (the kernel is the default peer).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("sock_diag request");
    }
    loop {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("sock_diag reply");
        }
        if parse_messages(&buf[..n as usize], out)? {
            return Ok(());
        }
    }
}

/// Inode of a network namespace as `ls -l /proc/PID/ns/net` shows it.
pub fn netns_inode(pid: u32) -> Option<u32> {
    ns_link_inode(&format!("/proc/{pid}/ns/net"))
}

/// The inode in a namespace link such as /proc/thread-self/ns/net (`net:[4026531840]`).
pub fn ns_link_inode(path: &str) -> Option<u32> {
    let link = std::fs::read_link(path).ok()?;
    link.to_string_lossy().strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// A live process in the namespace with inode `inum` (to enter it once the failing process
/// has exited).
pub fn process_in_netns(inum: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| netns_inode(pid) == Some(inum))
}

/// Runs `f` inside the network namespace of `pid` (None: the caller's own), on a scoped
/// thread so that the rest of conntrace stays where it is.
pub fn in_netns_of<T: Send>(pid: Option<u32>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let Some(pid) = pid else {
        return Ok(f());
    };
    let ns = File::open(format!("/proc/{pid}/ns/net")).with_context(|| format!("opening /proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a namespace fd we hold; it changes only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("entering the network namespace (setns)");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(state: u8, sport: u16, dport: u16, dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![libc::AF_INET as u8, state, 0, 0];
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[127, 0, 0, 1]);
        p.extend_from_slice(&src);
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&dst);
        p.extend_from_slice(&d);
        p.extend_from_slice(&[0u8; 12]); // if + cookie
        for v in [0u32, 3, 128, 0, 77] {
            p.extend_from_slice(&v.to_ne_bytes());
        }
        if state == LISTEN {
            // INET_DIAG_SKMEMINFO: 4-byte header, then 9 u32 (drops last).
            p.extend_from_slice(&(4u16 + 36).to_ne_bytes());
            p.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
            for v in [0u32, 0, 0, 0, 0, 0, 0, 0, 28] {
                p.extend_from_slice(&v.to_ne_bytes());
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + p.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&p);
        m
    }

    #[test]
    fn parses_a_dump() {
        let mut buf = msg(TIME_WAIT, 40001, 9000, [127, 0, 0, 2]);
        buf.extend(msg(LISTEN, 9000, 0, [0, 0, 0, 0]));
        let mut out = Vec::new();
        assert!(!parse_messages(&buf, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].state, TIME_WAIT);
        assert_eq!(out[0].sport, 40001);
        assert_eq!(out[0].dport, 9000);
        assert_eq!(out[0].dst, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!((out[1].rqueue, out[1].wqueue, out[1].inode), (3, 128, 77));
        assert_eq!((out[0].drops, out[1].drops), (None, Some(28)));
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0u8; 14]);
        assert!(parse_messages(&done, &mut out).unwrap());
        assert_eq!(state_name(TIME_WAIT), "TIME_WAIT");
    }

    #[test]
    fn reads_this_namespace() {
        // Works unprivileged: sock_diag dumps are allowed for everyone.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let socks = tcp_sockets().unwrap();
        assert!(socks.iter().any(|s| s.state == LISTEN && s.sport == port), "listener {port} not found");
        let ls = listeners().unwrap();
        let me = ls.iter().find(|s| s.sport == port).expect("listener in the filtered dump");
        assert_eq!(me.drops, Some(0));
        assert!(ls.iter().all(|s| s.state != ESTABLISHED));
    }
}
