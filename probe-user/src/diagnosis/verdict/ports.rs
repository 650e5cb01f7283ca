//! Ephemeral ports: port searches that failed, ports hoarded by bind-before-connect, and
//! source addresses that are not configured (EADDRNOTAVAIL that is not exhaustion).

use std::{collections::BTreeMap, time::SystemTime};

use super::*;
use crate::{
    diagnosis::check::tw_reuse_applies,
    domain::net::{reserved_strings, EphemeralUse, TcpState},
};

/// Ports toward `dest` by state (local port in the ephemeral range).
pub(super) struct PortUse {
    pub(super) range: (u16, u16),
    pub(super) usable: u64,
    pub(super) established: u64,
    pub(super) time_wait: u64,
    pub(super) other: u64,
    /// FIN_WAIT1/FIN_WAIT2/CLOSING: this side closed first, TIME_WAIT follows.
    pub(super) closing: u64,
    pub(super) states: BTreeMap<&'static str, u64>,
}

impl PortUse {
    pub(super) fn of(net: &NetFacts, dest: &Dest) -> Option<PortUse> {
        let all = EphemeralUse::of(net)?;
        let states = all.toward(dest.addr, dest.port);
        let get = |s: TcpState| states.get(s.name()).copied().unwrap_or(0);
        let established = get(TcpState::Established);
        let time_wait = get(TcpState::TimeWait);
        let total: u64 = states.values().sum();
        Some(PortUse {
            range: all.range,
            usable: all.usable,
            established,
            time_wait,
            other: total - established - time_wait,
            closing: get(TcpState::FinWait1) + get(TcpState::FinWait2) + get(TcpState::Closing),
            states,
        })
    }

    pub(super) fn in_use(&self) -> u64 {
        self.established + self.time_wait + self.other
    }

    /// "2 ESTABLISHED, 48 TIME_WAIT" plus any other state present.
    pub(super) fn states_text(&self) -> String {
        let mut parts = vec![
            format!("{} ESTABLISHED", thousands(self.established)),
            format!("{} TIME_WAIT", thousands(self.time_wait)),
        ];
        for (name, n) in &self.states {
            if *name != "ESTABLISHED" && *name != "TIME_WAIT" {
                parts.push(format!("{} {name}", thousands(*n)));
            }
        }
        parts.join(", ")
    }

    pub(super) fn proof(&self, net: &NetFacts, dest: &Dest) -> PortProof {
        PortProof {
            range: format!("{}-{}", self.range.0, self.range.1),
            range_size: self.range.1 as u64 - self.range.0 as u64 + 1,
            reserved: reserved_strings(&net.reserved),
            usable: self.usable,
            established: self.established,
            time_wait: self.time_wait,
            other: self.other,
            states: self.states.clone(),
            tcp_tw_reuse: net.tcp_tw_reuse,
            tcp_tw_reuse_applies: tw_reuse_applies(net.tcp_tw_reuse, dest.addr),
            netns: dest.netns,
        }
    }
}

pub(super) fn port_fixes(u: &PortUse, net: &NetFacts, dest: &Dest) -> Vec<String> {
    let d = dest.endpoint();
    let mut fix = vec![format!(
        "keep connections to {d} alive and reuse them (HTTP keepalive, a connection pool) instead of one connection per request"
    )];
    if u.closing > u.time_wait {
        fix.push(format!(
            "most ports are in FIN_WAIT: this side closed first and {d} has not closed its side yet; each then spends 60 s in TIME_WAIT"
        ));
    }
    if (u.time_wait + u.closing) * 2 >= u.in_use() && u.time_wait + u.closing > 0 {
        if tw_reuse_applies(net.tcp_tw_reuse, dest.addr) {
            fix.push(format!(
                "tcp_tw_reuse={} already lets connect() reuse TIME_WAIT ports toward {d}, but only 1 s after their last segment and with TCP timestamps: the connection rate is above what reuse can absorb",
                net.tcp_tw_reuse.unwrap_or(0)
            ));
        } else {
            fix.push(format!(
                "closing connections hold most ports: sysctl -w net.ipv4.tcp_tw_reuse=1 lets outbound connect() reuse them toward {d} (needs TCP timestamps; tcp_tw_recycle is gone since Linux 4.12)"
            ));
        }
    } else if u.established * 2 >= u.in_use() && u.established > 0 {
        fix.push(format!("open connections hold most ports: close idle ones or cap the pool size toward {d}"));
    }
    fix.push(format!("widen net.ipv4.ip_local_port_range (now {}-{}, e.g. 10240 65535)", u.range.0, u.range.1));
    fix.push("add source addresses or spread over more destination addresses/ports: the limit is per (source IP, destination IP, destination port)".into());
    fix
}

