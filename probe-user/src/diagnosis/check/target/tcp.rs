//! The target's TCP items: buffer memory (`target_tcp_mem`), the TIME_WAIT table at a close
//! rate (`target_tw_buckets`) and every listener's backlog (`target_backlog`).

use serde_json::json;

use super::{item, thousands, Item, Level};
use crate::domain::net::{endpoint, NetFacts, SystemFacts, LISTEN};

/// TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h), whatever tcp_fin_timeout says.
pub(super) const TIME_WAIT_SECS: u64 = 60;

/// Fewer TCP sockets than this (or none holding buffer pages) tell nothing about what one
/// connection holds: assume a page each instead.
const MIN_SOCKETS_TO_MEASURE: u64 = 16;

/// A backlog at or above this is not worth a warning: Linux 5.4 made it somaxconn's default.
const GOOD_SOMAXCONN: u64 = 4096;

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m >= 10.0 {
        format!("{} MiB", thousands(m.round() as u64))
    } else if m >= 1.0 {
        format!("{m:.1} MiB")
    } else {
        format!("{} KiB", (bytes as f64 / 1024.0).round() as u64)
    }
}

/// "1,024 pages (4.0 MiB)", or pages alone without a page size.
fn pages(n: u64, page_size: Option<u64>) -> String {
    let unit = if n == 1 { "page" } else { "pages" };
    match page_size {
        Some(p) => format!("{} {unit} ({})", thousands(n), mib(n.saturating_mul(p))),
        None => format!("{} {unit}", thousands(n)),
    }
}

