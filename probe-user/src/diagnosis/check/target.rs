//! `check --connections N [--outbound-per-destination M] [--new-per-second R]`: can this
//! machine (and `--pid`'s process) hold N concurrent connections, M of them toward one
//! upstream, R new ones a second? Per limit: what is in force, what the target needs, and the
//! exact fix, naming where the limit comes from.

use serde_json::json;

use super::{item, Item, Level, ProcFds};
use crate::domain::net::{usable_ports, NetFacts, SystemFacts};

mod tcp;

/// The load to check for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub connections: u64,
    pub per_destination: Option<u64>,
    /// New outbound connections a second, closed by this side first (each leaves a
    /// TIME_WAIT socket, and its port, for 60 s).
    pub new_per_second: Option<u64>,
}

/// Where a process's RLIMIT_NOFILE comes from, as far as it can be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// A systemd service: `LimitNOFILE=` in its unit (limits.conf does not apply to services),
    /// with the value found in the unit files, if any.
    Systemd { unit: String, limit_nofile: Option<String> },
    /// Anything else: the shell or script that started it, or its container runtime.
    Inherited,
}

fn thousands(n: u64) -> String {
    crate::domain::time::thousands(n)
}

/// The items for `target`; `proc` with `--pid` (with its socket fds, to count what else it
/// holds), `source` where its limit comes from.
pub fn target_items(
    t: Target,
    sys: &SystemFacts,
    net: &NetFacts,
    proc: Option<(&ProcFds, Option<u64>)>,
    source: Option<&LimitSource>,
) -> Vec<Item> {
    let n = t.connections;
    let mut items = Vec::new();
    // Every connection is one fd, plus what the process holds besides sockets now (or a
    // small allowance for stdin/stdout/stderr, logs, config).
    let others = proc.map(|(p, sockets)| p.open.saturating_sub(sockets.unwrap_or(0))).unwrap_or(16);
    let need = n.saturating_add(others);
    match proc {
        Some((p, _)) => {
            let soft = p.soft.unwrap_or(0);
            let hard = p.hard;
            let level = if soft >= need { Level::Ok } else { Level::Fail };
            let how = match source {
                Some(LimitSource::Systemd { unit, limit_nofile }) => format!(
                    "it runs as the systemd service {unit} ({}): set LimitNOFILE={need} in its [Service] section \
                     (systemctl edit {unit}) and restart it; /etc/security/limits.conf does not apply to services",
                    limit_nofile.as_deref().map(|v| format!("LimitNOFILE={v} now")).unwrap_or_else(|| "no LimitNOFILE= in its unit files: the default applies".into())
                ),
                _ => format!(
                    "it inherits the limit from what started it: `ulimit -n {need}` in that shell or script, the \
                     container runtime's --ulimit nofile={need}:{need}, or now: prlimit --pid {} --nofile={need}:{need}",
                    p.pid
                ),
            };
            let hard_note = match hard {
                Some(h) if h < need => format!(" The hard limit ({}) is below it too: raise both.", thousands(h)),
                _ => String::new(),
            };
            items.push(item(
                "target_nofile",
                level,
                json!({"pid": p.pid, "nofile_soft": p.soft, "nofile_hard": hard, "needed": need, "other_fds": others,
                       "source": match source { Some(LimitSource::Systemd { unit, .. }) => json!({"systemd_unit": unit}), _ => json!("inherited") }}),
                Some(format!("{}/{}", thousands(need), thousands(soft))),
                format!(
                    "{}[{}] needs {} file descriptors for {} connections plus the {} other files it holds; its \
                     RLIMIT_NOFILE is {}",
                    p.comm,
                    p.pid,
                    thousands(need),
                    thousands(n),
                    others,
                    thousands(soft)
                ),
                (level != Level::Ok).then(|| format!("{how}.{hard_note}")).as_deref(),
            ));
        }
        None => items.push(item(
            "target_nofile",
            Level::Warn,
            json!({"needed": need}),
            None,
            format!(
                "a process holding {} connections needs RLIMIT_NOFILE of at least about {}: check it with --pid",
                thousands(n),
                thousands(need)
            ),
            None,
        )),
    }
    if let Some(nr_open) = sys.nr_open {
        let level = if nr_open >= need { Level::Ok } else { Level::Fail };
        items.push(item(
            "target_nr_open",
            level,
            json!({"nr_open": nr_open, "needed": need}),
            Some(format!("{}/{}", thousands(need), thousands(nr_open))),
            format!(
                "fs.nr_open = {}: no process's RLIMIT_NOFILE can exceed it (there is no other per-process cap)",
                thousands(nr_open)
            ),
            (level != Level::Ok)
                .then(|| format!("sysctl -w fs.nr_open={need} (persist it in /etc/sysctl.d)"))
                .as_deref(),
        ));
    }
    if let Some((used, max)) = sys.file_nr {
        let free = max.saturating_sub(used);
        let level = if free >= n { Level::Ok } else { Level::Fail };
        items.push(item(
            "target_file_max",
            level,
            json!({"file_nr": used, "file_max": max, "needed": n}),
            Some(format!("{}/{}", thousands(used.saturating_add(n)), thousands(max))),
            format!(
                "the system-wide file table has {} of {} handles free; {} connections take {}",
                thousands(free),
                thousands(max),
                thousands(n),
                thousands(n)
            ),
            (level != Level::Ok)
                .then(|| {
                    format!(
                        "sysctl -w fs.file-max={} (persist it in /etc/sysctl.d)",
                        used.saturating_add(n).saturating_mul(2)
                    )
                })
                .as_deref(),
        ));
    }
    if let (Some(m), Some(range)) = (t.per_destination, net.port_range) {
        items.push(ports_item(m, t.new_per_second, range, net));
    }
    if let Some((count, max)) = net.conntrack.as_ref().and_then(|c| Some((c.count?, c.max?))).or(sys.conntrack) {
        let level = if max.saturating_sub(count) >= n { Level::Ok } else { Level::Fail };
        items.push(item(
            "target_conntrack",
            level,
            json!({"count": count, "max": max, "needed": n}),
            Some(format!("{}/{}", thousands(count.saturating_add(n)), thousands(max))),
            format!(
                "connection tracking holds {} of nf_conntrack_max {} entries; {} tracked connections need as many",
                thousands(count),
                thousands(max),
                thousands(n)
            ),
            (level != Level::Ok)
                .then(|| {
                    format!(
                        "sysctl -w net.netfilter.nf_conntrack_max={} (and nf_conntrack_buckets about a quarter of it)",
                        count.saturating_add(n).saturating_mul(2)
                    )
                })
                .as_deref(),
        ));
    }
    items.push(tcp::tcp_mem_item(n, sys));
    if let Some(rate) = t.new_per_second {
        items.push(tcp::tw_buckets_item(rate, net));
    }
    items.extend(tcp::backlog_items(n, net));
    items
}

