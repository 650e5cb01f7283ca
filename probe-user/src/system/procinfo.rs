//! What /proc says about a process: name, fd limit, open fds. Parsing is split from reading so
//! it can be tested on fixture text.

use std::{fs, path::Path};

pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// (soft, hard) "Max open files" from /proc/PID/limits; None for "unlimited" or absent.
pub fn parse_nofile(limits: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut cols = line["Max open files".len()..].split_whitespace();
    let soft = cols.next()?.parse().ok();
    let hard = cols.next()?.parse().ok();
    Some((soft, hard))
}

pub fn nofile_limit(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_nofile(&text)?.0
}

pub fn open_fds(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// How many of the process's open fds are sockets (one readlink per fd: for a verdict's
/// evidence, not every interval).
pub fn socket_fds(pid: u32) -> Option<u64> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let is_socket =
        |e: &fs::DirEntry| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
    Some(dir.filter_map(|e| e.ok()).filter(is_socket).count() as u64)
}

/// The process to charge a listener's drops to: the one that accepts from it. Found through
/// the /proc/PID/fd links ("socket:[INODE]") of every process (callers cache the answer); see
/// [`acceptor`] for which holder that is.
pub fn socket_owner(inode: u32) -> Option<u32> {
    let want = format!("socket:[{inode}]");
    let pids: Vec<u32> =
        fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    let holders: Vec<(u32, u32)> = pids
        .into_iter()
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.filter_map(|e| e.ok())
                        .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
                })
                .unwrap_or(false)
        })
        .map(|pid| (pid, parent(pid).unwrap_or(0)))
        .collect();
    acceptor(&holders)
}

/// The accepting process of each of `inodes` (listener sockets), in one pass over every
/// process's fds (see [`acceptor`]); inodes nobody holds are left out.
pub fn socket_owners(inodes: &std::collections::BTreeSet<u32>) -> std::collections::BTreeMap<u32, u32> {
    let mut holders: std::collections::BTreeMap<u32, Vec<(u32, u32)>> = Default::default();
    let Ok(rd) = fs::read_dir("/proc") else { return Default::default() };
    for pid in rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in fds.filter_map(|e| e.ok()) {
            let Ok(l) = fs::read_link(e.path()) else { continue };
            let inode = l.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u32>().ok());
            if let Some(i) = inode.filter(|i| inodes.contains(i)) {
                let h = holders.entry(i).or_default();
                if !h.iter().any(|&(p, _)| p == pid) {
                    h.push((pid, parent(pid).unwrap_or(0)));
                }
            }
        }
    }
    holders.into_iter().filter_map(|(i, h)| Some((i, acceptor(&h)?))).collect()
}

/// The parent pid of `pid` (/proc/PID/stat's 4th field).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Of the processes holding a listener, (pid, parent pid) each, the one that accepts: a
/// pre-forking server's master creates the listener and its workers inherit it and accept,
/// so a holder whose child holds it too is passed over; of the rest, the lowest pid. Pid 1
/// only when nothing else holds it (socket activation hands the listener on).
pub fn acceptor(holders: &[(u32, u32)]) -> Option<u32> {
    let forked = |pid: u32| holders.iter().any(|&(p, ppid)| ppid == pid && p != pid);
    let mut pids: Vec<u32> = holders.iter().map(|h| h.0).filter(|&p| !forked(p)).collect();
    if pids.is_empty() {
        pids = holders.iter().map(|h| h.0).collect();
    }
    pids.sort_unstable_by_key(|&p| (p == 1, p));
    pids.first().copied()
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Effective capability set of this process (/proc/self/status `CapEff`).
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s)).unwrap_or(0)
}

/// `FDSize` of /proc/PID/status: the slots of the process's fd table (it grows in powers of
/// two past the highest fd allocated, never shrinks; 64 for a process that never had more).
pub fn parse_fd_table_size(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("FDSize:")).and_then(|v| v.trim().parse().ok())
}

/// Every process's fd table size, from /proc (processes that exit meanwhile are skipped).
pub fn fd_table_sizes() -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some((pid, parse_fd_table_size(&status)?))
        })
        .collect()
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// None when the capabilities suffice, else the one-line error naming the fix.
pub fn privilege_problem(caps: u64, exe: &str) -> Option<String> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    Some(format!(
        "conntrace needs root or CAP_BPF+CAP_PERFMON to load its kernel programs: run it with sudo, \
         or once: sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep {exe}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            64                   524288               files     
Max locked memory         8388608              8388608              bytes     
";

    #[test]
    fn parses_nofile() {
        assert_eq!(parse_nofile(LIMITS), Some((Some(64), Some(524288))));
        assert_eq!(
            parse_nofile("Max open files            unlimited            unlimited            files"),
            Some((None, None))
        );
        assert_eq!(parse_nofile("nothing"), None);
    }

    #[test]
    fn capability_checks() {
        assert_eq!(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(0x1ff_ffff_ffff));
        assert!(privilege_problem(0x1ff_ffff_ffff, "conntrace").is_none());
        assert!(privilege_problem((1 << 39) | (1 << 38), "conntrace").is_none());
        let msg = privilege_problem(1 << 39, "/usr/bin/conntrace").unwrap();
        assert!(msg.contains("sudo setcap cap_bpf,cap_perfmon"));
        assert!(msg.contains("/usr/bin/conntrace"));
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(exists(me));
        assert!(open_fds(me).unwrap() >= 3);
        assert!(comm(me).is_some());
        let sizes = fd_table_sizes();
        let mine = sizes.iter().find(|(p, _)| *p == me).map(|(_, n)| *n).unwrap();
        assert!(mine >= 64 && mine >= open_fds(me).unwrap(), "{mine}");
        assert_eq!(parse_fd_table_size("Name:\tx\nFDSize:\t256\nPid: 1\n"), Some(256));
    }
}