pub fn bind_hoarding(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    bound_connects: u64,
    net: Result<NetFacts, String>,
) -> Verdict {
    let usage = net.as_ref().ok().and_then(EphemeralUse::of);
    let taken = usage.as_ref().map(|u| {
        let states = u.by_state();
        RangeTaken {
            range: format!("{}-{}", u.range.0, u.range.1),
            usable: u.usable,
            in_use: states.values().sum(),
            states,
        }
    });
    let range_text = match &taken {
        Some(t) => format!(": {} of {} ports in {} are taken", thousands(t.in_use), thousands(t.usable), t.range),
        None => String::new(),
    };
    let proof = BindHoardingProof { error: net_error(&net), bound_connects, range: taken };
    let mut v = base(Cause::BindHoarding, pid, comm.clone(), since, n, Proof::BindHoarding(proof));
    let bound = if bound_connects > 0 {
        format!(" ({} of its connects this interval used a port bound beforehand)", thousands(bound_connects))
    } else {
        String::new()
    };
    v.set_summary(
        format!(
            "{comm}[{pid}] cannot bind an ephemeral port{range_text}; bind-before-connect makes each port exclusive for every destination{bound}"
        ),
        "{n} binds to port 0 failed with EADDRINUSE".into(),
    );
    v.fix.push(
        "set IP_BIND_ADDRESS_NO_PORT on the socket before bind(): the port is then chosen at connect() and shared across destinations (Linux 4.2+)".into(),
    );
    v.fix.push("or do not bind() before connect() unless a source address must be chosen".into());
    v.fix.push("IP_LOCAL_PORT_RANGE (Linux 6.3+) gives a socket its own port range".into());
    if let Some(EphemeralUse { range, .. }) = usage {
        v.fix.push(format!("widen net.ipv4.ip_local_port_range (now {}-{})", range.0, range.1));
    }
    v
}

pub fn address_unavailable(
    pid: u32,
    comm: String,
    since: SystemTime,
    bind_n: u64,
    connect_n: u64,
    addrs: &std::collections::BTreeSet<String>,
) -> Verdict {
    // Every counted failure sends its event first; no address means the events were
    // suppressed by --events-per-sec or the ring buffer was full.
    let missing = addrs
        .is_empty()
        .then(|| "not captured: their events were rate-limited (--events-per-sec) or dropped".to_string());
    let which = match &missing {
        Some(why) => format!(" (addresses {why})"),
        None => format!(" ({})", addrs.iter().cloned().collect::<Vec<_>>().join(", ")),
    };
    let proof = AddressProof {
        bind_eaddrnotavail: bind_n,
        connect_eaddrnotavail: connect_n,
        addresses: addrs.clone(),
        addresses_missing: missing,
    };
    let mut v =
        base(Cause::AddressUnavailable, pid, comm.clone(), since, bind_n + connect_n, Proof::AddressUnavailable(proof));
    // The split between binds and connects is in the evidence; the tally counts both.
    let what = match (bind_n, connect_n) {
        (_, 0) => "{n} binds",
        (0, _) => "{n} connects",
        _ => "{n} binds and connects",
    };
    v.set_summary(
        format!("{comm}[{pid}] asks for a source address that is not configured here{which}: not port exhaustion"),
        format!("{what} failed with EADDRNOTAVAIL"),
    );
    v.fix.push("check the configured bind/source address against `ip addr` in the process's network namespace".into());
    v.fix.push(
        "if the address comes up later (VIP, DHCP), set IP_FREEBIND on the socket or net.ipv4.ip_nonlocal_bind=1"
            .into(),
    );
    v
}

pub fn ephemeral_ports(
    pid: u32,
    comm: String,
    since: SystemTime,
    n: u64,
    dest: &Dest,
    net: Result<NetFacts, String>,
) -> Verdict {
    let d = dest.endpoint();
    let tally = "{n} connects failed".to_string();
    let usage = net.as_ref().ok().and_then(|f| PortUse::of(f, dest).map(|u| (u, f)));
    let mut v = match usage {
        Some((u, f)) => {
            let mut v = base(Cause::EphemeralPorts, pid, comm.clone(), since, n, Proof::Ports(u.proof(f, dest)));
            v.set_summary(
                format!(
                    "{comm}[{pid}] cannot get an ephemeral port toward {d}: {} of {} ports in {}-{} are in use ({}); \
                     at most {} concurrent connections to {d} from one source address",
                    thousands(u.in_use()),
                    thousands(u.usable),
                    u.range.0,
                    u.range.1,
                    u.states_text(),
                    thousands(u.usable)
                ),
                tally,
            );
            v.fix = port_fixes(&u, f, dest);
            v
        }
        None => {
            let why = net.err().unwrap_or_else(|| "no port range".into());
            let proof = UnreadableNet { netns: dest.netns, error: why.clone() };
            let mut v = base(Cause::EphemeralPorts, pid, comm.clone(), since, n, Proof::PortsUnknown(proof));
            v.set_summary(format!("{comm}[{pid}] cannot get an ephemeral port toward {d} ({why})"), tally);
            v.fix.push(format!("keep connections to {d} alive and reuse them instead of one per request"));
            v.fix.push("widen net.ipv4.ip_local_port_range".into());
            v
        }
    };
    v.destination = Some(dest.clone());
    v
}
