//! Sockets, destinations and the limits of a network namespace or of the machine: what the
//! readers in `system` fill in and the rules in `diagnosis` judge. Plain data, no I/O.

use std::{collections::BTreeMap, net::IpAddr};

pub use probe_common::sock::TcpState;

/// `TcpSocket::state` values conntrace compares against (sock_diag reports a `u8`).
pub const ESTABLISHED: u8 = TcpState::Established as u8;
pub const SYN_RECV: u8 = TcpState::SynRecv as u8;
pub const TIME_WAIT: u8 = TcpState::TimeWait as u8;
pub const LISTEN: u8 = TcpState::Listen as u8;
pub const NEW_SYN_RECV: u8 = TcpState::NewSynRecv as u8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub state: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// LISTEN: current accept-queue length; others: bytes not yet read.
    pub rqueue: u32,
    /// LISTEN: the backlog in force; others: bytes not yet acknowledged.
    pub wqueue: u32,
    pub inode: u32,
    /// `sk_drops` (INET_DIAG_SKMEMINFO): for a listener, every SYN or final ACK it dropped
    /// (tcp_listendrop: accept queue full, SYN queue full without cookies, ...).
    pub drops: Option<u32>,
}

pub fn state_name(state: u8) -> &'static str {
    TcpState::from_u8(state).map(TcpState::name).unwrap_or("UNKNOWN")
}

/// Limits and sockets of one network namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetFacts {
    /// net.ipv4.ip_local_port_range (also governs IPv6).
    pub port_range: Option<(u16, u16)>,
    /// net.ipv4.ip_local_reserved_ports, as ranges.
    pub reserved: Vec<(u16, u16)>,
    pub tcp_tw_reuse: Option<u32>,
    pub tcp_max_tw_buckets: Option<u64>,
    pub somaxconn: Option<u64>,
    /// net.ipv4.tcp_syncookies: 0 off, 1 when the SYN queue overflows, 2 always.
    pub tcp_syncookies: Option<u32>,
    pub tcp_fin_timeout: Option<u64>,
    /// The listeners, and the sockets holding an ephemeral port (local port in the range,
    /// not a listener's): what port exhaustion and `check` count. A server's accepted
    /// sockets are left out by the kernel (a sock_diag filter), so reading this stays cheap
    /// with many inbound connections.
    pub sockets: Vec<TcpSocket>,
    /// TIME_WAIT sockets of the namespace (/proc/net/sockstat `tw`: the count the kernel
    /// compares with tcp_max_tw_buckets, FIN_WAIT2 sockets already in the table included).
    pub time_wait: Option<u64>,
    /// The namespace's TcpExt counters (/proc/net/netstat), e.g. TCPTimeWaitOverflow.
    pub tcp_ext: BTreeMap<String, u64>,
    /// Connection tracking in this namespace, when nf_conntrack is loaded: entries now
    /// (nf_conntrack_count), the limit (nf_conntrack_max, machine-wide) and the summed per-CPU
    /// statistics of /proc/net/stat/nf_conntrack (`drop`, `early_drop`, `insert_failed`, …).
    pub conntrack: Option<Conntrack>,
    /// Inode of the namespace the facts were read in.
    pub netns: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conntrack {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub stats: BTreeMap<String, u64>,
}

/// Machine-wide limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemFacts {
    /// fs.file-nr: allocated file handles and fs.file-max.
    pub file_nr: Option<(u64, u64)>,
    pub nr_open: Option<u64>,
    pub conntrack: Option<(u64, u64)>,
    /// net.ipv4.tcp_mem (low, pressure, high), pages.
    pub tcp_mem: Option<(u64, u64, u64)>,
    /// /proc/net/sockstat TCP line: inuse, orphan, tw, alloc, mem (pages).
    pub sockstat: BTreeMap<String, u64>,
    /// Lines of the sysctl configuration files that set net.ipv4.tcp_tw_recycle (removed in
    /// Linux 4.12).
    pub tw_recycle_lines: Vec<SysctlLine>,
    /// The kernel release (uname -r), e.g. "6.1.0-18-amd64".
    pub kernel_release: Option<String>,
    /// Bytes per page (sysconf(_SC_PAGESIZE)): the unit of tcp_mem and sockstat `mem`.
    pub page_size: Option<u64>,
}

/// One line of a sysctl configuration file that sets a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlLine {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// The value it sets, as written.
    pub value: String,
}