/// `n` × `num` / `den`, rounded up, without overflow.
fn scale(n: u64, num: u64, den: u64) -> u64 {
    let v = (n as u128 * num as u128).div_ceil(den.max(1) as u128);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// N connections' TCP buffers against net.ipv4.tcp_mem. What one connection holds is
/// measured from /proc/net/sockstat: `mem` (pages charged to TCP, proto_memory_allocated)
/// over `alloc` (TCP sockets, proto_sockets_allocated_sum_positive), both machine-wide like
/// tcp_mem itself (`inuse` counts one namespace's sockets only: sockstat_seq_show).
pub(super) fn tcp_mem_item(n: u64, sys: &SystemFacts) -> Item {
    let page = sys.page_size;
    let Some((low, pressure, high)) = sys.tcp_mem else {
        return item(
            "target_tcp_mem",
            Level::Warn,
            json!({"connections": n}),
            None,
            format!(
                "net.ipv4.tcp_mem could not be read (/proc/sys/net/ipv4/tcp_mem, which the kernel shows in the \
                 initial network namespace only): the buffer memory of {} connections was not checked",
                thousands(n)
            ),
            None,
        );
    };
    let sockets = sys.sockstat.get("alloc").or_else(|| sys.sockstat.get("inuse")).copied();
    let mem = sys.sockstat.get("mem").copied();
    let (num, den, basis) = match (mem, sockets) {
        (Some(mem), Some(s)) if s >= MIN_SOCKETS_TO_MEASURE && mem > 0 => {
            let each = match page {
                Some(p) => format!("about {:.1} KiB", mem as f64 * p as f64 / s as f64 / 1024.0),
                None => format!("about {:.2} pages", mem as f64 / s as f64),
            };
            (
                mem,
                s,
                format!(
                    "TCP buffers hold {} for the {} TCP sockets of the machine now, {each} a socket",
                    pages(mem, page),
                    thousands(s)
                ),
            )
        }
        _ => {
            let why = match (mem, sockets) {
                (Some(0), Some(s)) if s >= MIN_SOCKETS_TO_MEASURE => {
                    format!("the {} TCP sockets of the machine hold no buffer pages now", thousands(s))
                }
                (Some(mem), Some(s)) => {
                    format!(
                        "only {} TCP socket{} now, holding {}, too few to measure from",
                        thousands(s),
                        if s == 1 { "" } else { "s" },
                        pages(mem, page)
                    )
                }
                _ => "/proc/net/sockstat could not be read".into(),
            };
            (1, 1, format!("{why}: assuming one page a connection, what a mostly idle one holds (connections with data queued hold more)"))
        }
    };
    let need = scale(n, num, den);
    let level = if need >= high {
        Level::Fail
    } else if need >= pressure {
        Level::Warn
    } else {
        Level::Ok
    };
    // Raise the thresholds above the need, keeping the kernel's default proportions
    // (tcp_init_mem: low = ¾ pressure, high = 2 low); never lower one.
    let new_pressure = need.saturating_add(need / 4).saturating_add(1).max(pressure);
    let new_low = (new_pressure / 4 * 3).max(low);
    let new_high = new_low.saturating_mul(2).max(new_pressure).max(high);
    let fix = format!(
        "sysctl -w net.ipv4.tcp_mem=\"{new_low} {new_pressure} {new_high}\" and persist it in /etc/sysctl.d, if the \
         machine can spare {} for socket buffers (tcp_mem is machine-wide); otherwise keep less data queued per \
         connection (lower the maxima of net.ipv4.tcp_rmem/tcp_wmem)",
        pages(new_high, page)
    );
    let mut value = json!({"tcp_mem": [low, pressure, high], "connections": n, "needed_pages": need,
                           "measured": num != 1 || den != 1, "pages_per_connection": num as f64 / den as f64});
    if let Some(p) = page {
        value["page_size"] = json!(p);
    }
    item(
        "target_tcp_mem",
        level,
        value,
        Some(format!("{}/{} pages", thousands(need), thousands(high))),
        format!(
            "{basis}; {} connections need about {}; net.ipv4.tcp_mem is {low} {pressure} {high}: from {} TCP is \
             under memory pressure and shrinks socket buffers, at {} buffer allocations fail \
             (__sk_mem_raise_allocated): writers block and received segments are dropped{}",
            thousands(n),
            pages(need, page),
            pages(pressure, page),
            pages(high, page),
            if page.is_none() { " (page size unknown: sysconf(_SC_PAGESIZE) failed)" } else { "" }
        ),
        (level != Level::Ok).then_some(fix.as_str()),
    )
}

/// `rate` connections a second closed by this side first: each TIME_WAIT socket lives 60 s,
/// so the table holds rate × 60 in steady state, against tcp_max_tw_buckets of the namespace.
pub(super) fn tw_buckets_item(rate: u64, net: &NetFacts) -> Item {
    let held = rate.saturating_mul(TIME_WAIT_SECS);
    let Some(max) = net.tcp_max_tw_buckets else {
        return item(
            "target_tw_buckets",
            Level::Warn,
            json!({"new_per_second": rate, "time_wait_needed": held}),
            None,
            format!(
                "net.ipv4.tcp_max_tw_buckets could not be read in this network namespace: whether it holds the {} \
                 TIME_WAIT sockets of {} closes a second was not checked",
                thousands(held),
                thousands(rate)
            ),
            None,
        );
    };
    // inet_twsk_alloc refuses a TIME_WAIT socket once the namespace holds tcp_max_tw_buckets.
    let level = if held >= max {
        Level::Fail
    } else if held as u128 * 5 >= max as u128 * 4 {
        Level::Warn
    } else {
        Level::Ok
    };
    let now = net.time_wait.map(|tw| format!(" ({} in TIME_WAIT now)", thousands(tw))).unwrap_or_default();
    let fix = format!(
        "sysctl -w net.ipv4.tcp_max_tw_buckets={} and persist it in /etc/sysctl.d (the setting is per network \
         namespace: set it in the one that makes the connections); or reuse connections (keepalive, pooling) so \
         fewer close",
        held.saturating_mul(2)
    );
    let mut value = json!({"new_per_second": rate, "time_wait_needed": held, "tcp_max_tw_buckets": max});
    if let Some(tw) = net.time_wait {
        value["time_wait"] = json!(tw);
    }
    item(
        "target_tw_buckets",
        level,
        value,
        Some(format!("{}/{}", thousands(held), thousands(max))),
        format!(
            "{} connections a second closed by this side first each leave a socket 60 s in TIME_WAIT \
             (TCP_TIMEWAIT_LEN): {} at once in steady state, against net.ipv4.tcp_max_tw_buckets {} of this network \
             namespace{now}; at the limit inet_twsk_alloc refuses TIME_WAIT (TcpExt TCPTimeWaitOverflow) and \
             connections close without its protection: a delayed segment of an old connection can be taken for one \
             of a new connection on the same ports",
            thousands(rate),
            thousands(held),
            thousands(max)
        ),
        (level != Level::Ok).then_some(fix.as_str()),
    )
}

/// Every listener's backlog: what listen() asked, capped at net.core.somaxconn (__sys_listen;
/// inet_listen stores it in sk_max_ack_backlog, which sock_diag reports).
pub(super) fn backlog_items(n: u64, net: &NetFacts) -> Vec<Item> {
    let listeners: Vec<_> = net.sockets.iter().filter(|s| s.state == LISTEN).collect();
    let sizing = format!(
        "the accept queue absorbs bursts of new connections until accept() takes them: its size needs to cover \
         arrival rate × accept latency, not the {} concurrent connections",
        thousands(n)
    );
    if listeners.is_empty() {
        return vec![item(
            "target_backlog",
            Level::Ok,
            json!({"listeners": 0}),
            None,
            format!("no listening socket in this network namespace, so no backlog to check; {sizing}"),
            None,
        )];
    }
    let Some(somaxconn) = net.somaxconn else {
        return vec![item(
            "target_backlog",
            Level::Warn,
            json!({"listeners": listeners.len()}),
            None,
            format!(
                "net.core.somaxconn could not be read in this network namespace: whether it capped the backlog of \
                 its {} listeners is unknown; {sizing}",
                listeners.len()
            ),
            None,
        )];
    };
    listeners
        .into_iter()
        .map(|l| {
            let ep = endpoint(&l.src.to_string(), l.sport);
            let backlog = l.wqueue as u64;
            // Equal: listen() asked for at least somaxconn and got it. Above: it listened before
            // somaxconn was lowered, and will get somaxconn when it listens again.
            let (level, how, fix) = if somaxconn >= GOOD_SOMAXCONN || backlog < somaxconn {
                (Level::Ok, format!(" (net.core.somaxconn {somaxconn} caps what listen() asks)"), None)
            } else if backlog == somaxconn {
                (
                    Level::Warn,
                    format!("; it equals net.core.somaxconn {somaxconn}: listen() asked for at least that much and was capped"),
                    Some(format!(
                        "sysctl -w net.core.somaxconn={GOOD_SOMAXCONN} and persist it in /etc/sysctl.d, then restart \
                         the server listening on {ep}: the backlog is taken at listen() time, a running listener keeps \
                         {backlog}"
                    )),
                )
            } else {
                (
                    Level::Warn,
                    format!(
                        ", above net.core.somaxconn {somaxconn}: it listened before somaxconn was lowered, and its next \
                         listen() (a restart) gets {somaxconn}"
                    ),
                    Some(format!(
                        "sysctl -w net.core.somaxconn={GOOD_SOMAXCONN} and persist it in /etc/sysctl.d before the server \
                         listening on {ep} restarts"
                    )),
                )
            };
            item(
                "target_backlog",
                level,
                json!({"listener": ep, "backlog": backlog, "somaxconn": somaxconn, "queue_len": l.rqueue}),
                None,
                format!("listener {ep} has a backlog of {backlog}{how}; {sizing}"),
                fix.as_deref(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
