//! conntrace-workload: makes the kernel fail on purpose, and reports, as one JSON line, what
//! it saw (its pid, successes, errno counts): the ground truth conntrace's counts are
//! compared with. Meant to run inside a private network namespace (see tests/).

use std::{
    collections::BTreeMap,
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::json;

type Errors = BTreeMap<String, u64>;

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ENFILE) => "ENFILE".into(),
        Some(n) => format!("E{n}"),
        None => e.to_string(),
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn req<T: std::str::FromStr>(args: &[String], name: &str) -> T {
    arg(args, name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .parse()
        .unwrap_or_else(|_| panic!("bad value for {name}"))
}

fn wait_stdin(args: &[String]) {
    if args.iter().any(|a| a == "--wait-stdin") {
        println!("ready");
        std::io::stdout().flush().ok();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok();
    }
}

fn pid() -> u32 {
    std::process::id()
}

/// Blocking connects that keep their sockets: with a narrowed ip_local_port_range the range
/// runs out and connect() fails with EADDRNOTAVAIL.
fn ports(args: &[String]) {
    let listen: SocketAddr = req(args, "--listen");
    let target: SocketAddr = req(args, "--connect");
    let count: u32 = req(args, "--count");
    let _listener = TcpListener::bind(listen).expect("bind listener");
    wait_stdin(args);
    let mut held = Vec::new();
    let mut errors = Errors::new();
    for _ in 0..count {
        match TcpStream::connect(target) {
            Ok(s) => held.push(s),
            Err(e) => *errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    println!("{}", json!({"pid": pid(), "ok": held.len(), "errors": errors}));
    hold(args);
}

/// `--hold-ms N`: stay alive (sockets open) so conntrace can gather evidence in this namespace.
fn hold(args: &[String]) {
    std::io::stdout().flush().ok();
    if let Some(ms) = arg(args, "--hold-ms").and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Runs this workload again as a separate process with `args` and waits for its "ready"
/// line (a server that must not be the process whose counts are checked).
fn spawn_ready(args: &[&str]) -> std::process::Child {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe).args(args).stdout(Stdio::piped()).spawn().expect("spawn helper process");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().expect("helper stdout")).read_line(&mut ready).ok();
    child
}

/// Server side of the TIME_WAIT scenario: for each connection, read to EOF (the client
/// closed first), then close: the client's socket goes to TIME_WAIT, this one does not.
/// Runs until killed.
fn tw_server(args: &[String]) {
    let listen: SocketAddr = req(args, "--listen");
    let l = TcpListener::bind(listen).expect("bind");
    println!("ready");
    std::io::stdout().flush().ok();
    loop {
        let Ok((mut s, _)) = l.accept() else { continue };
        let mut buf = [0u8; 64];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    }
}

/// TCP sockets in this network namespace by state (hex state code of /proc/net/tcp{,6}).
fn socket_states() -> BTreeMap<String, u64> {
    let mut states = BTreeMap::new();
    for text in ["/proc/net/tcp", "/proc/net/tcp6"].iter().filter_map(|p| std::fs::read_to_string(p).ok()) {
        for line in text.lines().skip(1) {
            if let Some(st) = line.split_whitespace().nth(3) {
                *states.entry(st.to_string()).or_default() += 1;
            }
        }
    }
    states
}

/// Count of sockets in TIME_WAIT (state 06) in this network namespace.
fn time_wait_sockets() -> u64 {
    socket_states().get("06").copied().unwrap_or(0)
}

/// Client side, in this process; the server is a separate process that closes last.
/// `--count N` connections, at most `--rate R` per second if given; reports the errors it
/// saw and the TIME_WAIT sockets of the namespace once the server has closed its side.
fn tw(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let count: u32 = req(args, "--count");
    let rate: Option<f64> = arg(args, "--rate").and_then(|v| v.parse().ok());
    // TIME_WAIT ignores resets (RFC 1337): under emulation a late retransmission can be
    // answered with a reset that would otherwise end a TIME_WAIT early (tcp_timewait_state_process),
    // and the namespace's TIME_WAIT count must stay the ground truth.
    std::fs::write("/proc/sys/net/ipv4/tcp_rfc1337", "1").expect("setting tcp_rfc1337 in the test namespace");
    let mut server = spawn_ready(&["tw-server", "--listen", &addr.to_string()]);
    let start = std::time::Instant::now();
    let mut ok = 0;
    let mut errors = Errors::new();
    for i in 0..count {
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        match TcpStream::connect(addr) {
            Ok(s) => {
                ok += 1;
                drop(s); // active close: this side ends in TIME_WAIT
            }
            Err(e) => *errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    // The server closes its side after reading EOF; until its FIN arrives the client sockets
    // sit in FIN_WAIT2 (slow under load or emulation). Wait until no socket is closing any
    // more: each has then entered TIME_WAIT, or closed without it (tcp_max_tw_buckets).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let closing = || {
        let st = socket_states();
        ["04", "05", "08", "09", "0B"].iter().map(|k| st.get(*k).copied().unwrap_or(0)).sum::<u64>()
    };
    while closing() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tw = time_wait_sockets();
    let overflows = tcp_ext("TCPTimeWaitOverflow");
    let server_pid = server.id();
    server.kill().ok();
    server.wait().ok();
    println!(
        "{}",
        json!({"pid": pid(), "server_pid": server_pid, "ok": ok, "errors": errors, "time_wait_sockets": tw,
               "tw_overflows": overflows, "states": socket_states()})
    );
    hold(args);
}

/// A TcpExt counter of this network namespace (/proc/net/netstat: a names line, then values).
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (Some(names), Some(values)) = (rows.first(), rows.get(1)) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A TCP socket of `family`, or the error.
fn tcp_socket(family: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// bind(2) or connect(2) of an IPv4 socket to `addr`.
fn sys_addr(fd: &OwnedFd, addr: std::net::SocketAddrV4, connect: bool) -> std::io::Result<()> {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    };
    let (p, len) = (&sin as *const libc::sockaddr_in as *const libc::sockaddr, size_of::<libc::sockaddr_in>() as u32);
    // SAFETY: sin outlives the call; len is its size.
    let r = unsafe {
        if connect {
            libc::connect(fd.as_raw_fd(), p, len)
        } else {
            libc::bind(fd.as_raw_fd(), p, len)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bind-before-connect: `--count N` sockets, each bound to `--bind` (port 0) and then
/// connected to the next of `--dests` in turn; all are kept open. A listener on 0.0.0.0 at
/// the destinations' port accepts them. Reports bind and connect errors separately.
fn bind_connect(args: &[String]) {
    let bind: std::net::SocketAddrV4 = req(args, "--bind");
    let count: u32 = req(args, "--count");
    let dests: Vec<std::net::SocketAddrV4> =
        req::<String>(args, "--dests").split(',').map(|d| d.parse().expect("destination ip:port")).collect();
    let listener = TcpListener::bind(("0.0.0.0", dests[0].port())).expect("bind listener");
    let accepted = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            held.push(s);
        }
    });
    wait_stdin(args);
    let (mut held, mut bind_errors, mut connect_errors) = (Vec::new(), Errors::new(), Errors::new());
    for i in 0..count as usize {
        let fd = tcp_socket(libc::AF_INET).expect("socket");
        if let Err(e) = sys_addr(&fd, bind, false) {
            *bind_errors.entry(errno_name(&e)).or_default() += 1;
            continue;
        }
        match sys_addr(&fd, dests[i % dests.len()], true) {
            Ok(()) => held.push(fd),
            Err(e) => *connect_errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    println!(
        "{}",
        json!({"pid": pid(), "ok": held.len(), "bind_errors": bind_errors, "connect_errors": connect_errors})
    );
    hold(args);
    drop(accepted);
}

/// `--count N` binds to `--addr` (an address no interface has): EADDRNOTAVAIL each time.
fn bind_addr(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--addr");
    let count: u32 = req(args, "--count");
    let mut errors = Errors::new();
    let mut ok = 0;
    for _ in 0..count {
        let fd = tcp_socket(libc::AF_INET).expect("socket");
        match sys_addr(&fd, addr, false) {
            Ok(()) => ok += 1,
            Err(e) => *errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    println!("{}", json!({"pid": pid(), "ok": ok, "bind_errors": errors}));
    hold(args);
}

/// A listener with a small backlog that never accepts (`listen-only`, a separate process),
/// and `--clients N` non-blocking connects to it. After `--wait-ms` the clients are closed
/// (no more SYN retransmits) and the namespace's listen counters reported.
fn backlog(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--listen");
    let clients: u32 = req(args, "--clients");
    let wait_ms: u64 = req(args, "--wait-ms");
    let backlog: i32 = req(args, "--backlog");
    let mut server = spawn_ready(&["listen-only", "--listen", &addr.to_string(), "--backlog", &backlog.to_string()]);
    let socks: Vec<OwnedFd> = (0..clients).map(|_| nonblocking_connect(SocketAddr::V4(addr), None)).collect();
    std::thread::sleep(Duration::from_millis(wait_ms));
    let established = socket_states().get("01").copied().unwrap_or(0) / 2;
    drop(socks);
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "{}",
        json!({"pid": pid(), "server_pid": server.id(), "established": established,
               "listen_overflows": tcp_ext("ListenOverflows"), "listen_drops": tcp_ext("ListenDrops"),
               "reqq_full_drop": tcp_ext("TCPReqQFullDrop")})
    );
    hold(args);
    server.kill().ok();
    server.wait().ok();
}

/// A listener that never accepts: `--backlog` is the listen() backlog.
fn listen_only(args: &[String]) {
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
fn checksum(parts: &[&[u8]]) -> u16 {
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
fn syn_flood(args: &[String]) {
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

/// TCP memory exhaustion: `--conns N` loopback connections to a listener in this process
/// that never reads; each client writes up to `--bytes` without blocking. With
/// net.ipv4.tcp_mem lowered, the kernel refuses buffer memory long before the socket
/// buffers are full. Reports what was written and the namespace's TcpExt memory counters.
fn mem_hog(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let conns: u32 = req(args, "--conns");
    let bytes: usize = req(args, "--bytes");
    let l = TcpListener::bind(addr).expect("bind");
    let mut pairs = Vec::new();
    for _ in 0..conns {
        let c = TcpStream::connect(addr).expect("connect");
        let (s, _) = l.accept().expect("accept");
        c.set_nonblocking(true).expect("nonblocking");
        pairs.push((c, s));
    }
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    for (c, _) in pairs.iter_mut() {
        let mut mine = 0usize;
        while mine < bytes && std::time::Instant::now() < deadline {
            match c.write(&chunk[..chunk.len().min(bytes - mine)]) {
                Ok(n) => mine += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        written += mine;
    }
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{}",
        json!({"pid": pid(), "written": written, "asked": bytes * conns as usize,
               "memory_pressures": tcp_ext("TCPMemoryPressures"), "rcvq_drop": tcp_ext("TCPRcvQDrop")})
    );
    hold(args);
}

/// Summed per-CPU column `name` of /proc/net/stat/nf_conntrack (hex values).
fn ct_stat(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/stat/nf_conntrack").unwrap_or_default();
    let mut lines = text.lines();
    let Some(col) = lines.next().and_then(|h| h.split_whitespace().position(|n| n == name)) else { return 0 };
    lines.filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(col)?, 16).ok()).sum()
}

/// Fills the conntrack table: `--hold N` connections kept open (tracked and assured, so
/// early_drop cannot evict them), then `--extra M` non-blocking connects whose SYNs conntrack
/// cannot track once nf_conntrack_max is reached; after `--wait-ms` they are closed. Needs
/// a netfilter rule that uses conntrack in this namespace.
fn ct_fill(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let hold_n: u32 = req(args, "--hold");
    let extra: u32 = req(args, "--extra");
    let wait_ms: u64 = req(args, "--wait-ms");
    let l = TcpListener::bind(addr).expect("bind");
    let accepted = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept() {
            held.push(s);
        }
    });
    let drops_before = ct_stat("drop");
    let mut held = Vec::new();
    let mut errors = Errors::new();
    for _ in 0..hold_n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(e) => *errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    let pending: Vec<OwnedFd> = (0..extra).map(|_| nonblocking_connect(addr, None)).collect();
    std::thread::sleep(Duration::from_millis(wait_ms));
    let still_pending = socket_states().get("02").copied().unwrap_or(0);
    drop(pending);
    let count = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count").unwrap_or_default();
    println!(
        "{}",
        json!({"pid": pid(), "held": held.len(), "errors": errors, "syn_sent": still_pending,
               "ct_drops": ct_stat("drop") - drops_before, "ct_count": count.trim().parse::<u64>().ok()})
    );
    hold(args);
    drop(accepted);
}

/// Closes that are aborts, not TIME_WAIT: the client sends a byte and shuts down its side
/// (FIN_WAIT2 once acked), then the server closes without reading, which sends a reset
/// (tcp_close with unread data): the client socket goes FIN_WAIT2 → CLOSE by tcp_reset.
/// With `--linger`, the reset comes from this side instead: after shutdown (FIN_WAIT2) the
/// client closes with SO_LINGER 0 (tcp_disconnect: CLOSE first, then the reset).
fn resets(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let count: u32 = req(args, "--count");
    let linger = args.iter().any(|a| a == "--linger");
    let l = TcpListener::bind(addr).expect("bind");
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..count {
        let mut c = TcpStream::connect(addr).expect("connect");
        let (s, _) = l.accept().expect("accept");
        c.write_all(b"x").expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        std::thread::sleep(Duration::from_millis(20));
        if linger {
            let lg = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt on our own socket with a linger struct that outlives the call.
            let r = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &lg as *const libc::linger as *const libc::c_void,
                    size_of::<libc::linger>() as u32,
                )
            };
            assert_eq!(r, 0, "SO_LINGER");
            drop(c);
            servers.push(s);
        } else {
            drop(s);
            clients.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{}",
        json!({"pid": pid(), "time_wait_sockets": time_wait_sockets(), "states": socket_states(), "resets_sent": tcp_ext("TCPAbortOnClose") + tcp_ext("TCPAbortOnData")})
    );
    hold(args);
}

/// Lowers RLIMIT_NOFILE, opens sockets until EMFILE, then keeps trying until `--failures`
/// attempts have failed.
fn emfile(args: &[String]) {
    let nofile: u64 = req(args, "--nofile");
    let failures: u64 = req(args, "--failures");
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = nofile;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit");
    }
    let mut fds = Vec::new();
    let mut errors = Errors::new();
    let mut failed = 0;
    while failed < failures {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            *errors.entry(errno_name(&std::io::Error::last_os_error())).or_default() += 1;
            failed += 1;
        } else {
            // SAFETY: fd is a fresh descriptor we own.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    println!("{}", json!({"pid": pid(), "limit": nofile, "opened": fds.len(), "errors": errors}));
    hold(args);
}

/// Opens /dev/null until `--failures` opens failed with ENFILE (fs.file-max reached; run it
/// without CAP_SYS_ADMIN, which is exempt from the limit).
fn enfile(args: &[String]) {
    let failures: u64 = req(args, "--failures");
    let mut files = Vec::new();
    let mut errors = Errors::new();
    let mut failed = 0;
    while failed < failures {
        match std::fs::File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) => {
                let name = errno_name(&e);
                *errors.entry(name.clone()).or_default() += 1;
                if name != "ENFILE" {
                    break; // EMFILE first: the per-process limit is lower than file-max allows
                }
                failed += 1;
            }
        }
    }
    println!("{}", json!({"pid": pid(), "opened": files.len(), "errors": errors}));
}

fn nonblocking_connect(addr: SocketAddr, syncnt: Option<i32>) -> OwnedFd {
    // SAFETY: plain socket syscalls on a descriptor we own; sockaddr_in built in place.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        if let Some(n) = syncnt {
            libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, (&n as *const i32).cast(), 4);
        }
        let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let r = libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sin) as u32);
        let e = std::io::Error::last_os_error().raw_os_error();
        assert!(r < 0 && e == Some(libc::EINPROGRESS), "expected EINPROGRESS, got {r} {e:?}");
        OwnedFd::from_raw_fd(fd)
    }
}

