//! Failures grouped by the limit they hit, the cause families of the charts and tables.

use serde::Serialize;
use serde_json::{Map, Value};

/// Failures by cause family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Families {
    /// emfile + enfile.
    pub fds: u64,
    /// max(port_assign_failures, connect_errors.EADDRNOTAVAIL): the same failed port search
    /// is counted by both when both hooks see it, and by only one of them in some modes.
    pub ports: u64,
    pub tw_overflows: u64,
    pub listen_drops: u64,
    /// tcp_mem_send_refused + tcp_mem_recv_refused.
    pub tcp_mem: u64,
    pub netfilter_drops: u64,
    pub bind_failures: u64,
}

/// Reads one family's count.
pub type Get = fn(&Families) -> u64;

/// Each family's name (as serialized) and how to read it, in the order charts and tables list them.
pub const FAMILIES: [(&str, Get); 7] = [
    ("fds", |f| f.fds),
    ("ports", |f| f.ports),
    ("tw_overflows", |f| f.tw_overflows),
    ("listen_drops", |f| f.listen_drops),
    ("tcp_mem", |f| f.tcp_mem),
    ("netfilter_drops", |f| f.netfilter_drops),
    ("bind_failures", |f| f.bind_failures),
];

/// A non-negative integer field; anything else (missing, null, string, negative, fractional)
/// counts as absent.
pub fn count(o: &Map<String, Value>, key: &str) -> u64 {
    o.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Families {
    /// The families of one sample record.
    pub fn of_sample(o: &Map<String, Value>) -> Families {
        let eaddrnotavail = o.get("connect_errors").and_then(|e| e.get("EADDRNOTAVAIL")).and_then(Value::as_u64);
        Families {
            fds: count(o, "emfile").saturating_add(count(o, "enfile")),
            ports: count(o, "port_assign_failures").max(eaddrnotavail.unwrap_or(0)),
            tw_overflows: count(o, "tw_overflows"),
            listen_drops: count(o, "listen_drops"),
            tcp_mem: count(o, "tcp_mem_send_refused").saturating_add(count(o, "tcp_mem_recv_refused")),
            netfilter_drops: count(o, "netfilter_drops"),
            bind_failures: count(o, "bind_failures"),
        }
    }

    pub fn add(&mut self, o: &Families) {
        self.fds = self.fds.saturating_add(o.fds);
        self.ports = self.ports.saturating_add(o.ports);
        self.tw_overflows = self.tw_overflows.saturating_add(o.tw_overflows);
        self.listen_drops = self.listen_drops.saturating_add(o.listen_drops);
        self.tcp_mem = self.tcp_mem.saturating_add(o.tcp_mem);
        self.netfilter_drops = self.netfilter_drops.saturating_add(o.netfilter_drops);
        self.bind_failures = self.bind_failures.saturating_add(o.bind_failures);
    }

    pub fn total(&self) -> u64 {
        FAMILIES.iter().fold(0u64, |sum, (_, get)| sum.saturating_add(get(self)))
    }
}
