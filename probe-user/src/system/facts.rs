//! What the kernel says about connection limits, read from /proc and sock_diag. Parsing is
//! split from reading so the rules (verdict, check) can be tested on fixtures.

use std::{collections::BTreeMap, fs};

use crate::{
    domain::net::{NetFacts, SystemFacts, TcpMem},
    system::{netdiag, sysctl_conf},
};

pub use crate::domain::net::{reserved_strings, usable_ports, Conntrack};

/// /proc/net/stat/nf_conntrack: a header of names, then one line of hex values per CPU;
/// returns the per-name sums (`entries` is a global gauge repeated on every line: kept once).
pub fn parse_ct_stat(s: &str) -> BTreeMap<String, u64> {
    let mut lines = s.lines();
    let Some(header) = lines.next() else { return BTreeMap::new() };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        for (name, v) in names.iter().zip(line.split_whitespace()) {
            let Ok(v) = u64::from_str_radix(v, 16) else { continue };
            if *name == "entries" {
                sums.insert((*name).to_string(), v);
            } else {
                *sums.entry((*name).to_string()).or_default() += v;
            }
        }
    }
    sums
}

pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// "1000-1010,2000" → [(1000, 1010), (2000, 2000)].
pub fn parse_reserved(s: &str) -> Vec<(u16, u16)> {
    s.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| match p.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => p.trim().parse().ok().map(|v| (v, v)),
        })
        .collect()
}

/// fs.file-nr: "allocated  unused  max".
pub fn parse_file_nr(s: &str) -> Option<(u64, u64)> {
    let v: Vec<u64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.len() == 3).then(|| (v[0], v[2]))
}

/// One section of /proc/net/netstat (a header line of names, then a line of values, both
/// prefixed "TcpExt:") as name → value.
pub fn parse_netstat(s: &str, section: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{section}:");
    let mut lines = s.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return BTreeMap::new();
    };
    let names = names[prefix.len()..].split_whitespace();
    let values = values[prefix.len()..].split_whitespace().map(|v| v.parse::<u64>().ok());
    names.zip(values).filter_map(|(n, v)| Some((n.to_string(), v?))).collect()
}

/// The `TCP:` line of /proc/net/sockstat as name → value.
pub fn parse_sockstat(s: &str) -> BTreeMap<String, u64> {
    let Some(line) = s.lines().find(|l| l.starts_with("TCP:")) else {
        return BTreeMap::new();
    };
    let words: Vec<&str> = line["TCP:".len()..].split_whitespace().collect();
    words.chunks(2).filter_map(|c| Some((c[0].to_string(), c.get(1)?.parse().ok()?))).collect()
}

pub fn parse_triple(s: &str) -> Option<(u64, u64, u64)> {
    let v: Vec<u64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.len() == 3).then(|| (v[0], v[1], v[2]))
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn read_u64(path: &str) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// TcpExt counters of the calling thread's network namespace (/proc/net is the main
/// thread's namespace; this thread may have entered another).
pub fn read_tcp_ext() -> BTreeMap<String, u64> {
    read("/proc/thread-self/net/netstat").map(|s| parse_netstat(&s, "TcpExt")).unwrap_or_default()
}

/// Reads the facts of the calling thread's network namespace (see `netdiag::in_netns_of`).
pub fn read_net() -> NetFacts {
    let port_range = read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|s| parse_port_range(&s));
    NetFacts {
        port_range,
        reserved: read("/proc/sys/net/ipv4/ip_local_reserved_ports").map(|s| parse_reserved(&s)).unwrap_or_default(),
        tcp_tw_reuse: read_u64("/proc/sys/net/ipv4/tcp_tw_reuse").map(|v| v as u32),
        tcp_max_tw_buckets: read_u64("/proc/sys/net/ipv4/tcp_max_tw_buckets"),
        somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
        tcp_syncookies: read_u64("/proc/sys/net/ipv4/tcp_syncookies").map(|v| v as u32),
        tcp_fin_timeout: read_u64("/proc/sys/net/ipv4/tcp_fin_timeout"),
        sockets: port_sockets(port_range),
        time_wait: read("/proc/thread-self/net/sockstat").and_then(|s| parse_sockstat(&s).get("tw").copied()),
        tcp_ext: read_tcp_ext(),
        conntrack: read("/proc/thread-self/net/stat/nf_conntrack").map(|st| Conntrack {
            count: read_u64("/proc/sys/net/netfilter/nf_conntrack_count"),
            max: read_u64("/proc/sys/net/netfilter/nf_conntrack_max"),
            stats: parse_ct_stat(&st),
        }),
        // thread-self: this thread may have entered another namespace than the process's.
        netns: netdiag::ns_link_inode("/proc/thread-self/ns/net"),
    }
}

