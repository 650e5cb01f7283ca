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

mod fds;
mod listen;
mod ports;
mod scale;
mod tables;
mod time_wait;

use fds::*;
use listen::*;
use ports::*;
use scale::*;
use tables::*;
use time_wait::*;

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

/// Runs this workload again as a separate process with `args` and waits for its "ready"
/// line (a server that must not be the process whose counts are checked).
fn spawn_ready(args: &[&str]) -> std::process::Child {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe).args(args).stdout(Stdio::piped()).spawn().expect("spawn helper process");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().expect("helper stdout")).read_line(&mut ready).ok();
    child
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
        Some("prefork") => prefork(&args),
        Some("accept-slow") => accept_slow(&args),
        Some("syn-flood") => syn_flood(&args),
        Some("mem-hog") => mem_hog(&args),
        Some("mem-ramp") => mem_ramp(&args),
        Some("ct-fill") => ct_fill(&args),
        Some("getppid") => getppid(&args),
        Some("blocked-connects") => blocked_connects(&args),
        Some("scale") => scale(&args),
        Some("procs") => procs(&args),
        Some("procs-child") => procs_child(&args),
        _ => {
            eprintln!("usage: conntrace-workload ports|tw|tw-server|emfile|enfile|async|churn|bind-connect|bind-addr|resets|backlog|listen-only|prefork|syn-flood|mem-hog|ct-fill|getppid|blocked-connects|scale|procs [options]");
            std::process::exit(2);
        }
    }
}
