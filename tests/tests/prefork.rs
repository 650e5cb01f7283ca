//! A pre-forking server's listen queue: the drops the kernel counts, charged to the worker
//! that accepts.

mod common;

use common::*;

/// A pre-forking server (the master creates the listener, a worker inherits it and accepts
/// slowly; backlog 16, 300 clients at once): the drops reported are the namespace's
/// ListenDrops exactly (the listener's own counter counts a final ACK dropped on a full queue
/// twice), the syncookies its TCPReqQFullDoCookies, both charged to the worker that accepts,
/// none to the master.
#[test]
fn prefork_listen_drops_match_listen_drops_and_go_to_the_accepting_worker() {
    if !require_root("prefork_listen_drops_match_listen_drops_and_go_to_the_accepting_worker") {
        return;
    }
    let ct = Conntrace::start(&[]);
    let out = in_netns(
        "sysctl -qw net.ipv4.tcp_syncookies=1\n\
         $WL prefork --listen 127.0.0.1:9000 --backlog 16 --clients 300 --handle-ms 50 --wait-ms 3000 --hold-ms 1500",
    );
    let lines = ct.stop();
    let wl = report(&out);
    let (master, worker) = (wl["pid"].as_u64().unwrap(), wl["worker_pid"].as_u64().unwrap());
    let drops = wl["listen_drops"].as_u64().unwrap();
    let cookies = wl["cookies"].as_u64().unwrap();
    eprintln!(
        "kernel: ListenDrops {drops}, TCPReqQFullDoCookies {cookies}; conntrace: worker {} drops {} cookies, master {} drops",
        total(&lines, worker, "listen_drops"),
        total(&lines, worker, "syncookies"),
        total(&lines, master, "listen_drops")
    );
    assert!(drops > 0, "the queue overflowed: {wl}");
    assert_eq!(total(&lines, worker, "listen_drops"), drops);
    assert_eq!(total(&lines, worker, "syncookies"), cookies);
    assert_eq!(total(&lines, master, "listen_drops") + total(&lines, master, "syncookies"), 0);
    // Retransmitted handshakes come in waves (their timers back off): a quiet spell longer than
    // the resolve delay between two waves makes a second activation, as it should.
    assert!(!activations(&lines, worker, "accept_queue").is_empty());
    assert!(activations(&lines, master, "accept_queue").is_empty());
}