/// The listeners, and the sockets that hold an ephemeral port (see `NetFacts::sockets`).
/// Without a known range, every socket.
fn port_sockets(range: Option<(u16, u16)>) -> Vec<crate::domain::net::TcpSocket> {
    let Some(range) = range else { return netdiag::tcp_sockets().unwrap_or_default() };
    let mut all = netdiag::listeners().unwrap_or_default();
    let ports: Vec<u16> = all.iter().map(|l| l.sport).collect();
    all.extend(netdiag::ephemeral_sockets(range, &ports).unwrap_or_default());
    all
}

/// The calling thread's namespace's TIME_WAIT table: (sockets in it, net.ipv4.tcp_max_tw_buckets).
pub fn read_tw_table() -> Option<(u64, u64)> {
    let tw = read("/proc/thread-self/net/sockstat").and_then(|s| parse_sockstat(&s).get("tw").copied())?;
    Some((tw, read_u64("/proc/sys/net/ipv4/tcp_max_tw_buckets")?))
}

/// Ports in use toward the busiest destinations of the calling thread's namespace, and the
/// distinct ports of the range in use there with the usable count (what bind() to port 0
/// chooses from), when its sockets could hold enough of the range to matter (see
/// `port_walk_due`); None: not walked.
pub fn read_port_use() -> Option<(Vec<crate::domain::net::PortReading>, (u64, u64))> {
    use crate::domain::net::{port_readings, port_walk_due, usable_ports, EphemeralUse, TIME_WAIT};
    let limits = read_port_limits();
    let range = limits.port_range?;
    let stat = parse_sockstat(&read("/proc/thread-self/net/sockstat")?);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    if !port_walk_due(get("inuse"), get("tw"), usable_ports(range, &limits.reserved)) {
        return None;
    }
    let net = NetFacts { sockets: port_sockets(Some(range)), ..limits };
    let u = EphemeralUse::of(&net)?;
    let mut inodes = BTreeMap::new();
    for s in net.sockets.iter().filter(|s| s.state != TIME_WAIT && s.inode != 0) {
        inodes.entry((s.dst, s.dport)).or_insert(s.inode);
    }
    let taken = u.distinct_ports(&net);
    Some((port_readings(&u, net.netns.unwrap_or(0), &inodes), (taken, u.usable)))
}

/// The calling thread's namespace's conntrack table: (entries, net.netfilter.nf_conntrack_max);
/// None without conntrack (the module not loaded). The count is per namespace, the limit the
/// one global value each namespace's count is held to (`__nf_conntrack_alloc`).
pub fn read_conntrack_count() -> Option<(u64, u64)> {
    Some((
        read_u64("/proc/sys/net/netfilter/nf_conntrack_count")?,
        read_u64("/proc/sys/net/netfilter/nf_conntrack_max")?,
    ))
}

/// Machine-wide TCP memory now: (pages in use, tcp_mem's pressure threshold, page size).
pub fn read_tcp_mem_use() -> Option<(u64, u64, u64)> {
    let mem = read_tcp_mem();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some((mem.sockstat.get("mem").copied()?, mem.limits?.1, u64::try_from(page).ok().filter(|p| *p > 0)?))
}

/// The namespace's port sysctls alone: what `read_net` reads without walking every TCP socket
/// (a sock_diag dump walks the host's whole established hash, TIME_WAITs included).
pub fn read_port_limits() -> NetFacts {
    NetFacts {
        port_range: read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|s| parse_port_range(&s)),
        reserved: read("/proc/sys/net/ipv4/ip_local_reserved_ports").map(|s| parse_reserved(&s)).unwrap_or_default(),
        tcp_tw_reuse: read_u64("/proc/sys/net/ipv4/tcp_tw_reuse").map(|v| v as u32),
        netns: netdiag::ns_link_inode("/proc/thread-self/ns/net"),
        ..Default::default()
    }
}

