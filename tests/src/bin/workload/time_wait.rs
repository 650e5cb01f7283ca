//! TIME_WAIT: churn that fills the tw table (tcp_max_tw_buckets), and closes ended by resets.

use super::*;

/// Server side of the TIME_WAIT scenario: for each connection, read to EOF (the client
/// closed first), then close: the client's socket goes to TIME_WAIT, this one does not. With
/// `--close-first`, close each accepted connection at once instead: the TIME_WAITs are then
/// this process's. Runs until killed.
pub(super) fn tw_server(args: &[String]) {
    let listen: SocketAddr = req(args, "--listen");
    let close_first = args.iter().any(|a| a == "--close-first");
    let l = TcpListener::bind(listen).expect("bind");
    println!("ready");
    std::io::stdout().flush().ok();
    loop {
        let Ok((mut s, _)) = l.accept() else { continue };
        if close_first {
            continue; // dropped here: this side closes first
        }
        let mut buf = [0u8; 64];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    }
}

/// TCP sockets in this network namespace by state (hex state code of /proc/net/tcp{,6}).
pub(super) fn socket_states() -> BTreeMap<String, u64> {
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
pub(super) fn time_wait_sockets() -> u64 {
    socket_states().get("06").copied().unwrap_or(0)
}

/// Client side, in this process; the server is a separate process that closes last.
/// `--count N` connections, at most `--rate R` per second if given; reports the errors it
/// saw and the TIME_WAIT sockets of the namespace once the server has closed its side.
pub(super) fn tw(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let count: u32 = req(args, "--count");
    let rate: Option<f64> = arg(args, "--rate").and_then(|v| v.parse().ok());
    // TIME_WAIT ignores resets (RFC 1337): under emulation a late retransmission can be
    // answered with a reset that would otherwise end a TIME_WAIT early (tcp_timewait_state_process),
    // and the namespace's TIME_WAIT count must stay the ground truth.
    std::fs::write("/proc/sys/net/ipv4/tcp_rfc1337", "1").expect("setting tcp_rfc1337 in the test namespace");
    // `--server-closes-first`: the server closes each connection and this side reads to EOF.
    let server_first = args.iter().any(|a| a == "--server-closes-first");
    let listen = addr.to_string();
    let mut server_args = vec!["tw-server", "--listen", &listen];
    if server_first {
        server_args.push("--close-first");
    }
    let mut server = spawn_ready(&server_args);
    let mut ok = 0;
    let mut errors = Errors::new();
    // Paced at most `rate` a second, never catching up: after a stall (an emulated machine
    // pausing) the next connections do not come in a burst above the rate.
    let mut next = std::time::Instant::now();
    for _ in 0..count {
        if let Some(r) = rate {
            let now = std::time::Instant::now();
            match next.checked_duration_since(now) {
                Some(wait) => std::thread::sleep(wait),
                None => next = now,
            }
            next += Duration::from_secs_f64(1.0 / r);
        }
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                ok += 1;
                if server_first {
                    let mut buf = [0u8; 64];
                    while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                }
                drop(s); // active close unless the server closed first: that side ends in TIME_WAIT
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
pub(super) fn tcp_ext(name: &str) -> u64 {
    proc_net_counter("/proc/net/netstat", "TcpExt:", name)
}

/// Counter `name` of the `prefix` rows of `file` (/proc/net/netstat or /proc/net/snmp: a names
/// line, then a values line), 0 when absent.
pub(super) fn proc_net_counter(file: &str, prefix: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    let (Some(names), Some(values)) = (rows.first(), rows.get(1)) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Closes that are aborts, not TIME_WAIT: the client sends a byte and shuts down its side
/// (FIN_WAIT2 once acked), then the server closes without reading, which sends a reset
/// (tcp_close with unread data): the client socket goes FIN_WAIT2 → CLOSE by tcp_reset.
/// With `--linger`, the reset comes from this side instead: after shutdown (FIN_WAIT2) the
/// client closes with SO_LINGER 0 (tcp_disconnect: CLOSE first, then the reset).
pub(super) fn resets(args: &[String]) {
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
