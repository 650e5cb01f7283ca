//! TIME_WAIT: the namespace's tw table full (tcp_max_tw_buckets).

use std::time::SystemTime;

use serde_json::json;

use super::*;
use crate::domain::net;

pub fn tw_buckets(pid: u32, comm: String, since: SystemTime, n: u64, net: Result<NetFacts, String>) -> Verdict {
    let mut v = base(Cause::TwBuckets, pid, comm.clone(), since, n);
    net_error(&mut v, &net);
    let f = net.as_ref().ok();
    let max = f.and_then(|f| f.tcp_max_tw_buckets);
    let tw = f.map(|f| f.sockets.iter().filter(|s| s.state == net::TIME_WAIT).count() as u64);
    let overflows = f.and_then(|f| f.tcp_ext.get("TCPTimeWaitOverflow").copied());
    v.evidence.insert("tcp_max_tw_buckets".into(), json!(max));
    v.evidence.insert("time_wait".into(), json!(tw));
    v.evidence.insert("netns_tw_overflows".into(), json!(overflows));
    v.evidence.insert("netns".into(), json!(f.and_then(|f| f.netns)));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "?".into());
    v.summary = format!(
        "the TIME_WAIT table of {comm}[{pid}]'s namespace is full: {} TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets is {}; {} of its connections closed without TIME_WAIT since {}",
        of(tw),
        of(max),
        thousands(n),
        clock(since)
    );
    v.fix.push(format!(
        "raise net.ipv4.tcp_max_tw_buckets (now {}; a TIME_WAIT socket costs a few hundred bytes), e.g. sysctl -w net.ipv4.tcp_max_tw_buckets=262144",
        of(max)
    ));
    v.fix.push(
        "create fewer TIME_WAITs: reuse connections (keepalive, pooling); the side that closes first keeps the TIME_WAIT".into(),
    );
    v.fix.push("skipping TIME_WAIT is not a fix: late segments of an old connection can then land in a new one on the same ports".into());
    v
}
