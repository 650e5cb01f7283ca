//! What `watch`'s interval step asks of the running system, behind one trait so that the step
//! runs on fakes in tests: procfs, the namespaces' sock_diag and sysctls, the listen counters.

use crate::{
    commands::listen_poll::{ListenPoll, ListenPoller},
    diagnosis::verdict::TwTable,
    domain::net::{NetFacts, Nofile, TcpMem},
    kernel::probe::Probe,
    system::{facts, netdiag, procinfo},
};

pub trait Host {
    /// Whether the process still runs.
    fn exists(&mut self, pid: u32) -> bool;
    /// The process holding the socket with this inode.
    fn socket_owner(&mut self, _inode: u32) -> Option<u32> {
        None
    }
    /// Its name: procfs, else what the kernel recorded at its last event.
    fn comm(&mut self, pid: u32) -> Option<String>;
    /// RLIMIT_NOFILE and open fds, now.
    fn nofile(&mut self, pid: u32) -> Nofile;
    /// How many of its open fds are sockets (its connections), now.
    fn socket_fds(&mut self, _pid: u32) -> Option<u64> {
        None
    }
    /// Network namespace inode of a running process.
    fn netns(&mut self, pid: u32) -> Option<u32>;
    /// Facts of namespace `netns`, entered through `pid` or any process still in it.
    fn net(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String>;
    /// Its port sysctls alone (see `verdict::Evidence::port_limits`).
    fn port_limits(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String>;
    /// (allocated, fs.file-max).
    fn file_nr(&mut self) -> Option<(u64, u64)>;
    /// net.ipv4.tcp_mem and the TCP memory in use (machine-wide).
    fn tcp_mem(&mut self) -> TcpMem;
    /// The kernel's record of the process's full tw table (see `verdict::Evidence`).
    fn tw_table(&mut self, pid: u32) -> Option<TwTable>;
    /// Listeners that dropped since the last poll, in the namespaces of `watched` and every
    /// namespace polled before.
    fn poll_listeners(&mut self, watched: &[u32]) -> ListenPoll;
}

/// The running system, and the probe for the names of exited processes.
pub struct LiveHost<'a> {
    pub probe: &'a Probe,
    pub listen: &'a mut ListenPoller,
}

/// RLIMIT_NOFILE (soft, hard) and open fds of a process, now.
pub fn nofile_now(pid: u32) -> Nofile {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok();
    let (soft, hard) = limits.as_deref().and_then(procinfo::parse_nofile).unwrap_or((None, None));
    Nofile { soft, hard, open: procinfo::open_fds(pid) }
}

/// Facts of namespace `netns`, entered through `pid` or any process still in it.
pub fn net_now(pid: u32, netns: u32) -> Result<NetFacts, String> {
    match via(pid, netns) {
        Some(p) => facts::read_net_of(Some(p)).map_err(|e| format!("{e:#}")),
        None => Err(format!("network namespace {netns} is gone (no process left in it)")),
    }
}

/// The port sysctls of namespace `netns` (see [`net_now`]).
pub fn port_limits_now(pid: u32, netns: u32) -> Result<NetFacts, String> {
    match via(pid, netns) {
        Some(p) => netdiag::in_netns_of(Some(p), facts::read_port_limits).map_err(|e| format!("{e:#}")),
        None => Err(format!("network namespace {netns} is gone (no process left in it)")),
    }
}

/// A process to enter namespace `netns` through: `pid` if it is still there.
fn via(pid: u32, netns: u32) -> Option<u32> {
    if netdiag::netns_inode(pid) == Some(netns) {
        Some(pid)
    } else {
        netdiag::process_in_netns(netns)
    }
}

impl Host for LiveHost<'_> {
    fn exists(&mut self, pid: u32) -> bool {
        procinfo::exists(pid)
    }

    fn socket_owner(&mut self, inode: u32) -> Option<u32> {
        procinfo::socket_owner(inode)
    }

    fn comm(&mut self, pid: u32) -> Option<String> {
        procinfo::comm(pid).or_else(|| self.probe.kernel_comm(pid))
    }

    fn nofile(&mut self, pid: u32) -> Nofile {
        nofile_now(pid)
    }

    fn socket_fds(&mut self, pid: u32) -> Option<u64> {
        procinfo::socket_fds(pid)
    }

    fn netns(&mut self, pid: u32) -> Option<u32> {
        netdiag::netns_inode(pid)
    }

    fn net(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String> {
        net_now(pid, netns)
    }

    fn port_limits(&mut self, pid: u32, netns: u32) -> Result<NetFacts, String> {
        port_limits_now(pid, netns)
    }

    fn file_nr(&mut self) -> Option<(u64, u64)> {
        facts::read_system().file_nr
    }

    fn tcp_mem(&mut self) -> TcpMem {
        facts::read_tcp_mem()
    }

    fn tw_table(&mut self, pid: u32) -> Option<TwTable> {
        self.probe.tw_table(pid)
    }

    fn poll_listeners(&mut self, watched: &[u32]) -> ListenPoll {
        self.listen.poll(watched.iter().copied())
    }
}