/// (major, minor) of a kernel release: "6.1.0-18-amd64" → (6, 1), "4.12" → (4, 12).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((major, minor.parse().ok()?))
}

/// Machine-wide TCP memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpMem {
    /// net.ipv4.tcp_mem: (low, pressure, high), in pages.
    pub limits: Option<(u64, u64, u64)>,
    /// The TCP line of /proc/net/sockstat (`mem` = pages in use, `orphan`, `tw`, …).
    pub sockstat: BTreeMap<String, u64>,
}

/// Reserved port ranges as sysctl writes them: "1000-1010", "2000".
pub fn reserved_strings(reserved: &[(u16, u16)]) -> Vec<String> {
    reserved.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect()
}

/// Ports of the range usable by connect(): range size minus reserved ports inside it.
pub fn usable_ports(range: (u16, u16), reserved: &[(u16, u16)]) -> u64 {
    let (lo, hi) = range;
    let size = (hi as u64).saturating_sub(lo as u64) + 1;
    let taken: u64 = reserved
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (a.max(lo) as u64, b.min(hi) as u64);
            if b >= a {
                b - a + 1
            } else {
                0
            }
        })
        .sum();
    size.saturating_sub(taken)
}

/// A destination in a network namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dest {
    pub netns: u32,
    pub addr: IpAddr,
    pub port: u16,
}

impl Dest {
    pub fn endpoint(&self) -> String {
        endpoint(&self.addr.to_string(), self.port)
    }
}

/// "ip:port", with brackets for IPv6.
pub fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Ports held toward one destination of a namespace, read by the periodic poll (see
/// [`port_walk_due`]), for the warning that ports run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortReading {
    pub dest: Dest,
    /// Sockets holding an ephemeral port toward it, every state.
    pub in_use: u64,
    /// Ports of the range connect() may use.
    pub usable: u64,
    pub range: (u16, u16),
    pub states: StateCounts,
    /// A socket toward it that has an inode (not TIME_WAIT): who holds it can be looked up.
    pub inode: Option<u32>,
}

/// Whether a namespace's sockets are worth walking for ports in use: a destination can hold at
/// most every TCP socket of the namespace (sockstat `inuse`, connected and listening, plus
/// `tw`), so below a quarter of the usable range none is near it, and the walk (every
/// socket of the host's established hash) is skipped.
pub fn port_walk_due(inuse: u64, time_wait: u64, usable: u64) -> bool {
    usable > 0 && (inuse + time_wait) * 4 >= usable
}

/// The destinations of `u` holding at least a tenth of the usable range: those a warning may
/// be about (with `inodes`, a socket inode per destination, for its owner).
pub fn port_readings(u: &EphemeralUse, netns: u32, inodes: &BTreeMap<(IpAddr, u16), u32>) -> Vec<PortReading> {
    u.by_dest
        .iter()
        .filter_map(|(&(addr, port), states)| {
            let in_use: u64 = states.values().sum();
            (in_use * 10 >= u.usable).then(|| PortReading {
                dest: Dest { netns, addr, port },
                in_use,
                usable: u.usable,
                range: u.range,
                states: states.clone(),
                inode: inodes.get(&(addr, port)).copied(),
            })
        })
        .collect()
}

/// A process's RLIMIT_NOFILE and open file descriptors (None: not readable, or unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nofile {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
    pub open: Option<u64>,
}

/// Sockets by TCP state name.
pub type StateCounts = BTreeMap<&'static str, u64>;

/// Sockets of a namespace whose local port lies in its ephemeral range: the one count that
/// port exhaustion (per destination), bind-before-connect hoarding (the whole range) and
/// `check` all read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralUse {
    /// net.ipv4.ip_local_port_range.
    pub range: (u16, u16),
    /// Ports of the range connect() may use (the range less ip_local_reserved_ports).
    pub usable: u64,
    /// Connected sockets by (destination address, destination port), then state name.
    pub by_dest: BTreeMap<(IpAddr, u16), StateCounts>,
    /// Listeners on a port of the range (a listen() on port 0 takes one).
    pub listeners: u64,
}

