//! Kernel memory tables: the conntrack table and TCP memory (tcp_mem).

use std::{collections::BTreeMap, time::SystemTime};

use super::*;

/// The namespace's conntrack table is at its limit now.
pub(super) fn conntrack_at_limit(ct: &crate::domain::net::Conntrack) -> bool {
    matches!((ct.count, ct.max), (Some(c), Some(m)) if m > 0 && c >= m)
}

/// Entries __nf_conntrack_alloc refused since boot: the `drop` statistic less the clashes,
/// which count in `insert_failed` as well.
pub(super) fn conntrack_refused(ct: &crate::domain::net::Conntrack) -> u64 {
    let get = |k: &str| ct.stats.get(k).copied().unwrap_or(0);
    get("drop").saturating_sub(get("insert_failed"))
}

pub(super) fn conntrack_verdict(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    ct: &crate::domain::net::Conntrack,
    netns: Option<u32>,
) -> Verdict {
    let stat = |k: &str| ct.stats.get(k).copied().unwrap_or(0);
    let proof = ConntrackProof {
        count: ct.count,
        max: ct.max,
        drop: stat("drop"),
        early_drop: stat("early_drop"),
        insert_failed: stat("insert_failed"),
        netns,
    };
    let mut v = base(Cause::ConntrackFull, pid, comm.clone(), since, n, Proof::Conntrack(proof));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "unknown".into());
    v.set_summary(
        format!(
            "the conntrack table is full (\"nf_conntrack: table full, dropping packet\"): {} of {} entries in {comm}[{pid}]'s namespace",
            of(ct.count),
            of(ct.max)
        ),
        "{n} of its packets dropped".into(),
    );
    v.fix.push(format!(
        "raise net.netfilter.nf_conntrack_max (now {}; about 300 bytes per entry) and net.netfilter.nf_conntrack_buckets with it",
        of(ct.max)
    ));
    v.fix.push("shorten how long closed connections stay tracked: net.netfilter.nf_conntrack_tcp_timeout_time_wait (120 s by default)".into());
    v.fix.push(
        "exempt traffic that needs no tracking (e.g. a busy local port) with a `notrack` rule in the raw table".into(),
    );
    v
}

pub fn tcp_mem(
    pid: u32,
    comm: String,
    since: SystemTime,
    c: &Counts,
    limits: Option<(u64, u64, u64)>,
    sockstat: &BTreeMap<String, u64>,
    net: Result<NetFacts, String>,
) -> Verdict {
    let n = c.tcp_mem_send_refused + c.tcp_mem_recv_refused;
    let netns_counters = net.as_ref().ok().map(|f| {
        ["TCPMemoryPressures", "TCPAbortOnMemory", "TCPRcvQDrop", "PruneCalled", "TCPOrphanOverflow"]
            .iter()
            .filter_map(|k| Some((*k, *f.tcp_ext.get(*k)?)))
            .collect()
    });
    let proof = TcpMemProof {
        error: net_error(&net),
        tcp_mem: limits.map(|(a, b, c)| [a, b, c]),
        mem_pages: sockstat.get("mem").copied(),
        orphans: sockstat.get("orphan").copied(),
        send_refused: c.tcp_mem_send_refused,
        recv_refused: c.tcp_mem_recv_refused,
        netns_counters,
    };
    let mem_pages = proof.mem_pages;
    let mut v = base(Cause::TcpMem, pid, comm.clone(), since, n, Proof::TcpMem(proof));
    let pages = |p: u64| format!("{} pages ({} MiB)", thousands(p), p * 4096 / (1 << 20));
    let (limit_text, high) = match limits {
        Some((lo, pr, hi)) => (format!("tcp_mem is {lo} {pr} {hi} pages"), Some(hi)),
        None => ("tcp_mem unknown".into(), None),
    };
    let used = mem_pages.map(pages).unwrap_or_else(|| "unknown".into());
    // The send/receive split is in the evidence; the tally counts both.
    v.set_summary(
        format!("TCP memory is exhausted machine-wide: {used} in use, {limit_text}"),
        format!("{{n}} buffer allocations of {comm}[{pid}] were refused"),
    );
    v.fix.push(format!(
        "find the sockets holding the memory: `ss -tmn` (large Recv-Q: a reader that does not read; large Send-Q: a slow peer){}",
        high.map(|h| format!("; the limit is {}", pages(h))).unwrap_or_default()
    ));
    v.fix.push(
        "if the memory is legitimately needed, raise net.ipv4.tcp_mem (pages, all three values) within what RAM allows"
            .into(),
    );
    v.fix.push("lower net.ipv4.tcp_rmem/tcp_wmem maxima if many connections each buffer megabytes".into());
    v
}
