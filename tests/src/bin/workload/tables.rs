//! Kernel tables: TCP memory (tcp_mem) and the conntrack table.

use super::*;

/// `conns` loopback connections to a listener at `addr` (client, accepted end): the clients
/// non-blocking, nobody reading the accepted ends, so what the clients write waits in their
/// receive queues, charged to TCP memory. The listener is returned too: it stays open for the
/// run (the process listening is who an accepted socket's charges go to).
fn unread_pairs(addr: SocketAddr, conns: u32) -> (TcpListener, Vec<(TcpStream, TcpStream)>) {
    let l = TcpListener::bind(addr).expect("bind");
    let pairs = (0..conns)
        .map(|_| {
            let c = TcpStream::connect(addr).expect("connect");
            let (s, _) = l.accept().expect("accept");
            c.set_nonblocking(true).expect("nonblocking");
            (c, s)
        })
        .collect();
    (l, pairs)
}

/// TCP memory exhaustion: `--conns N` loopback connections to a listener in this process
/// that never reads; each client writes up to `--bytes` without blocking. With
/// net.ipv4.tcp_mem lowered, the kernel refuses buffer memory long before the socket
/// buffers are full. Reports what was written and the namespace's TcpExt memory counters.
/// `--ready-file`/`--go-file`: see below.
pub(super) fn mem_hog(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let conns: u32 = req(args, "--conns");
    let bytes: usize = req(args, "--bytes");
    let (_listener, mut pairs) = unread_pairs(addr, conns);
    // With --ready-file R --go-file G: say the connections are open (R), and write only once
    // G exists (at most 60 s): connections older than whoever watches.
    if let Some(r) = arg(args, "--ready-file") {
        std::fs::write(r, pid().to_string()).expect("writing --ready-file");
        let go = req::<String>(args, "--go-file");
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !std::path::Path::new(&go).exists() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// TCP memory growing at a steady rate: `--conns N` loopback connections to a listener in this
/// process that never reads; every 100 ms the clients write `--bytes-per-s`/10 more between
/// them, for `--seconds`. The data waits in the receivers' queues, charged to TCP memory.
pub(super) fn mem_ramp(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let conns: u32 = req(args, "--conns");
    let rate: usize = req(args, "--bytes-per-s");
    let seconds: u64 = req(args, "--seconds");
    let (_listener, mut pairs) = unread_pairs(addr, conns);
    let step = rate / 10 / conns as usize;
    let chunk = vec![0u8; step];
    let start = std::time::Instant::now();
    let mut written = 0usize;
    let mut next = start;
    // TCP memory in pages (machine-wide) at each second, as /proc/net/sockstat says.
    let mem = || {
        let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        text.lines().find(|l| l.starts_with("TCP:")).and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
    };
    let mut pages = Vec::new();
    let mut tick = 0u32;
    while start.elapsed() < Duration::from_secs(seconds) {
        if tick.is_multiple_of(10) {
            pages.push(mem());
        }
        tick += 1;
        for (c, _) in pairs.iter_mut() {
            let mut mine = 0;
            while mine < step {
                match c.write(&chunk[mine..]) {
                    Ok(n) => mine += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            written += mine;
        }
        next += Duration::from_millis(100);
        if let Some(d) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
    }
    println!(
        "{}",
        json!({"pid": pid(), "written": written, "seconds": start.elapsed().as_secs_f64(), "mem_pages": pages,
               "memory_pressures": tcp_ext("TCPMemoryPressures")})
    );
    hold(args);
}

/// Summed per-CPU column `name` of /proc/net/stat/nf_conntrack (hex values).
pub(super) fn ct_stat(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/stat/nf_conntrack").unwrap_or_default();
    let mut lines = text.lines();
    let Some(col) = lines.next().and_then(|h| h.split_whitespace().position(|n| n == name)) else { return 0 };
    lines.filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(col)?, 16).ok()).sum()
}

/// Fills the conntrack table: `--hold N` connections kept open (tracked and assured, so
/// early_drop cannot evict them), then `--extra M` non-blocking connects whose SYNs conntrack
/// cannot track once nf_conntrack_max is reached; after `--wait-ms` they are closed. Needs
/// a netfilter rule that uses conntrack in this namespace.
pub(super) fn ct_fill(args: &[String]) {
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