impl EphemeralUse {
    /// None when the namespace's port range is unknown.
    pub fn of(net: &NetFacts) -> Option<EphemeralUse> {
        let range = net.port_range?;
        let mut u =
            EphemeralUse { range, usable: usable_ports(range, &net.reserved), by_dest: BTreeMap::new(), listeners: 0 };
        // An accepted socket has its listener's local port: it holds no ephemeral port (and
        // connect() never picks a port a listener is bound to).
        let listening: std::collections::BTreeSet<u16> =
            net.sockets.iter().filter(|s| s.state == LISTEN).map(|s| s.sport).collect();
        for s in net.sockets.iter().filter(|s| s.sport >= range.0 && s.sport <= range.1) {
            if s.state != LISTEN && listening.contains(&s.sport) {
                continue;
            }
            if s.state == LISTEN {
                u.listeners += 1;
            } else {
                *u.by_dest.entry((s.dst, s.dport)).or_default().entry(state_name(s.state)).or_default() += 1;
            }
        }
        Some(u)
    }

    /// Sockets toward one destination, by state name.
    pub fn toward(&self, addr: IpAddr, port: u16) -> BTreeMap<&'static str, u64> {
        self.by_dest.get(&(addr, port)).cloned().unwrap_or_default()
    }

    /// Every socket holding a port of the range, by state name (listeners as LISTEN).
    pub fn by_state(&self) -> BTreeMap<&'static str, u64> {
        let mut all: BTreeMap<&'static str, u64> = BTreeMap::new();
        for states in self.by_dest.values() {
            for (s, n) in states {
                *all.entry(s).or_default() += n;
            }
        }
        if self.listeners > 0 {
            *all.entry(TcpState::Listen.name()).or_default() += self.listeners;
        }
        all
    }

    /// Distinct ports of the range held by `net`'s sockets (listeners too; an accepted
    /// socket shares its listener's): what bind() to port 0 must avoid, whatever the
    /// destination (`inet_csk_find_open_port`).
    pub fn distinct_ports(&self, net: &NetFacts) -> u64 {
        let ports: std::collections::BTreeSet<u16> =
            net.sockets.iter().map(|s| s.sport).filter(|p| *p >= self.range.0 && *p <= self.range.1).collect();
        ports.len() as u64
    }

    /// The `n` destinations holding the most ports, busiest first.
    pub fn busiest(&self, n: usize) -> Vec<((IpAddr, u16), StateCounts)> {
        let mut v: Vec<_> = self.by_dest.iter().map(|(d, s)| (*d, s.clone())).collect();
        v.sort_by_key(|(_, states)| std::cmp::Reverse(states.values().sum::<u64>()));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn ports_are_walked_only_when_a_destination_could_hold_a_quarter_of_the_range() {
        assert!(!port_walk_due(6_000, 1_000, 28_232));
        assert!(port_walk_due(6_000, 1_058, 28_232));
        assert!(port_walk_due(25, 0, 100));
        assert!(!port_walk_due(1_000_000, 0, 0), "no usable port: nothing to warn about");
    }

    #[test]
    fn destinations_below_a_tenth_of_the_range_are_not_read() {
        let sock = |dst: [u8; 4], sport, state| TcpSocket {
            state,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport,
            dst: IpAddr::V4(Ipv4Addr::from(dst)),
            dport: 6379,
            rqueue: 0,
            wqueue: 0,
            inode: if state == TIME_WAIT { 0 } else { u32::from(sport) },
            drops: None,
        };
        let mut sockets: Vec<TcpSocket> = (0..10).map(|i| sock([10, 0, 0, 5], 40_000 + i, TIME_WAIT)).collect();
        sockets.push(sock([10, 0, 0, 5], 40_050, TcpState::Established as u8));
        sockets.push(sock([10, 0, 0, 6], 40_060, TcpState::Established as u8));
        let net = NetFacts { port_range: Some((40_000, 40_099)), sockets, ..Default::default() };
        let u = EphemeralUse::of(&net).expect("a range");
        let inodes = [((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 6379), 40_050)].into();
        let r = port_readings(&u, 7, &inodes);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].dest.netns, r[0].in_use, r[0].usable, r[0].inode), (7, 11, 100, Some(40_050)));
        assert_eq!(r[0].states.get("TIME_WAIT"), Some(&10));
    }

    #[test]
    fn kernel_versions_from_releases() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("4.12"), Some((4, 12)));
        assert_eq!(kernel_version("4.9.337\n"), Some((4, 9)));
        assert_eq!(kernel_version("5.15rc1"), Some((5, 15)));
        assert_eq!(kernel_version("6"), None);
        assert_eq!(kernel_version("x.y"), None);
        assert_eq!(kernel_version(""), None);
        assert!((4, 9) < (4, 12) && (5, 0) > (4, 12), "compared as numbers, not strings");
    }
}
