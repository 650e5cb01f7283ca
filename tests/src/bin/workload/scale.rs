//! Scale: one process holding many connections while it churns, and many short-lived
//! processes each making one connection.

use super::*;
use std::sync::mpsc;

/// Raises RLIMIT_NOFILE of this process towards `n` (soft and hard; the hard limit only with
/// CAP_SYS_RESOURCE, which containers often lack): returns the soft limit now in force.
fn raise_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let wanted = libc::rlimit { rlim_cur: lim.rlim_cur.max(n), rlim_max: lim.rlim_max.max(n) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit RLIMIT_NOFILE to the hard limit");
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Runs `open` in a thread of this process with a descriptor table of its own
/// (unshare(CLONE_FILES)): RLIMIT_NOFILE bounds each table, not the process, so threads can
/// hold more connections than one table may. The thread sends what `open` reports, keeps the
/// sockets until `close` is sent (or dropped), then closes them in its own table (a
/// descriptor means nothing in another one).
fn holder<T: Send + 'static>(
    open: impl FnOnce() -> (Vec<TcpStream>, T) + Send + 'static,
) -> (mpsc::Receiver<T>, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (report_tx, report_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare(2) of this thread's descriptor table: it gets a private copy.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_FILES) }, 0, "unshare(CLONE_FILES)");
        let (sockets, report) = open();
        report_tx.send(report).ok();
        close_rx.recv().ok();
        drop(sockets);
    });
    (report_rx, close_tx, handle)
}

/// A Tcp counter of this network namespace (/proc/net/snmp).
fn tcp_snmp(name: &str) -> u64 {
    proc_net_counter("/proc/net/snmp", "Tcp:", name)
}

/// Tells each holder thread to close its sockets, and waits until it has.
fn close_holders<T>(holders: Vec<(mpsc::Receiver<T>, mpsc::Sender<()>, std::thread::JoinHandle<()>)>) {
    for (_, close, handle) in holders {
        drop(close);
        handle.join().expect("holder thread");
    }
}

/// Lowers or restores the soft RLIMIT_NOFILE.
fn set_nofile_soft(n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = n;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit RLIMIT_NOFILE {n}");
    }
}

/// A listener with the deepest accept queue the namespace allows (net.core.somaxconn), so a
/// burst of connects is never slowed by dropped SYNs.
pub(super) fn deep_listener(addr: SocketAddr) -> TcpListener {
    let l = TcpListener::bind(addr).expect("bind");
    // SAFETY: listen(2) again on a listener we own: only the backlog changes.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 65535) }, 0, "listen");
    l
}

