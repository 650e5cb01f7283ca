//! Listen queues: SYNs and ACKs a listener dropped because its accept or SYN queue was full.

use std::time::SystemTime;

use super::*;
use crate::domain::listen::{ListenerDelta, NsDelta};

/// Why a listener dropped: the SYN queue when its SYN queue is over the backlog or only the
/// namespace's request-queue counters grew, the accept queue otherwise (ListenOverflows, or
/// the accept queue is full right now).
pub(super) fn listen_cause(l: &ListenerDelta, ns: &NsDelta) -> Cause {
    let get = |k: &str| ns.get(k).copied().unwrap_or(0);
    let syn = l.cookies > 0 || get("TCPReqQFullDrop") > 0 || l.syn_queue_full();
    if syn && get("ListenOverflows") == 0 && !l.accept_queue_full() {
        Cause::SynQueue
    } else {
        Cause::AcceptQueue
    }
}

pub(super) fn listen_queue(
    cause: Cause,
    pid: u32,
    comm: String,
    since: SystemTime,
    l: &ListenerDelta,
    ns: &NsDelta,
    net: Result<NetFacts, String>,
) -> Verdict {
    let listener = Dest { netns: l.netns, addr: l.addr, port: l.port };
    let somaxconn = net.as_ref().ok().and_then(|f| f.somaxconn);
    let proof = ListenProof {
        error: net_error(&net),
        listener: listener.endpoint(),
        backlog: l.backlog,
        queue_len: l.queue_len,
        drops: l.drops,
        syn_recv: l.syn_recv,
        syncookies: l.cookies,
        somaxconn,
        netns: l.netns,
        netns_counters: ns.clone(),
    };
    let mut v = base(cause, pid, comm.clone(), since, l.drops + l.cookies, Proof::ListenQueue(proof));
    v.destination = Some(listener.clone());
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "unknown".into());
    let ep = listener.endpoint();
    if cause == Cause::AcceptQueue {
        v.set_summary(
            format!(
                "{comm}[{pid}] is not accepting fast enough on {ep}: accept queue {}/{} (backlog = min(listen() backlog, net.core.somaxconn {}))",
                l.queue_len,
                l.backlog,
                of(somaxconn)
            ),
            "{n} SYNs/ACKs dropped".into(),
        );
        v.fix.push(format!(
            "accept faster on {ep}: more accepting threads/workers, or drain the queue in a loop on each readiness event"
        ));
        v.fix.push(format!(
            "raise the listen() backlog (now {}) and net.core.somaxconn (now {}): the smaller of the two is used",
            l.backlog,
            of(somaxconn)
        ));
        v.fix.push(
            "clients do not get an error: their SYNs are retransmitted after 1, 3, 7… s, seen as slow connects".into(),
        );
    } else {
        // The split between drops and cookies is in the evidence; the tally counts both.
        let what = match (l.drops, l.cookies) {
            (_, 0) => "{n} SYNs dropped",
            (0, _) => "{n} SYNs answered with syncookies",
            _ => "{n} SYNs dropped or answered with syncookies",
        };
        v.set_summary(
            format!(
                "the SYN queue of {ep} ({comm}[{pid}]) is full: {} handshakes pending, backlog {}",
                l.syn_recv, l.backlog
            ),
            what.into(),
        );
        if l.drops > 0 {
            v.fix.push(
                "net.ipv4.tcp_syncookies=1 answers SYNs beyond the queue with cookies instead of dropping them".into(),
            );
        } else {
            v.fix.push(
                "syncookies keep connections working but lose TCP options (window scaling, SACK) unless timestamps carry them"
                    .into(),
            );
        }
        v.fix.push(format!(
            "raise the listen() backlog (now {}), net.core.somaxconn and net.ipv4.tcp_max_syn_backlog",
            l.backlog
        ));
        v.fix.push("if the SYNs never complete (spoofed sources), it is a SYN flood: filter it upstream".into());
    }
    v
}

/// The warning for a listener whose accept queue has stayed at least 4/5 full for `for_s`:
/// its process accepts no faster than connections arrive; once the queue is over its backlog
/// the kernel drops SYNs and handshake ACKs.
pub fn accept_queue_pressure(pid: u32, comm: String, since: SystemTime, l: &ListenerDelta, for_s: f64) -> Verdict {
    let proof =
        QueuePressureProof { queue_len: l.queue_len, backlog: l.backlog, for_s: for_s.round() as u64, netns: l.netns };
    let mut v = base(Cause::AcceptQueuePressure, pid, comm.clone(), since, 0, Proof::AcceptQueuePressure(proof));
    v.state = VerdictState::Warning;
    v.destination = Some(Dest { netns: l.netns, addr: l.addr, port: l.port });
    let listener = crate::domain::net::endpoint(&l.addr.to_string(), l.port);
    v.set_summary(
        format!(
            "the accept queue of {comm}[{pid}]'s listener {listener} has stayed near its backlog for {:.0} s ({} of \
             {} waiting for accept()): it accepts no faster than connections arrive; past the backlog the kernel \
             drops SYNs and handshake ACKs",
            for_s, l.queue_len, l.backlog
        ),
        String::new(),
    );
    v.fix.push(format!(
        "accept faster: more workers or threads calling accept() in {comm}, or less work before each accept"
    ));
    v.fix.push(format!(
        "a deeper queue absorbs bursts: a larger listen() backlog ({} now), capped by net.core.somaxconn",
        l.backlog
    ));
    v
}