/// Waits until the connect finishes and returns SO_ERROR (0 = established).
fn finish(fd: &OwnedFd) -> i32 {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll/getsockopt on a descriptor we own.
    unsafe {
        libc::poll(&mut p, 1, 20_000);
        let mut err = 0i32;
        let mut len = 4u32;
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut i32).cast(), &mut len);
        err
    }
}

/// Non-blocking connects whose outcome arrives after connect() returned EINPROGRESS: on
/// loopback the handshake normally completes inside connect(), so the SYN must be dropped
/// first. A listener with backlog 0 and one queued connection drops SYNs (accept queue full):
/// - to `--base`: never accepted, TCP_SYNCNT 1 → ETIMEDOUT after ~3 s;
/// - to `--base`+1: the queue is drained after 200 ms, the retransmitted SYN (1 s) succeeds.
fn async_connects(args: &[String]) {
    let base: u16 = req(args, "--base");
    let a: SocketAddr = format!("127.0.0.1:{base}").parse().expect("addr");
    let b: SocketAddr = format!("127.0.0.1:{}", base + 1).parse().expect("addr");
    let la = TcpListener::bind(a).expect("bind a");
    let lb = TcpListener::bind(b).expect("bind b");
    // SAFETY: listen(2) with backlog 0 on listeners we own.
    unsafe {
        libc::listen(la.as_raw_fd(), 0);
        libc::listen(lb.as_raw_fd(), 0);
    }
    let fill_a = TcpStream::connect(a).expect("fill a");
    let fill_b = TcpStream::connect(b).expect("fill b");
    let timed_out = nonblocking_connect(a, Some(1));
    let succeeds = nonblocking_connect(b, None);
    std::thread::sleep(Duration::from_millis(200));
    let accepted = lb.accept().expect("drain b");
    let mut errors = Errors::new();
    let mut async_ok = 0;
    for fd in [&timed_out, &succeeds] {
        match finish(fd) {
            0 => async_ok += 1,
            e => *errors.entry(errno_name(&std::io::Error::from_raw_os_error(e))).or_default() += 1,
        }
    }
    drop((fill_a, fill_b, accepted));
    println!("{}", json!({"pid": pid(), "sync_ok": 2, "async_ok": async_ok, "errors": errors}));
}