/// The namespace's port and table sysctls, no sockets (for a recording's header).
pub fn read_port_limits_and_tables() -> NetFacts {
    NetFacts {
        tcp_max_tw_buckets: read_u64("/proc/sys/net/ipv4/tcp_max_tw_buckets"),
        somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
        ..read_port_limits()
    }
}

/// Namespace facts as seen from inside the namespace of `pid` (None: conntrace's own).
pub fn read_net_of(pid: Option<u32>) -> anyhow::Result<NetFacts> {
    let mut f = netdiag::in_netns_of(pid, read_net)?;
    f.sockets.sort_unstable_by_key(|s| (s.dst, s.dport, s.sport));
    Ok(f)
}

/// Machine-wide TCP memory, without the rest of `read_system`.
pub fn read_tcp_mem() -> TcpMem {
    TcpMem {
        limits: read("/proc/sys/net/ipv4/tcp_mem").and_then(|s| parse_triple(&s)),
        sockstat: read("/proc/net/sockstat").map(|s| parse_sockstat(&s)).unwrap_or_default(),
    }
}

/// Bytes per page, the unit of net.ipv4.tcp_mem and of sockstat's `mem`.
pub fn page_size() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

pub fn read_system() -> SystemFacts {
    let TcpMem { limits: tcp_mem, sockstat } = read_tcp_mem();
    SystemFacts {
        file_nr: read("/proc/sys/fs/file-nr").and_then(|s| parse_file_nr(&s)),
        nr_open: read_u64("/proc/sys/fs/nr_open"),
        conntrack: read_u64("/proc/sys/net/netfilter/nf_conntrack_count")
            .zip(read_u64("/proc/sys/net/netfilter/nf_conntrack_max")),
        tcp_mem,
        sockstat,
        tw_recycle_lines: sysctl_conf::lines_setting(std::path::Path::new("/"), "net.ipv4.tcp_tw_recycle"),
        // uname(2)'s release: the same string.
        kernel_release: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
        page_size: page_size(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_stats_are_summed_over_cpus() {
        let s = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
                 00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 0000000a 00000000\n\
                 00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000002\n";
        let c = parse_ct_stat(s);
        assert_eq!((c["entries"], c["drop"], c["insert_failed"], c["early_drop"]), (16, 16, 1, 2));
    }

    #[test]
    fn netstat_sections_pair_names_with_values() {
        let s = "TcpExt: SyncookiesSent ListenOverflows TCPTimeWaitOverflow\nTcpExt: 0 28 20\n\
                 IpExt: InNoRoutes\nIpExt: 3\n";
        let t = parse_netstat(s, "TcpExt");
        assert_eq!(t["ListenOverflows"], 28);
        assert_eq!(t["TCPTimeWaitOverflow"], 20);
        assert!(!t.contains_key("InNoRoutes"));
        assert!(parse_netstat("", "TcpExt").is_empty());
    }

    #[test]
    fn parses_sysctl_formats() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(parse_reserved("1000-1010,2000\n"), vec![(1000, 1010), (2000, 2000)]);
        assert_eq!(parse_reserved("\n"), vec![]);
        assert_eq!(parse_file_nr("1952\t0\t9223372036854775807\n"), Some((1952, 9223372036854775807)));
        assert_eq!(parse_triple("88413\t117884\t176826\n"), Some((88413, 117884, 176826)));
        let ss = parse_sockstat("sockets: used 200\nTCP: inuse 5 orphan 1 tw 30 alloc 7 mem 2\nUDP: inuse 1\n");
        assert_eq!(ss["tw"], 30);
        assert_eq!(ss["mem"], 2);
    }

    #[test]
    fn usable_ports_subtracts_reserved_inside_the_range() {
        assert_eq!(usable_ports((32768, 60999), &[]), 28232);
        assert_eq!(usable_ports((40000, 40049), &[(40010, 40019), (1, 100)]), 40);
        assert_eq!(usable_ports((40000, 40003), &[(39990, 40001)]), 2);
    }
}
