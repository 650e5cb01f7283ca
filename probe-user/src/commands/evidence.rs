//! Evidence for verdicts, read from the [`Host`] once per namespace, process and interval
//! (and taken over from what failure events already read). The verdict rules see it only
//! through `verdict::Evidence`.

use std::collections::BTreeMap;

use crate::{
    commands::{event_facts::EarlyEvidence, host::Host},
    diagnosis::verdict::{Evidence, Nofile, TcpMemFacts, TwTable},
    domain::net::NetFacts,
};

/// The host's facts, cached for one diagnosis.
pub struct Cached<'h> {
    host: &'h mut dyn Host,
    cache: EarlyEvidence,
    /// Port sysctls per namespace, for the namespaces whose full facts were not needed.
    limits: BTreeMap<u32, Result<NetFacts, String>>,
}

impl<'h> Cached<'h> {
    /// Starts with what was read when the interval's failure events arrived.
    pub fn new(host: &'h mut dyn Host, early: EarlyEvidence) -> Cached<'h> {
        Cached { host, cache: early, limits: BTreeMap::new() }
    }

    /// Everything read, so that facts of events not yet counted can wait for their interval.
    pub fn into_cache(self) -> EarlyEvidence {
        self.cache
    }
}

impl Evidence for Cached<'_> {
    fn comm(&mut self, pid: u32) -> String {
        self.host.comm(pid).unwrap_or_else(|| "unknown".into())
    }

    fn nofile(&mut self, pid: u32) -> Nofile {
        *self.cache.nofile.entry(pid).or_insert_with(|| self.host.nofile(pid))
    }

    fn socket_fds(&mut self, pid: u32) -> Option<u64> {
        *self.cache.sockets.entry(pid).or_insert_with(|| self.host.socket_fds(pid))
    }

    fn file_nr(&mut self) -> Option<(u64, u64)> {
        *self.cache.file_nr.get_or_insert_with(|| self.host.file_nr())
    }

    fn net(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String> {
        self.cache.net.entry(netns).or_insert_with(|| self.host.net(pid, netns)).clone()
    }

    fn port_limits(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String> {
        if let Some(full) = self.cache.net.get(&netns) {
            return full.clone();
        }
        self.limits.entry(netns).or_insert_with(|| self.host.port_limits(pid, netns)).clone()
    }

    fn socket_owner(&mut self, inode: u32) -> Option<u32> {
        self.host.socket_owner(inode)
    }

    fn alive(&mut self, pid: u32) -> bool {
        self.host.exists(pid)
    }

    fn netns(&mut self, pid: u32) -> Option<u32> {
        self.host.netns(pid)
    }

    fn tcp_mem(&mut self) -> TcpMemFacts {
        self.host.tcp_mem()
    }

    fn tw_table(&mut self, pid: u32) -> Option<TwTable> {
        self.host.tw_table(pid)
    }
}
