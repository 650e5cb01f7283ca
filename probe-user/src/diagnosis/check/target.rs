//! `check --connections N [--outbound-per-destination M]`: can this machine (and `--pid`'s
//! process) hold N concurrent connections, M of them toward one upstream? Per limit: what is
//! in force, what the target needs, and the exact fix, naming where the limit comes from.

use serde_json::json;

use super::{item, Item, Level, ProcFds};
use crate::domain::net::{usable_ports, NetFacts, SystemFacts};

/// The load to check for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub connections: u64,
    pub per_destination: Option<u64>,
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
    let need = n + others;
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
            Some(format!("{}/{}", thousands(used + n), thousands(max))),
            format!(
                "the system-wide file table has {} of {} handles free; {} connections take {}",
                thousands(free),
                thousands(max),
                thousands(n),
                thousands(n)
            ),
            (level != Level::Ok)
                .then(|| format!("sysctl -w fs.file-max={} (persist it in /etc/sysctl.d)", (used + n) * 2))
                .as_deref(),
        ));
    }
    if let (Some(m), Some(range)) = (t.per_destination, net.port_range) {
        let usable = usable_ports(range, &net.reserved);
        let level = if usable >= m { Level::Ok } else { Level::Fail };
        let reuse = net.tcp_tw_reuse.unwrap_or(0);
        // 1 covers every destination; 2 (the default) loopback ones only.
        let (level, churn) = if level == Level::Ok && reuse != 1 {
            (
                Level::Warn,
                format!(
                    "; with tcp_tw_reuse={reuse}{} every connection closed holds its port 60 s in TIME_WAIT: the {} \
                     ports left beside the {} connections allow about {} new connections a second",
                    if reuse == 2 { " (loopback destinations only)" } else { "" },
                    thousands(usable - m),
                    thousands(m),
                    (usable - m) / 60
                ),
            )
        } else {
            (level, String::new())
        };
        items.push(item(
            "target_ports",
            level,
            json!({"range": format!("{}-{}", range.0, range.1), "usable": usable, "needed": m, "tcp_tw_reuse": reuse}),
            Some(format!("{}/{}", thousands(m), thousands(usable))),
            format!(
                "{} concurrent connections toward one destination (address and port) from one source address need \
                 {} ephemeral ports; ip_local_port_range {}-{} has {} usable{churn}",
                thousands(m),
                thousands(m),
                range.0,
                range.1,
                thousands(usable)
            ),
            match level {
                Level::Fail => Some(format!(
                    "widen net.ipv4.ip_local_port_range (e.g. sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\": {} ports), \
                     or spread the connections over more destination addresses/ports or source addresses",
                    thousands(65535 - 1024 + 1)
                )),
                Level::Warn => Some("sysctl -w net.ipv4.tcp_tw_reuse=1 (persist it in /etc/sysctl.d)".into()),
                Level::Ok => None,
            }
            .as_deref(),
        ));
    }
    if let Some((count, max)) = net.conntrack.as_ref().and_then(|c| Some((c.count?, c.max?))).or(sys.conntrack) {
        let level = if max.saturating_sub(count) >= n { Level::Ok } else { Level::Fail };
        items.push(item(
            "target_conntrack",
            level,
            json!({"count": count, "max": max, "needed": n}),
            Some(format!("{}/{}", thousands(count + n), thousands(max))),
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
                        (count + n) * 2
                    )
                })
                .as_deref(),
        ));
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(soft: u64, open: u64) -> ProcFds {
        ProcFds { pid: 1904, comm: "python3".into(), open, soft: Some(soft), hard: Some(soft) }
    }

    fn find<'a>(items: &'a [Item], id: &str) -> &'a Item {
        items.iter().find(|i| i.id == id).unwrap_or_else(|| panic!("no {id}: {items:#?}"))
    }

    #[test]
    fn ten_thousand_connections_need_the_fds_and_the_ports() {
        let sys = SystemFacts { file_nr: Some((5_000, 100_000)), nr_open: Some(1_048_576), ..Default::default() };
        let net = NetFacts { port_range: Some((40000, 40099)), tcp_tw_reuse: Some(0), ..Default::default() };
        let t = Target { connections: 10_000, per_destination: Some(10_000) };
        let unit = LimitSource::Systemd { unit: "app.service".into(), limit_nofile: Some("1024".into()) };
        let items = target_items(t, &sys, &net, Some((&proc(1024, 1000), Some(990))), Some(&unit));
        let nofile = find(&items, "target_nofile");
        assert_eq!(nofile.status, Level::Fail);
        assert_eq!(nofile.value["needed"], 10_010, "10,000 connections and the 10 other fds it holds");
        let fix = nofile.fix.as_deref().unwrap();
        assert!(fix.contains("LimitNOFILE=10010") && fix.contains("systemctl edit app.service"), "{fix}");
        assert!(fix.contains("limits.conf does not apply"), "{fix}");
        let ports = find(&items, "target_ports");
        assert_eq!((ports.status, ports.value["usable"].as_u64()), (Level::Fail, Some(100)));
        assert!(ports.fix.as_deref().unwrap().contains("ip_local_port_range"));
        assert_eq!(find(&items, "target_nr_open").status, Level::Ok);
        assert_eq!(find(&items, "target_file_max").status, Level::Ok);

        // Tuned: all pass, but tcp_tw_reuse=0 still warns for the churn.
        let net = NetFacts { port_range: Some((1024, 65535)), tcp_tw_reuse: Some(1), ..Default::default() };
        let items = target_items(t, &sys, &net, Some((&proc(65_536, 10), Some(0))), Some(&LimitSource::Inherited));
        assert!(items.iter().all(|i| i.status == Level::Ok), "{items:#?}");
        let net = NetFacts { port_range: Some((1024, 65535)), tcp_tw_reuse: Some(0), ..Default::default() };
        let items = target_items(t, &sys, &net, None, None);
        assert_eq!(find(&items, "target_ports").status, Level::Warn);
    }

    #[test]
    fn a_limit_above_nr_open_and_a_full_file_table_fail() {
        let sys = SystemFacts { file_nr: Some((95_000, 100_000)), nr_open: Some(65_536), ..Default::default() };
        let t = Target { connections: 100_000, per_destination: None };
        let items = target_items(t, &sys, &NetFacts::default(), Some((&proc(1_048_576, 3), Some(0))), None);
        assert_eq!(find(&items, "target_nr_open").status, Level::Fail);
        assert_eq!(find(&items, "target_file_max").status, Level::Fail);
        let fix = find(&items, "target_nofile").fix.clone();
        assert_eq!(fix, None, "its own limit is high enough: {fix:?}");
    }
}
