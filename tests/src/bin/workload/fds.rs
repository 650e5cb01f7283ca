//! File descriptors: RLIMIT_NOFILE (EMFILE) and fs.file-max (ENFILE).

use super::*;

/// Lowers RLIMIT_NOFILE, opens sockets until EMFILE, then keeps trying until `--failures`
/// attempts have failed. With `--ramp N --wait-stdin`: opens N first, says "ready" and waits
/// for a line on stdin before going on. With `--rate R`: R sockets a second (a leak), and the
/// report says when the first EMFILE came (`first_failure_ms`, Unix time).
pub(super) fn emfile(args: &[String]) {
    let nofile: u64 = req(args, "--nofile");
    let failures: u64 = req(args, "--failures");
    let ramp: Option<usize> = arg(args, "--ramp").map(|v| v.parse().expect("bad value for --ramp"));
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
    let mut waited = ramp.is_none();
    let rate: Option<f64> = arg(args, "--rate").map(|v| v.parse().expect("bad value for --rate"));
    let start = std::time::Instant::now();
    let mut first_failure_ms = None;
    let mut n = 0u64;
    while failed < failures {
        if let Some(r) = rate {
            n += 1;
            let due = start + std::time::Duration::from_secs_f64(n as f64 / r);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        if !waited && Some(fds.len()) == ramp {
            wait_stdin(args);
            waited = true;
        }
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            *errors.entry(errno_name(&std::io::Error::last_os_error())).or_default() += 1;
            failed += 1;
            first_failure_ms.get_or_insert_with(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
            });
        } else {
            // SAFETY: fd is a fresh descriptor we own.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    println!(
        "{}",
        json!({"pid": pid(), "limit": nofile, "opened": fds.len(), "errors": errors, "first_failure_ms": first_failure_ms})
    );
    hold(args);
}

/// Opens /dev/null until `--failures` opens failed with ENFILE (fs.file-max reached; run it
/// without CAP_SYS_ADMIN, which is exempt from the limit).
pub(super) fn enfile(args: &[String]) {
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

/// `getppid --seconds S`: a process that makes no network calls at all, calling getppid()
/// as fast as it can: what watching costs every other process of the host (a syscall
/// tracepoint puts each of its calls on the kernel's slow path).
pub(super) fn getppid(args: &[String]) {
    let seconds: f64 = req(args, "--seconds");
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..4096 {
            // SAFETY: getppid takes no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        n += 4096;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}", json!({"pid": pid(), "calls": n, "per_sec": n as f64 / secs}));
}
