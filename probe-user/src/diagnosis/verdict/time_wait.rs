//! TIME_WAIT: the namespace's tw table full (tcp_max_tw_buckets), and the prediction that
//! TIME_WAIT churn toward one destination will exhaust its ports.

use std::time::SystemTime;

use super::*;

/// `table`: the namespace's tw table when the kernel refused the process a TIME_WAIT (what
/// inet_twsk_alloc() compared with the limit); else counted from the namespace's sockets now.
pub fn tw_buckets(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    table: Option<TwTable>,
    net: Result<NetFacts, String>,
) -> Verdict {
    let f = net.as_ref().ok();
    let proof = TwBucketsProof {
        error: net_error(&net),
        tcp_max_tw_buckets: table.map(|t| t.max as u64).or_else(|| f.and_then(|f| f.tcp_max_tw_buckets)),
        time_wait: table.map(|t| t.count as u64).or_else(|| f.and_then(|f| f.time_wait)),
        netns_tw_overflows: f.and_then(|f| f.tcp_ext.get("TCPTimeWaitOverflow").copied()),
        netns: table.map(|t| t.netns).or_else(|| f.and_then(|f| f.netns)),
    };
    let (tw, max) = (proof.time_wait, proof.tcp_max_tw_buckets);
    let mut v = base(Cause::TwBuckets, pid, comm.clone(), since, n, Proof::TwBuckets(proof));
    let of = |x: Option<u64>| x.map(thousands).unwrap_or_else(|| "unknown".into());
    v.set_summary(
        format!(
            "the TIME_WAIT table of {comm}[{pid}]'s namespace is full: {} TIME_WAIT sockets, net.ipv4.tcp_max_tw_buckets is {}",
            of(tw),
            of(max)
        ),
        "{n} of its connections closed without TIME_WAIT".into(),
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

/// The prediction for `pid` creating `rate` TIME_WAIT sockets a second toward `dest`, whose
/// ports `u` counts in `net`: the range runs out before the first ones expire.
pub(super) fn time_wait_pressure(
    pid: u32,
    comm: String,
    now: SystemTime,
    dest: &Dest,
    rate: f64,
    u: &PortUse,
    net: &NetFacts,
) -> Verdict {
    let left = u.usable.saturating_sub(u.in_use()) as f64 / rate;
    let evidence = Proof::TimeWaitPressure(TimeWaitPressureProof {
        ports: u.proof(net, dest),
        rate_per_s: (rate * 10.0).round() / 10.0,
        seconds_left: left.round() as u64,
        predicted_time_wait: (rate * TIME_WAIT_S).round() as u64,
    });
    let when =
        if left < 1.0 { "every port is in use now".to_string() } else { format!("ports run out in about {left:.0} s") };
    let summary = format!(
        "{comm}[{pid}] is creating {:.0} TIME_WAIT sockets/s toward {}: at 60 s each that needs {} ports but {}-{} has {} ({} in use now); {when}",
        rate,
        dest.endpoint(),
        thousands((rate * TIME_WAIT_S) as u64),
        u.range.0,
        u.range.1,
        thousands(u.usable),
        thousands(u.in_use()),
    );
    let mut fix = vec![format!(
        "reuse connections to {} (keepalive, pooling): each short connection keeps its port in TIME_WAIT for 60 s",
        dest.endpoint()
    )];
    fix.push(format!(
        "sysctl -w net.ipv4.tcp_tw_reuse=1 lets outbound connect() reuse TIME_WAIT ports toward {} (needs TCP timestamps)",
        dest.endpoint()
    ));
    fix.push(format!("widen net.ipv4.ip_local_port_range (now {}-{})", u.range.0, u.range.1));
    fix.push(
        "the side that closes first keeps the TIME_WAIT: let the server close first where the protocol allows".into(),
    );
    Verdict {
        state: VerdictState::Warning,
        cause: Cause::TimeWaitPressure,
        pid,
        comm,
        since: now,
        failures: 0,
        destination: Some(dest.clone()),
        head: summary,
        tally: String::new(),
        evidence,
        fix,
        duration_s: None,
        resolution: None,
    }
}

/// The warning for a namespace whose TIME_WAIT table fills toward tcp_max_tw_buckets, charged
/// to the process creating most of its TIME_WAITs.
pub fn tw_table_pressure(pid: u32, comm: String, since: SystemTime, netns: u32, f: &FdForecast) -> Verdict {
    let proof = TwTablePressureProof {
        time_wait: f.open,
        tcp_max_tw_buckets: f.limit,
        rate_per_s: (f.rate_per_s * 10.0).round() / 10.0,
        seconds_left: f.seconds_left.round() as u64,
        netns,
    };
    let mut v = base(Cause::TwTablePressure, pid, comm.clone(), since, 0, Proof::TwTablePressure(proof));
    v.state = VerdictState::Warning;
    v.set_summary(
        format!(
            "the TIME_WAIT table of {comm}[{pid}]'s namespace is filling: {} of net.ipv4.tcp_max_tw_buckets {}, \
             {:.0} more a second; full {}, then closing connections skip TIME_WAIT \
             (TCPTimeWaitOverflow) and late segments of old connections can reach new ones",
            thousands(f.open),
            thousands(f.limit),
            f.rate_per_s,
            in_about(f.seconds_left)
        ),
        String::new(),
    );
    v.fix.push(format!(
        "reuse connections (keepalive, pooling): each connection {comm} closes first stays 60 s in TIME_WAIT"
    ));
    v.fix.push(format!(
        "raise the limit in that namespace: sysctl -w net.ipv4.tcp_max_tw_buckets={} (a TIME_WAIT socket takes \
         about 200 bytes)",
        (f.limit * 4).max(262_144)
    ));
    v
}

/// Why a tw table warning ended, as a sentence.
pub fn tw_table_calm_reason(comm: &str, pid: u32, calm: &FdCalm) -> String {
    match calm {
        FdCalm::Steady { open, limit } => format!(
            "the TIME_WAIT table of {comm}[{pid}]'s namespace stopped growing, at {} of {}",
            thousands(*open),
            thousands(*limit)
        ),
        FdCalm::Raised { from, to } => {
            format!("net.ipv4.tcp_max_tw_buckets was raised from {} to {}", thousands(*from), thousands(*to))
        }
        FdCalm::Reached { limit } => format!(
            "the table is full ({} TIME_WAIT sockets): closes skip TIME_WAIT now (see the tw_buckets verdict)",
            thousands(*limit)
        ),
        FdCalm::Gone => format!("{comm}[{pid}]'s namespace is no longer watched (it is gone)"),
    }
}
