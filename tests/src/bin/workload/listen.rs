//! Listen queues: a listener that never accepts, and raw SYNs that fill a SYN queue.

use super::*;

/// A listener with a small backlog that never accepts (`listen-only`, a separate process),
/// and `--clients N` non-blocking connects to it. After `--wait-ms` the clients are closed
/// (no more SYN retransmits) and the namespace's listen counters reported.
pub(super) fn backlog(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--listen");
    let clients: u32 = req(args, "--clients");
    let wait_ms: u64 = req(args, "--wait-ms");
    let backlog: i32 = req(args, "--backlog");
    let mut server = spawn_ready(&["listen-only", "--listen", &addr.to_string(), "--backlog", &backlog.to_string()]);
    let socks: Vec<OwnedFd> = (0..clients).map(|_| nonblocking_connect(SocketAddr::V4(addr), None)).collect();
    std::thread::sleep(Duration::from_millis(wait_ms));
    // Sockets ESTABLISHED (both ends counted, halved): a client whose final ACK came after the
    // queue filled is ESTABLISHED on its side alone (the kernel dropped the ACK), so this can
    // exceed the queue when softirq processing lags (it runs in ksoftirqd under load).
    let established = socket_states().get("01").copied().unwrap_or(0) / 2;
    let accept_queue = listen_queue(addr.port());
    drop(socks);
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "{}",
        json!({"pid": pid(), "server_pid": server.id(), "established": established, "accept_queue": accept_queue,
               "listen_overflows": tcp_ext("ListenOverflows"), "listen_drops": tcp_ext("ListenDrops"),
               "reqq_full_drop": tcp_ext("TCPReqQFullDrop")})
    );
    hold(args);
    server.kill().ok();
    server.wait().ok();
}

/// A pre-forking server: this process (the master) creates the listener and forks a worker
/// (`accept-slow`, which inherits it) that accepts one connection every `--handle-ms`; then
/// `--clients N` non-blocking connects arrive at once. After `--wait-ms` the clients are
/// closed and the namespace's listen counters reported, with both pids.
pub(super) fn prefork(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--listen");
    let clients: u32 = req(args, "--clients");
    let wait_ms: u64 = req(args, "--wait-ms");
    let backlog: i32 = req(args, "--backlog");
    let handle_ms: String = req(args, "--handle-ms");
    let fd = tcp_socket(libc::AF_INET).expect("socket");
    sys_addr(&fd, addr, false).expect("bind");
    // SAFETY: listen on our own bound socket, then clear FD_CLOEXEC so the worker inherits it.
    unsafe {
        assert_eq!(libc::listen(fd.as_raw_fd(), backlog), 0, "listen");
        assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0), 0, "fcntl");
    }
    let mut worker = spawn_ready(&["accept-slow", "--fd", &fd.as_raw_fd().to_string(), "--handle-ms", &handle_ms]);
    let socks: Vec<OwnedFd> = (0..clients).map(|_| nonblocking_connect(SocketAddr::V4(addr), None)).collect();
    std::thread::sleep(Duration::from_millis(wait_ms));
    drop(socks);
    // The queue drains and retransmitted handshakes keep arriving for a while: report once
    // the namespace's ListenDrops has not moved for 4 s (retransmits back off past 1 s).
    let (mut last, mut still) = (tcp_ext("ListenDrops"), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while still < 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = tcp_ext("ListenDrops");
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    println!(
        "{}",
        json!({"pid": pid(), "worker_pid": worker.id(),
               "listen_overflows": tcp_ext("ListenOverflows"), "listen_drops": tcp_ext("ListenDrops"),
               "reqq_full_drop": tcp_ext("TCPReqQFullDrop"), "cookies": tcp_ext("TCPReqQFullDoCookies")})
    );
    hold(args);
    worker.kill().ok();
    worker.wait().ok();
}

/// The worker of `prefork`: accepts from the inherited listener `--fd`, one connection every
/// `--handle-ms` (closing each).
pub(super) fn accept_slow(args: &[String]) {
    let fd: i32 = req(args, "--fd");
    let handle_ms: u64 = req(args, "--handle-ms");
    println!("ready");
    std::io::stdout().flush().ok();
    loop {
        // SAFETY: accept(2) on the inherited listener; the result is closed at once.
        let c = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
        if c >= 0 {
            std::thread::sleep(Duration::from_millis(handle_ms));
            // SAFETY: closing the descriptor accept(2) just returned.
            unsafe { libc::close(c) };
        }
    }
}

/// A listener that never accepts: `--backlog` is the listen() backlog.
pub(super) fn listen_only(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--listen");
    let backlog: i32 = req(args, "--backlog");
    let fd = tcp_socket(libc::AF_INET).expect("socket");
    sys_addr(&fd, addr, false).expect("bind");
    // SAFETY: listen on our own bound socket.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), backlog) }, 0, "listen");
    println!("ready");
    std::io::stdout().flush().ok();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Internet checksum (RFC 1071) over `parts`, concatenated.
pub(super) fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A SYN flood that fills a listener's SYN queue: `--syns N` SYNs from `--from` (an address
/// on a dummy interface, so the SYN-ACKs go nowhere and no handshake completes) to the
/// listener at `--listen`, which a separate `listen-only` process owns with `--backlog`.
/// Sent through a raw socket with our own IP header (IP_HDRINCL allows any source).
pub(super) fn syn_flood(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--listen");
    let from: std::net::Ipv4Addr = req(args, "--from");
    let syns: u16 = req(args, "--syns");
    let backlog: i32 = req(args, "--backlog");
    let mut server = spawn_ready(&["listen-only", "--listen", &addr.to_string(), "--backlog", &backlog.to_string()]);
    // SAFETY: plain socket(2); owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let raw = unsafe { OwnedFd::from_raw_fd(raw) };
    let (src, dst) = (from.octets(), addr.ip().octets());
    for i in 0..syns {
        let sport = 20000 + i;
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&addr.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&(1000u32 + i as u32 * 7919).to_be_bytes()); // seq
        tcp[12] = 5 << 4; // data offset: 5 words
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes()); // window
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
        let c = checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64; // TTL
        ip[9] = libc::IPPROTO_TCP as u8;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let pkt = [&ip[..], &tcp[..]].concat();
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst) },
            sin_zero: [0; 8],
        };
        // SAFETY: sending our own buffer to a sockaddr_in that outlives the call.
        let n = unsafe {
            libc::sendto(
                raw.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(n, pkt.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    }
    std::thread::sleep(Duration::from_millis(300));
    let syn_recv = socket_states().get("03").copied().unwrap_or(0);
    println!(
        "{}",
        json!({"pid": pid(), "server_pid": server.id(), "syn_recv": syn_recv,
               "reqq_full_drop": tcp_ext("TCPReqQFullDrop"), "reqq_full_cookies": tcp_ext("TCPReqQFullDoCookies"),
               "listen_drops": tcp_ext("ListenDrops"), "listen_overflows": tcp_ext("ListenOverflows")})
    );
    hold(args);
    server.kill().ok();
    server.wait().ok();
}

/// Connections waiting in the accept queue of this namespace's listener on `port`: for a
/// listening socket /proc/net/tcp's rx_queue is its sk_ack_backlog (`get_tcp4_sock`).
fn listen_queue(port: u16) -> Option<u64> {
    let local = format!(":{port:04X}");
    for text in ["/proc/net/tcp", "/proc/net/tcp6"].iter().filter_map(|p| std::fs::read_to_string(p).ok()) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 4 && f[3] == "0A" && f[1].ends_with(&local) {
                return u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok();
            }
        }
    }
    None
}