/// `scale --hold N --churn M [--port P] [--dests D] [--emfile F] [--emfile-keep-ms MS]
/// [--ready-file PATH --open-ms MS] [--hold-ms MS]`,
/// all in this one process:
/// (a) N connections to 127.0.0.1:P opened and kept open, both ends: server threads accept
/// and keep them while client threads connect, each thread with at most a few thousand in a
/// descriptor table of its own (see `holder`); (b) with all of them open, M cycles of connect
/// to 127.0.0.x:P+1 (x cycling over D addresses, default 8), accept, close the client side
/// first, read the server side to EOF and close it: each cycle leaves one TIME_WAIT, the
/// client's; (c) with the N still open, F socket() calls fail with EMFILE (soft
/// RLIMIT_NOFILE lowered to the lowest free descriptor, restored MS (default 1000) later);
/// (d) every held connection closed, client sides first (N more TIME_WAITs). Run it in a
/// namespace of its own: the namespace's TcpExt TW counters (read before and after) are then
/// this process's TIME_WAITs.
pub(super) fn scale(args: &[String]) {
    let hold_n: usize = req(args, "--hold");
    let churn_n: u64 = req(args, "--churn");
    let port: u16 = arg(args, "--port").and_then(|v| v.parse().ok()).unwrap_or(9000);
    let dests: u8 = arg(args, "--dests").and_then(|v| v.parse().ok()).unwrap_or(8);
    let emfile_n: u64 = arg(args, "--emfile").and_then(|v| v.parse().ok()).unwrap_or(0);
    let emfile_keep_ms: u64 = arg(args, "--emfile-keep-ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
    // Both ends of every held connection, the listeners, and room for the rest; where the
    // limit cannot be raised that far, the connections are spread over descriptor tables.
    let nofile = raise_nofile(2 * hold_n as u64 + 1024);
    let share = (nofile.saturating_sub(64) as usize).clamp(1, 5000);
    let tw_before = tcp_ext("TW") + tcp_ext("TWKilled");
    let rsts_before = tcp_snmp("OutRsts");
    let start = std::time::Instant::now();

    // (a) Held connections: client and server ends in threads of their own, `share` each.
    let held_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = std::sync::Arc::new(deep_listener(held_addr));
    let shares: Vec<usize> = (0..hold_n.div_ceil(share)).map(|i| share.min(hold_n - i * share)).collect();
    let servers: Vec<_> = shares
        .iter()
        .map(|&n| {
            let listener = listener.clone();
            holder(move || {
                let accepted: Vec<TcpStream> = (0..n).map(|_| listener.accept().expect("accept").0).collect();
                (accepted, ())
            })
        })
        .collect();
    let clients: Vec<_> = shares
        .iter()
        .map(|&n| {
            holder(move || {
                let (mut held, mut attempts, mut errors) = (Vec::with_capacity(n), 0u64, Errors::new());
                while held.len() < n {
                    attempts += 1;
                    match TcpStream::connect(held_addr) {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            *errors.entry(errno_name(&e)).or_default() += 1;
                            assert!(attempts < 2 * n as u64, "held connections keep failing: {errors:?}");
                        }
                    }
                }
                (held, (attempts, errors))
            })
        })
        .collect();
    let (mut hold_attempts, mut hold_errors) = (0u64, Errors::new());
    for (report, _, _) in &clients {
        let (attempts, errors) = report.recv().expect("client thread");
        hold_attempts += attempts;
        for (k, v) in errors {
            *hold_errors.entry(k).or_default() += v;
        }
    }
    for (report, _, _) in &servers {
        report.recv().expect("server thread");
    }
    let hold_s = start.elapsed().as_secs_f64();

    // (b) Churn, with all of the above still open.
    // Bound only when there is churn: a held connection's ephemeral port may be P+1 already
    // (the tests widen the range to 1024-65535).
    let churn_listener = (churn_n > 0).then(|| deep_listener(SocketAddr::from(([0, 0, 0, 0], port + 1))));
    let (mut churn_ok, mut churn_errors) = (0u64, Errors::new());
    for i in 0..churn_n {
        let dest = SocketAddr::from(([127, 0, 0, 1 + (i % dests as u64) as u8], port + 1));
        match TcpStream::connect(dest) {
            Ok(c) => {
                churn_ok += 1;
                let (mut s, _) = churn_listener.as_ref().expect("churn listener").accept().expect("accept churn");
                drop(c); // the client closes first: its socket ends in TIME_WAIT
                let mut buf = [0u8; 64];
                while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
            }
            Err(e) => *churn_errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    drop(churn_listener);
    let churn_s = start.elapsed().as_secs_f64() - hold_s;

    // (c) EMFILE under load.
    let mut emfile_errors = Errors::new();
    if emfile_n > 0 {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit on our own process with a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        // The lowest free descriptor: below the limit, no slot is free.
        // SAFETY: F_DUPFD of stdout returns a fresh descriptor we close right away.
        let lowest = unsafe {
            let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 0);
            assert!(fd >= 0, "F_DUPFD");
            libc::close(fd);
            fd
        };
        set_nofile_soft(lowest as u64);
        for _ in 0..emfile_n {
            if let Err(e) = tcp_socket(libc::AF_INET) {
                *emfile_errors.entry(errno_name(&e)).or_default() += 1;
            }
        }
        // Keep the limit lowered a while: a verdict's evidence reads it after the failure.
        std::thread::sleep(Duration::from_millis(emfile_keep_ms));
        set_nofile_soft(lim.rlim_cur);
    }

    // With --ready-file, say that everything is open (the file is created), then keep it open
    // --open-ms (default 0) for whoever reads this namespace meanwhile.
    if let Some(f) = arg(args, "--ready-file") {
        std::fs::write(f, pid().to_string()).expect("writing --ready-file");
    }
    let open_ms: u64 = arg(args, "--open-ms").and_then(|v| v.parse().ok()).unwrap_or(0);
    // With --close-when PATH: close as soon as PATH exists (at most --open-ms).
    let until = std::time::Instant::now() + Duration::from_millis(open_ms);
    match arg(args, "--close-when") {
        Some(path) => {
            while !std::path::Path::new(path).exists() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None => std::thread::sleep(Duration::from_millis(open_ms)),
    }

    // (d) Close everything, client sides first.
    close_holders(clients);
    close_holders(servers);
    drop(listener);
    // Until the peers' FINs arrive the client sockets sit in FIN_WAIT: wait until no socket
    // is closing any more, so the TIME_WAIT counters are final.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let closing = || {
        let st = socket_states();
        ["01", "04", "05", "08", "09", "0B"].iter().map(|k| st.get(*k).copied().unwrap_or(0)).sum::<u64>()
    };
    while closing() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tw_after = tcp_ext("TW") + tcp_ext("TWKilled");
    println!(
        "{}",
        json!({"pid": pid(), "held": hold_n, "threads": 2 * shares.len(), "nofile": nofile, "hold_attempts": hold_attempts, "hold_errors": hold_errors,
               "churn": churn_n, "churn_ok": churn_ok, "churn_errors": churn_errors,
               "emfile_errors": emfile_errors,
               "tw_growth": tw_after - tw_before, "tw_killed": tcp_ext("TWKilled"),
               "tw_overflows": tcp_ext("TCPTimeWaitOverflow"), "resets_sent": tcp_snmp("OutRsts") - rsts_before, "listen_overflows": tcp_ext("ListenOverflows"),
               "states": socket_states(),
               "hold_s": hold_s, "churn_s": churn_s, "total_s": start.elapsed().as_secs_f64()})
    );
    hold(args);
}

/// `procs --count K [--parallel P] [--port PORT]`: K short-lived processes (this binary again,
/// `procs-child`), at most P (default 50) at a time, each making one TCP connection to a
/// listener of this process and exiting. Reports their pids.
pub(super) fn procs(args: &[String]) {
    let count: usize = req(args, "--count");
    let parallel: usize = arg(args, "--parallel").and_then(|v| v.parse().ok()).unwrap_or(50);
    let port: u16 = arg(args, "--port").and_then(|v| v.parse().ok()).unwrap_or(9000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = deep_listener(addr);
    // Accepts and closes at once: which side ends in TIME_WAIT does not matter here.
    std::thread::spawn(move || {
        while let Ok((s, _)) = listener.accept() {
            drop(s);
        }
    });
    let exe = std::env::current_exe().expect("own path");
    let target = addr.to_string();
    let start = std::time::Instant::now();
    let mut running = std::collections::VecDeque::new();
    let mut pids = Vec::with_capacity(count);
    let mut failed = 0u64;
    for _ in 0..count {
        if running.len() >= parallel {
            let mut c: std::process::Child = running.pop_front().expect("a running child");
            failed += u64::from(!c.wait().expect("wait child").success());
        }
        let c = Command::new(&exe).args(["procs-child", "--addr", &target]).spawn().expect("spawn child");
        pids.push(c.id());
        running.push_back(c);
    }
    for mut c in running {
        failed += u64::from(!c.wait().expect("wait child").success());
    }
    println!(
        "{}",
        json!({"pid": pid(), "count": count, "failed": failed, "pids": pids,
               "first_pid": pids.first(), "last_pid": pids.last(),
               "seconds": start.elapsed().as_secs_f64()})
    );
}

/// One connect to `--addr`, then exit: status 0 if it succeeded.
pub(super) fn procs_child(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    if TcpStream::connect(addr).is_err() {
        std::process::exit(1);
    }
}
