//! Ephemeral ports: exhausting a narrowed range, bind-before-connect, unconfigured source
//! addresses, asynchronous connects, healthy churn.

use super::*;

/// Blocking connects that keep their sockets: with a narrowed ip_local_port_range the range
/// runs out and connect() fails with EADDRNOTAVAIL. With `--rate R`: R connects a second
/// (a pool growing without bound), never catching up after a stall, and the report says when
/// the first failure came (`first_failure_ms`, Unix time).
pub(super) fn ports(args: &[String]) {
    let listen: SocketAddr = req(args, "--listen");
    let target: SocketAddr = req(args, "--connect");
    let count: u32 = req(args, "--count");
    let mut pace = Pacer::new(args);
    // Never accepted: a deep backlog keeps the handshakes completing for all of them.
    let _listener = super::scale::deep_listener(listen);
    wait_stdin(args);
    let mut held = Vec::new();
    let mut errors = Errors::new();
    let mut first_failure_ms = None;
    for _ in 0..count {
        pace.wait();
        match TcpStream::connect(target) {
            Ok(s) => held.push(s),
            Err(e) => {
                *errors.entry(errno_name(&e)).or_default() += 1;
                first_failure_ms.get_or_insert_with(unix_ms);
            }
        }
    }
    println!("{}", json!({"pid": pid(), "ok": held.len(), "errors": errors, "first_failure_ms": first_failure_ms}));
    hold(args);
}

/// `--rate R` (optional): at most R actions a second, never catching up after a stall.
struct Pacer {
    rate: Option<f64>,
    next: std::time::Instant,
}

impl Pacer {
    fn new(args: &[String]) -> Pacer {
        let rate = arg(args, "--rate").map(|v| v.parse().expect("bad value for --rate"));
        Pacer { rate, next: std::time::Instant::now() }
    }

    fn wait(&mut self) {
        let Some(r) = self.rate else { return };
        let now = std::time::Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next = self.next.max(now) + Duration::from_secs_f64(1.0 / r);
    }
}

/// Unix time in milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `--hold-ms N`: stay alive (sockets open) so conntrace can gather evidence in this namespace.
pub(super) fn hold(args: &[String]) {
    std::io::stdout().flush().ok();
    if let Some(ms) = arg(args, "--hold-ms").and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Bind-before-connect: `--count N` sockets, each bound to `--bind` (port 0) and then
/// connected to the next of `--dests` in turn (`--rate R`: R a second); all are kept open. A listener on 0.0.0.0 at
/// the destinations' port accepts them. Reports bind and connect errors separately.
pub(super) fn bind_connect(args: &[String]) {
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
    let mut pace = Pacer::new(args);
    let mut first_failure_ms = None;
    for i in 0..count as usize {
        pace.wait();
        let fd = tcp_socket(libc::AF_INET).expect("socket");
        if let Err(e) = sys_addr(&fd, bind, false) {
            *bind_errors.entry(errno_name(&e)).or_default() += 1;
            first_failure_ms.get_or_insert_with(unix_ms);
            continue;
        }
        match sys_addr(&fd, dests[i % dests.len()], true) {
            Ok(()) => held.push(fd),
            Err(e) => *connect_errors.entry(errno_name(&e)).or_default() += 1,
        }
    }
    println!(
        "{}",
        json!({"pid": pid(), "ok": held.len(), "bind_errors": bind_errors, "connect_errors": connect_errors,
               "first_failure_ms": first_failure_ms})
    );
    hold(args);
    drop(accepted);
}

/// `--count N` binds to `--addr` (an address no interface has): EADDRNOTAVAIL each time.
pub(super) fn bind_addr(args: &[String]) {
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

/// Non-blocking connects whose outcome arrives after connect() returned EINPROGRESS: on
/// loopback the handshake normally completes inside connect(), so the SYN must be dropped
/// first. A listener with backlog 0 and one queued connection drops SYNs (accept queue full):
/// - to `--base`: never accepted, TCP_SYNCNT 1 → ETIMEDOUT after ~3 s;
/// - to `--base`+1: the queue is drained after 200 ms, the retransmitted SYN (1 s) succeeds.
pub(super) fn async_connects(args: &[String]) {
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
pub(super) fn churn(args: &[String]) {
    let addr: SocketAddr = req(args, "--addr");
    let seconds: f64 = req(args, "--seconds");
    // `--rate N`: at most N connections a second (a steady load for a soak).
    let rate: Option<f64> = arg(args, "--rate").map(|v| v.parse().expect("bad value for --rate"));
    let l = TcpListener::bind(addr).expect("bind");
    let start = std::time::Instant::now();
    let mut n = 0u64;
    let mut errors = Errors::new();
    while start.elapsed().as_secs_f64() < seconds {
        if let Some(r) = rate {
            let ahead = n as f64 / r - start.elapsed().as_secs_f64();
            if ahead > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(ahead));
            }
        }
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

/// `blocked-connects --addr A --threads N`: N threads each in a blocking connect() at the same
/// time, toward a listener whose accept queue is full (its SYNs are dropped), each giving up
/// after one SYN retry (TCP_SYNCNT 1): N calls in flight inside the kernel at once, then N
/// ETIMEDOUT.
pub(super) fn blocked_connects(args: &[String]) {
    let addr: std::net::SocketAddrV4 = req(args, "--addr");
    let threads: usize = req(args, "--threads");
    let l = TcpListener::bind(addr).expect("bind");
    // SAFETY: listen(2) with backlog 0 on a listener we own.
    unsafe { libc::listen(l.as_raw_fd(), 0) };
    let fill = TcpStream::connect(addr).expect("fill the accept queue");
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                let fd = tcp_socket(libc::AF_INET).expect("socket");
                let one: i32 = 1;
                // SAFETY: setsockopt(2) with a 4-byte int on a socket we own.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_SYNCNT,
                        (&one as *const i32).cast(),
                        4,
                    )
                };
                start.wait();
                sys_addr(&fd, addr, true).err().map(|e| errno_name(&e))
            })
        })
        .collect();
    let mut errors = Errors::new();
    let mut ok = 0;
    for h in handles {
        match h.join().expect("thread") {
            None => ok += 1,
            Some(e) => *errors.entry(e).or_default() += 1,
        }
    }
    drop(fill);
    println!("{}", json!({"pid": pid(), "ok": ok, "errors": errors}));
}