/// Connection churn for overhead measurements: connect, accept, close (client first, so every
/// connection leaves a TIME_WAIT), as fast as one thread can, for `--seconds`.
fn churn(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let seconds: f64 = req(args, "--seconds");
    let l = TcpListener::bind(addr).expect("bind");
    let start = std::time::Instant::now();
    let mut n = 0u64;
    let mut errors = Errors::new();
    while start.elapsed().as_secs_f64() < seconds {
        match TcpStream::connect(addr) {
            Ok(c) => {
                let (s, _) = l.accept().expect("accept");
                drop(c);
                drop(s);
                n += 1;
            }
            Err(e) => *errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}", json!({"pid": pid(), "connections": n, "per_sec": n as f64 / secs, "errors": errors}));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ports") => ports(&args),
        Some("tw") => tw(&args),
        Some("tw-server") => tw_server(&args),
        Some("emfile") => emfile(&args),
        Some("async") => async_connects(&args),
        Some("churn") => churn(&args),
        Some("enfile") => enfile(&args),
        Some("bind-connect") => bind_connect(&args),
        Some("bind-addr") => bind_addr(&args),
        Some("resets") => resets(&args),
        Some("backlog") => backlog(&args),
        Some("listen-only") => listen_only(&args),
        Some("syn-flood") => syn_flood(&args),
        Some("mem-hog") => mem_hog(&args),
        Some("ct-fill") => ct_fill(&args),
        _ => {
            eprintln!("usage: conntrace-workload ports|tw|tw-server|emfile|enfile|async|churn|bind-connect|bind-addr|resets|backlog|listen-only|syn-flood|mem-hog|ct-fill [options]");
            std::process::exit(2);
        }
    }
}
