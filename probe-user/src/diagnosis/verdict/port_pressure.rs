//! The warning that a destination's ports run out: sockets toward one destination (address
//! and port) from one namespace, every state, growing toward the usable ephemeral range — a
//! connection pool or a leak ramping up, TIME_WAITs piling up. connect() then fails with
//! EADDRNOTAVAIL (`__inet_hash_connect` finds no free port for that 4-tuple).

use super::*;

/// The warning for `r`, charged to `pid` (who holds those sockets), with the trend `f`.
pub fn port_pressure(pid: u32, comm: String, since: SystemTime, r: &PortReading, f: &FdForecast) -> Verdict {
    let states = r.states.iter().map(|(s, n)| format!("{} {s}", thousands(*n))).collect::<Vec<_>>().join(", ");
    let proof = PortPressureProof {
        in_use: f.open,
        range: format!("{}-{}", r.range.0, r.range.1),
        usable: f.limit,
        states: r.states.clone(),
        rate_per_s: (f.rate_per_s * 10.0).round() / 10.0,
        seconds_left: f.seconds_left.round() as u64,
        netns: r.dest.netns,
    };
    let mut v = base(Cause::PortPressure, pid, comm.clone(), since, 0, Proof::PortPressure(proof));
    v.state = VerdictState::Warning;
    v.destination = Some(r.dest.clone());
    let dest = r.dest.endpoint();
    v.set_summary(
        format!(
            "{comm}[{pid}]'s connections toward {dest} are using up the ephemeral ports: {} of {} usable in use \
             ({states}), {:.0} more a second; none left {}, then connect() to {dest} fails with \
             EADDRNOTAVAIL (at most {} concurrent connections to it from one source address)",
            thousands(f.open),
            thousands(f.limit),
            f.rate_per_s,
            in_about(f.seconds_left),
            thousands(f.limit),
        ),
        String::new(),
    );
    v.fix.push(format!(
        "bound the connections to {dest}: a pool with a maximum size, keepalive instead of a connection per request \
         (a steady ramp that never levels off is a leak: sockets opened and not closed)"
    ));
    v.fix.push(format!(
        "widen net.ipv4.ip_local_port_range (now {}-{}, {} usable): sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"",
        r.range.0,
        r.range.1,
        thousands(r.usable)
    ));
    v.fix.push(format!(
        "the limit is per source address: more source addresses (or destination addresses/ports) toward {dest} each \
         get the whole range"
    ));
    v
}

/// Why a port warning ended, as a sentence.
pub fn port_calm_reason(comm: &str, pid: u32, dest: &str, calm: &FdCalm, failing: bool) -> String {
    if failing {
        return format!("the ports toward {dest} ran out: connect() failures began (see the ephemeral_ports verdict)");
    }
    match calm {
        FdCalm::Steady { open, limit } => format!(
            "{comm}[{pid}]'s ports in use toward {dest} stopped growing, at {} of {}",
            thousands(*open),
            thousands(*limit)
        ),
        FdCalm::Raised { from, to } => {
            format!(
                "the usable ephemeral ports went from {} to {} (the range was changed)",
                thousands(*from),
                thousands(*to)
            )
        }
        FdCalm::Reached { limit } => {
            format!("every one of the {} usable ports toward {dest} is in use", thousands(*limit))
        }
        FdCalm::Gone => format!("no socket toward {dest} is left to read (or its namespace is gone)"),
    }
}

/// The warning for a process that binds before connect() (every bind() to port 0 takes a port
/// of the range for itself, whatever the destination: `inet_csk_get_port` cannot share it)
/// while the namespace's ports in use grow toward the usable range: bind() then fails with
/// EADDRINUSE long before any one destination runs out.
pub fn bind_pressure(pid: u32, comm: String, since: SystemTime, netns: u32, bound: u64, f: &FdForecast) -> Verdict {
    let proof = TablePressureProof {
        value: f.open,
        limit: f.limit,
        unit: "ports",
        rate_per_s: (f.rate_per_s * 10.0).round() / 10.0,
        seconds_left: f.seconds_left.round() as u64,
        netns: Some(netns),
    };
    let mut v = base(Cause::BindPressure, pid, comm.clone(), since, 0, Proof::TablePressure(proof));
    v.state = VerdictState::Warning;
    v.set_summary(
        format!(
            "{comm}[{pid}] binds before connect() ({} such connects so far): each takes a port of the range for itself, \
             whatever the destination, and {} of the {} usable ports of its namespace are in use, {:.0} more a second; \
             none left {}, then bind() fails with EADDRINUSE (at most {} connections in all, however many \
             destinations)",
            thousands(bound),
            thousands(f.open),
            thousands(f.limit),
            f.rate_per_s,
            in_about(f.seconds_left),
            thousands(f.limit)
        ),
        String::new(),
    );
    v.fix.push(
        "set IP_BIND_ADDRESS_NO_PORT on the socket before bind() (the port is then chosen at connect(), per \
         destination), or do not bind() outbound sockets at all"
            .into(),
    );
    v.fix.push("widen net.ipv4.ip_local_port_range: sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into());
    v
}
