//! Evidence from fixtures, for the tests of the rules and of what feeds them.

use super::*;

pub struct FakeEvidence {
    /// Every process's name; with `comm_pid`, followed by its pid (`app42`).
    pub comm: &'static str,
    pub comm_pid: bool,
    pub nofile: Nofile,
    pub file_nr: Option<(u64, u64)>,
    /// Every namespace's facts.
    pub net: Result<NetFacts, String>,
    pub netns: Option<u32>,
    pub tcp_mem: TcpMemFacts,
    /// The kernel's record of every process's full tw table.
    pub tw_table: Option<TwTable>,
    /// How many times the rules asked for a namespace's facts.
    pub net_calls: u32,
    /// The holder of every socket inode.
    pub socket_owner: Option<u32>,
}

impl FakeEvidence {
    /// nginx at its fd limit (1,024 of 1,024, hard 4,096), a nearly full file table, processes
    /// in namespace 7 with the facts `net`, TCP memory near its limit.
    pub fn new(net: Result<NetFacts, String>) -> FakeEvidence {
        FakeEvidence {
            comm: "nginx",
            comm_pid: false,
            nofile: Nofile { soft: Some(1024), hard: Some(4096), open: Some(1024) },
            file_nr: Some((99_990, 100_000)),
            net,
            netns: Some(7),
            tcp_mem: TcpMemFacts {
                limits: Some((8, 16, 24)),
                sockstat: [("mem".to_string(), 30), ("orphan".to_string(), 0)].into(),
            },
            tw_table: None,
            net_calls: 0,
            socket_owner: None,
        }
    }
}

impl Evidence for FakeEvidence {
    fn comm(&mut self, pid: u32) -> String {
        if self.comm_pid {
            format!("{}{pid}", self.comm)
        } else {
            self.comm.into()
        }
    }
    fn nofile(&mut self, _pid: u32) -> Nofile {
        self.nofile
    }
    fn file_nr(&mut self) -> Option<(u64, u64)> {
        self.file_nr
    }
    fn socket_owner(&mut self, _inode: u32) -> Option<u32> {
        self.socket_owner
    }
    fn net(&mut self, _pid: u32, _netns: u32) -> Result<NetFacts, String> {
        self.net_calls += 1;
        self.net.clone()
    }
    fn port_limits(&mut self, _pid: u32, _netns: u32) -> Result<NetFacts, String> {
        let mut f = self.net.clone()?;
        f.sockets.clear();
        Ok(f)
    }
    fn alive(&mut self, _pid: u32) -> bool {
        true
    }
    fn netns(&mut self, _pid: u32) -> Option<u32> {
        self.netns
    }
    fn tcp_mem(&mut self) -> TcpMemFacts {
        self.tcp_mem.clone()
    }
    fn tw_table(&mut self, _pid: u32) -> Option<TwTable> {
        self.tw_table
    }
}
