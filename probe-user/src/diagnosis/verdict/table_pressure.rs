//! Warnings for kernel tables filling toward their limit: a namespace's conntrack entries
//! toward nf_conntrack_max (then `__nf_conntrack_alloc` refuses new flows and their packets
//! are dropped), the machine's TCP memory toward tcp_mem's pressure threshold (then
//! `tcp_under_memory_pressure` shrinks every socket's buffers, and at the third value
//! allocations fail).

use super::*;

/// Who a machine-wide or namespace-wide warning is charged to when no process stands out.
pub const NOBODY_IN_PARTICULAR: u32 = 0;

fn proof(f: &FdForecast, unit: &'static str, netns: Option<u32>) -> Proof {
    Proof::TablePressure(TablePressureProof {
        value: f.open,
        limit: f.limit,
        unit,
        rate_per_s: (f.rate_per_s * 10.0).round() / 10.0,
        seconds_left: f.seconds_left.round() as u64,
        netns,
    })
}

/// Conntrack entries of namespace `netns` growing toward nf_conntrack_max, charged to the
/// process opening the most connections there (`comm` names the namespace when none does).
pub fn conntrack_pressure(pid: u32, comm: String, since: SystemTime, netns: u32, f: &FdForecast) -> Verdict {
    let mut v = base(Cause::ConntrackPressure, pid, comm.clone(), since, 0, proof(f, "entries", Some(netns)));
    v.state = VerdictState::Warning;
    let whose =
        if pid == NOBODY_IN_PARTICULAR { format!("namespace {netns}") } else { format!("{comm}[{pid}]'s namespace") };
    v.set_summary(
        format!(
            "the conntrack table of {whose} is filling: {} of net.netfilter.nf_conntrack_max {} entries, {:.0} more a \
             second; full {}, then new connections' packets are dropped (\"nf_conntrack: table full\")",
            thousands(f.open),
            thousands(f.limit),
            f.rate_per_s,
            in_about(f.seconds_left)
        ),
        String::new(),
    );
    v.fix.push(format!(
        "raise net.netfilter.nf_conntrack_max (now {}; about 300 bytes per entry) and net.netfilter.nf_conntrack_buckets with it",
        thousands(f.limit)
    ));
    v.fix.push(
        "closed connections stay tracked 120 s (net.netfilter.nf_conntrack_tcp_timeout_time_wait): reuse connections, \
         or shorten that timeout"
            .into(),
    );
    v.fix.push("exempt traffic that needs no tracking with a `notrack` rule in the raw table".into());
    v
}

/// The machine's TCP memory growing toward tcp_mem's pressure threshold.
pub fn tcp_mem_pressure(pid: u32, comm: String, since: SystemTime, f: &FdForecast, page_size: u64) -> Verdict {
    let mut v = base(Cause::TcpMemPressure, pid, comm, since, 0, proof(f, "pages", None));
    v.state = VerdictState::Warning;
    let mib = |p: u64| p * page_size / (1 << 20);
    v.set_summary(
        format!(
            "TCP memory is growing toward net.ipv4.tcp_mem's pressure threshold: {} of {} pages ({} of {} MiB), {:.0} \
             pages more a second; pressure {}, then every socket's buffers shrink (throughput drops) and \
             at tcp_mem's third value allocations fail",
            thousands(f.open),
            thousands(f.limit),
            thousands(mib(f.open)),
            thousands(mib(f.limit)),
            f.rate_per_s,
            in_about(f.seconds_left)
        ),
        String::new(),
    );
    v.fix.push(
        "find the sockets holding the memory: `ss -tmn` (large Recv-Q: a reader that does not read; large Send-Q: a \
         slow peer)"
            .into(),
    );
    v.fix.push(
        "if the memory is legitimately needed, raise net.ipv4.tcp_mem (pages, all three values) within what RAM allows"
            .into(),
    );
    v
}

/// Why a table warning ended, as a sentence (`what`: "the conntrack table of namespace 7").
pub fn table_calm_reason(what: &str, limit_name: &str, calm: &FdCalm) -> String {
    match calm {
        FdCalm::Steady { open, limit } => {
            format!("{what} stopped growing, at {} of {}", thousands(*open), thousands(*limit))
        }
        FdCalm::Raised { from, to } => {
            format!("{limit_name} was raised from {} to {}", thousands(*from), thousands(*to))
        }
        FdCalm::Reached { limit } => format!("{what} reached its limit ({})", thousands(*limit)),
        FdCalm::Gone => format!("{what} is no longer read (its namespace is gone, or the module was unloaded)"),
    }
}
