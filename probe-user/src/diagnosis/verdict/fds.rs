//! File descriptors: RLIMIT_NOFILE (EMFILE) and fs.file-max (ENFILE).

use std::time::SystemTime;

use super::*;

/// EMFILE: the process holds as many fds as RLIMIT_NOFILE allows. The summary gives the
/// plateau in the numbers people compare with their load test: the connections (socket fds)
/// it is stuck at, and what the rest of the limit holds.
pub fn fd_limit(pid: u32, comm: String, since: SystemTime, n: u64, mut proof: FdLimitProof) -> Verdict {
    let FdLimitProof { nofile_soft: soft, nofile_hard: hard, open_fds: open, sockets, .. } = proof;
    let hard_s = hard.map(thousands).unwrap_or_else(|| "unknown".into());
    let head = match (soft, open, sockets) {
        (Some(soft), Some(open), Some(sockets)) => format!(
            "{comm}[{pid}] is stuck at {} concurrent connections: {} file descriptors open at RLIMIT_NOFILE {} \
             (hard limit {hard_s}), {} of them sockets and {} other files",
            thousands(sockets),
            thousands(open),
            thousands(soft),
            thousands(sockets),
            thousands(open.saturating_sub(sockets))
        ),
        (Some(soft), Some(open), None) => format!(
            "{comm}[{pid}] hit its open-file limit: {} of {} file descriptors open (RLIMIT_NOFILE, hard limit {hard_s})",
            thousands(open),
            thousands(soft)
        ),
        (Some(soft), None, _) => {
            proof.note = Some("the process had exited before its open files could be counted".into());
            format!(
                "{comm}[{pid}] hit its open-file limit of {} file descriptors (RLIMIT_NOFILE at the failure; it has \
                 exited since, so what it held is not known)",
                thousands(soft)
            )
        }
        (None, ..) => {
            proof.note = Some("the process had exited before its limits could be read".into());
            format!("{comm}[{pid}] hit its open-file limit (RLIMIT_NOFILE; it has exited, its limit could not be read)")
        }
    };
    let mut v = base(Cause::FdLimit, pid, comm.clone(), since, n, Proof::FdLimit(proof));
    v.set_summary(head, "{n} calls failed with EMFILE".into());
    let hard_fix = hard.map(|h| h.to_string()).unwrap_or_else(|| "unlimited".into());
    if soft.is_some() && soft == hard {
        v.fix.push(format!(
            "the hard limit ({hard_fix}) is reached too: raise both (LimitNOFILE=N in the systemd unit, or prlimit --pid {pid} --nofile=N:N as root); fs.nr_open caps N"
        ));
    } else {
        v.fix.push(format!(
            "raise the soft limit up to the hard limit ({hard_fix}): LimitNOFILE= in the systemd unit, `ulimit -n` before start, or now: prlimit --pid {pid} --nofile={hard_fix}:{hard_fix}"
        ));
    }
    v.fix.push(format!("if the open count only grows, it is an fd leak: see what is open in /proc/{pid}/fd"));
    v
}

/// An fd_limit verdict counted only from `from`, when the on-demand hook was attached just
/// before its first failure (see `counted_from_attach`): its note says what was not seen.
pub fn note_counted_from(v: &mut Verdict, from: SystemTime) {
    if let Proof::FdLimit(p) = &mut v.evidence {
        let why = format!(
            "EMFILE is counted while its hook is attached (on demand); it was attached at {}, as a process neared \
             its limit, just before the first failure counted here: failures before it were not seen \
             (--syscall-hooks fd counts every one)",
            clock(from)
        );
        p.note = Some(match p.note.take() {
            Some(n) => format!("{n}; {why}"),
            None => why,
        });
    }
}

pub fn file_max(pid: u32, comm: String, since: SystemTime, n: u64, file_nr: Option<(u64, u64)>) -> Verdict {
    let proof = FileMaxProof { file_nr: file_nr.map(|f| f.0), file_max: file_nr.map(|f| f.1) };
    let mut v = base(Cause::FileMax, pid, comm.clone(), since, n, Proof::FileMax(proof));
    let (nr, max) = file_nr
        .map(|(a, b)| (thousands(a), thousands(b)))
        .unwrap_or(("an unknown number".into(), "an unknown limit".into()));
    v.set_summary(
        format!("the system-wide file table is full: {nr} of {max} file handles in use (fs.file-nr, fs.file-max)"),
        format!("{comm}[{pid}] got ENFILE {{n}} times"),
    );
    v.fix.push("raise fs.file-max: sysctl -w fs.file-max=N, and persist it in /etc/sysctl.d".into());
    v.fix.push("find the process holding the most files (conntrace check lists those closest to their limit)".into());
    v
}

/// The warning for a process whose open fds grow toward its soft limit.
pub fn fd_pressure(pid: u32, comm: String, since: SystemTime, f: &FdForecast, hard: Option<u64>) -> Verdict {
    let proof = FdPressureProof {
        open_fds: f.open,
        nofile_soft: f.limit,
        nofile_hard: hard,
        rate_per_s: (f.rate_per_s * 10.0).round() / 10.0,
        seconds_left: f.seconds_left.round() as u64,
    };
    let mut v = base(Cause::FdPressure, pid, comm.clone(), since, 0, Proof::FdPressure(proof));
    v.state = VerdictState::Warning;
    v.set_summary(
        format!(
            "{comm}[{pid}] opens file descriptors faster than it closes them ({:.1}/s): {} of {} open \
             (RLIMIT_NOFILE); at this rate it hits the limit {}, then its accept(), connect() and \
             open() calls fail with EMFILE",
            f.rate_per_s,
            thousands(f.open),
            thousands(f.limit),
            in_about(f.seconds_left)
        ),
        String::new(),
    );
    let hard_s = hard.map(|h| h.to_string()).unwrap_or_else(|| "unlimited".into());
    v.fix.push(format!(
        "if its connections or files should not pile up, it leaks them: see what is open in /proc/{pid}/fd (ls -l)"
    ));
    v.fix.push(format!(
        "raise the limit before it is reached: prlimit --pid {pid} --nofile=N:N as root now (hard limit {hard_s}), \
         and LimitNOFILE= in its systemd unit or `ulimit -n` where it starts"
    ));
    v
}

/// Why an fd warning ended, as a sentence.
pub fn fd_calm_reason(comm: &str, pid: u32, calm: &FdCalm, failing: bool) -> String {
    if failing {
        return format!("{comm}[{pid}] reached its fd limit: EMFILE failures began (see the fd_limit verdict)");
    }
    match calm {
        FdCalm::Steady { open, limit } => format!(
            "{comm}[{pid}]'s open file descriptors stopped growing, at {} of {}",
            thousands(*open),
            thousands(*limit)
        ),
        FdCalm::Raised { from, to } => {
            format!("{comm}[{pid}]'s RLIMIT_NOFILE was raised from {} to {}", thousands(*from), thousands(*to))
        }
        FdCalm::Reached { limit } => format!("{comm}[{pid}] reached its limit of {} open fds", thousands(*limit)),
        FdCalm::Gone => format!("{comm}[{pid}] has exited"),
    }
}
