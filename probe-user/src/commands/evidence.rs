//! Evidence for verdicts from the running system: procfs, and sock_diag inside the failing
//! process's network namespace. The verdict rules see it only through `verdict::Evidence`.

use std::collections::BTreeMap;

use crate::{
    diagnosis::verdict::{Evidence, Nofile},
    domain::net::NetFacts,
    kernel::probe::Probe,
    system::netdiag,
    system::procinfo,
};

/// Evidence from the running system: procfs, and sock_diag inside the failing process's
/// network namespace (cached per namespace for one interval).
pub struct LiveEvidence<'a> {
    pub probe: &'a Probe,
    pub net_cache: BTreeMap<u32, Result<NetFacts, String>>,
    pub nofile_cache: BTreeMap<u32, Nofile>,
    pub file_nr_cache: Option<Option<(u64, u64)>>,
}

/// RLIMIT_NOFILE (soft, hard) and open fds of a process, now.
pub fn nofile_now(pid: u32) -> Nofile {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok();
    let (soft, hard) = limits.as_deref().and_then(procinfo::parse_nofile).unwrap_or((None, None));
    Nofile { soft, hard, open: procinfo::open_fds(pid) }
}

/// Facts of namespace `netns`, entered through `pid` or any process still in it.
pub fn net_now(pid: u32, netns: u32) -> Result<NetFacts, String> {
    let via = if netdiag::netns_inode(pid) == Some(netns) { Some(pid) } else { netdiag::process_in_netns(netns) };
    match via {
        Some(p) => crate::system::facts::read_net_of(Some(p)).map_err(|e| format!("{e:#}")),
        None => Err(format!("network namespace {netns} is gone (no process left in it)")),
    }
}

impl Evidence for LiveEvidence<'_> {
    fn comm(&mut self, pid: u32) -> String {
        procinfo::comm(pid).or_else(|| self.probe.kernel_comm(pid)).unwrap_or_else(|| "?".into())
    }

    fn nofile(&mut self, pid: u32) -> Nofile {
        *self.nofile_cache.entry(pid).or_insert_with(|| nofile_now(pid))
    }

    fn file_nr(&mut self) -> Option<(u64, u64)> {
        *self.file_nr_cache.get_or_insert_with(|| crate::system::facts::read_system().file_nr)
    }

    fn net(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String> {
        self.net_cache.entry(netns).or_insert_with(|| net_now(pid, netns)).clone()
    }

    fn alive(&mut self, pid: u32) -> bool {
        procinfo::exists(pid)
    }

    fn netns(&mut self, pid: u32) -> Option<u32> {
        netdiag::netns_inode(pid)
    }

    fn tcp_mem(&mut self) -> crate::diagnosis::verdict::TcpMemFacts {
        crate::system::facts::read_tcp_mem()
    }
}