/// M connections toward one destination against the usable ephemeral ports, and with a close
/// rate R the ports TIME_WAIT holds besides them.
fn ports_item(m: u64, rate: Option<u64>, range: (u16, u16), net: &NetFacts) -> Item {
    let usable = usable_ports(range, &net.reserved);
    let reuse = net.tcp_tw_reuse.unwrap_or(0);
    // `tw_reuse_applies(reuse, dst)` for a destination other than loopback: the target's is
    // not known, and 2 (the default) covers loopback ones only.
    let reuse_applies = reuse == 1;
    let loopback_only = if reuse == 2 { " (loopback destinations only)" } else { "" };
    let (level, need, churn) = match rate {
        // No rate: warn that churn costs ports, with the rate the spare ports allow.
        None if usable >= m && !reuse_applies => (
            Level::Warn,
            m,
            format!(
                "; with tcp_tw_reuse={reuse}{loopback_only} every connection closed holds its port 60 s in \
                 TIME_WAIT: the {} ports left beside the {} connections allow about {} new connections a second",
                thousands(usable - m),
                thousands(m),
                (usable - m) / tcp::TIME_WAIT_SECS
            ),
        ),
        None => (if usable >= m { Level::Ok } else { Level::Fail }, m, String::new()),
        Some(r) => {
            // A port closed by this side stays in TIME_WAIT for TCP_TIMEWAIT_LEN; tcp_tw_reuse=1
            // lets connect() take it over once its last timestamp is a second old
            // (tcp_twsk_unique), so the churn holds about one second's worth instead.
            let (secs, how) = if reuse_applies {
                (1, "tcp_tw_reuse=1 lets connect() take a TIME_WAIT port over after about 1 s".to_string())
            } else {
                (
                    tcp::TIME_WAIT_SECS,
                    format!(
                        "each port stays 60 s in TIME_WAIT, and tcp_tw_reuse={reuse}{loopback_only} does not let \
                         connect() take it over"
                    ),
                )
            };
            let held = r.saturating_mul(secs);
            let need = m.saturating_add(held);
            let level = if need > usable {
                Level::Fail
            } else if need as u128 * 5 >= usable as u128 * 4 {
                Level::Warn
            } else {
                Level::Ok
            };
            let churn = format!(
                "; closing {} a second (at worst all toward that destination) takes about {} more ports, {} in all: \
                 {how}",
                thousands(r),
                thousands(held),
                thousands(need)
            );
            (level, need, churn)
        }
    };
    let widen = format!(
        "widen net.ipv4.ip_local_port_range (e.g. sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\": {} ports, \
         and persist it in /etc/sysctl.d), or spread the connections over more destination addresses/ports or source \
         addresses",
        thousands(65535 - 1024 + 1)
    );
    let fix = match (level, rate) {
        (Level::Ok, _) => None,
        (Level::Warn, None) => Some("sysctl -w net.ipv4.tcp_tw_reuse=1 (persist it in /etc/sysctl.d)".to_string()),
        (_, None) => Some(widen),
        // With a rate, reuse cuts what TIME_WAIT holds from 60 s of closes to about one.
        (_, Some(r)) if !reuse_applies && m.saturating_add(r) <= usable => Some(format!(
            "sysctl -w net.ipv4.tcp_tw_reuse=1 and persist it in /etc/sysctl.d (outbound connections then need about \
             {} ports; it needs TCP timestamps, on by default); or {widen}; or reuse connections (keepalive, pooling) \
             so fewer close",
            thousands(m.saturating_add(r))
        )),
        (_, Some(_)) => Some(format!("{widen}; or reuse connections (keepalive, pooling) so fewer close")),
    };
    let mut value =
        json!({"range": format!("{}-{}", range.0, range.1), "usable": usable, "needed": m, "tcp_tw_reuse": reuse});
    if let Some(r) = rate {
        value["new_per_second"] = json!(r);
        value["needed_with_time_wait"] = json!(need);
    }
    item(
        "target_ports",
        level,
        value,
        Some(format!("{}/{}", thousands(need), thousands(usable))),
        format!(
            "{} concurrent connections toward one destination (address and port) from one source address need {} \
             ephemeral ports; ip_local_port_range {}-{} has {} usable{churn}",
            thousands(m),
            thousands(m),
            range.0,
            range.1,
            thousands(usable)
        ),
        fix.as_deref(),
    )
}

#[cfg(test)]
mod tests;
