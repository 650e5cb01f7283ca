//! What is attached, how, and what was lost: the `status` record.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fexit,
    TpBtf,
    Tracepoint,
    RawTracepoint,
    Kprobe,
    /// Kernel counters read through sock_diag and /proc each interval (no BPF hook).
    SockDiag,
    Unavailable,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fexit => "fexit",
            Mode::TpBtf => "tp_btf",
            Mode::Tracepoint => "tracepoint",
            Mode::RawTracepoint => "raw_tracepoint",
            Mode::Kprobe => "kprobe",
            Mode::SockDiag => "sock_diag",
            Mode::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalStatus {
    pub mode: Mode,
    /// True when the counts equal what the kernel/application saw in this mode.
    pub exact: bool,
    /// The hooks in use, e.g. `fexit/inet_hash_connect`.
    pub hooks: Vec<String>,
    /// Why a preferred hook was not used, or what this mode cannot see.
    pub note: Option<String>,
    /// Attached on demand (`--syscall-hooks on-demand`): whether it is attached now.
    pub armed: Option<bool>,
}

impl SignalStatus {
    pub fn unavailable(note: impl Into<String>) -> Self {
        SignalStatus { mode: Mode::Unavailable, exact: false, hooks: Vec::new(), note: Some(note.into()), armed: None }
    }

    /// What the signal's hooks cost the rest of the host: the dearest of them (a system-call
    /// hook attached on demand costs only while attached).
    pub fn host_cost(&self) -> HostCost {
        let cost = self.hooks.iter().map(|h| HostCost::of_hook(h)).max().unwrap_or(HostCost::None);
        match (cost, self.armed) {
            (HostCost::SyscallSlowPath, Some(false)) => HostCost::SyscallSlowPathWhenArmed,
            _ => cost,
        }
    }
}

/// What a hook costs processes other than the ones it watches, cheapest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostCost {
    None,
    /// Counters the kernel keeps anyway, read each interval (sock_diag, /proc).
    Polled,
    /// A program that runs only when the hooked kernel function or event runs (fexit,
    /// tp_btf, a networking tracepoint).
    PerEvent,
    /// A breakpoint trap on each call of the hooked function (kprobe, kretprobe).
    TrapPerCall,
    /// A system-call tracepoint attached on demand and detached now: nothing until attached.
    SyscallSlowPathWhenArmed,
    /// A system-call tracepoint: while one is attached, every system call of every process
    /// takes the kernel's slow path (syscall_regfunc sets SYSCALL_WORK_SYSCALL_TRACEPOINT on
    /// every thread), whether or not a program runs for it.
    SyscallSlowPath,
}

impl HostCost {
    pub fn of_hook(hook: &str) -> HostCost {
        if hook.starts_with("tracepoint/syscalls/") || hook.starts_with("raw_tracepoint/sys_") {
            HostCost::SyscallSlowPath
        } else if hook.starts_with("kprobe/") || hook.starts_with("kretprobe/") {
            HostCost::TrapPerCall
        } else if hook.starts_with("sock_diag") || hook.starts_with('/') {
            HostCost::Polled
        } else {
            HostCost::PerEvent
        }
    }

    /// The JSON contract's `host_cost`.
    pub fn as_str(self) -> &'static str {
        match self {
            HostCost::None => "none",
            HostCost::Polled => "polled",
            HostCost::PerEvent => "per_event",
            HostCost::TrapPerCall => "trap_per_call",
            HostCost::SyscallSlowPathWhenArmed => "every_syscall_while_armed",
            HostCost::SyscallSlowPath => "every_syscall",
        }
    }
}

pub use probe_common::signal::Signal;

/// When `watch` may attach system-call tracepoints (`--syscall-hooks`). They matter only on
/// kernels without fentry/fexit, where they are the exact hooks for some signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallHooks {
    /// Never: those signals are off or approximate.
    Never,
    /// The fd-failure hook only, attached while some process nears its RLIMIT_NOFILE.
    OnDemand,
    /// The fd-failure hook only, always attached (exact EMFILE/ENFILE counts): on the exit
    /// tracepoints of the system calls that create fds, so its program runs only for those,
    /// but every system call of every process on the host takes the slow path.
    Fd,
    /// Always, for every signal that needs one (fd failures, connect, accept, bind): exact,
    /// and every system call takes the slow path at entry too.
    Always,
}

/// Which hook families `watch --attach-mode` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Best hook the kernel allows, per signal (fexit, then tracepoints, then kprobes).
    Auto,
    /// Only fentry/fexit (fails a signal rather than falling back).
    Fexit,
    /// Only the tracepoint fallbacks (tp_btf, classic and raw tracepoints).
    Tracepoint,
    /// Only kprobes/kretprobes (asynchronous connect outcomes still use inet_sock_set_state).
    Kprobe,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    pub dropped_events: u64,
    pub counter_map_full: u64,
    pub owner_map_full: u64,
    pub inflight_map_full: u64,
    /// connect() returns never seen (the attempt was counted, its outcome not): the kernel
    /// skipped the fexit programs of calls in flight while the function's BPF trampoline was
    /// rebuilt (another tool attaching or detaching), or a kretprobe missed. Found when the
    /// thread connects again, or has exited with its call still recorded.
    pub connect_returns_lost: u64,
    /// Runs the kernel skipped, per program (bpf_prog_info.recursion_misses): a program
    /// that fired while another BPF program of the same guard ran on that CPU. kprobes share
    /// one per-CPU guard (counted since Linux 6.7); fentry/fexit and tp_btf have one each.
    /// For kprobes, plus the hits the kprobe layer lost (bpf_link_info's kprobe `missed`,
    /// Linux 6.7+): a kretprobe with no free instance during a burst of calls.
    pub skipped_runs: std::collections::BTreeMap<String, u64>,
    /// Socket owners dropped by the owner map's LRU to make room (more sockets open at once
    /// than it holds, or owners of closes the kernel did not show): such a socket's
    /// TIME_WAIT is counted as unattributed.
    pub owners_evicted: u64,
}

impl Status {
    /// The signals whose hooks put every system call of the host on the slow path.
    pub fn slowing_every_syscall(&self) -> Vec<&'static str> {
        self.signals
            .iter()
            .filter(|(_, sig)| sig.host_cost() == HostCost::SyscallSlowPath)
            .map(|(name, _)| name.name())
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub kernel: String,
    /// Every signal with its status, in [`Signal::ALL`] order.
    pub signals: Vec<(Signal, SignalStatus)>,
    pub losses: Losses,
    /// Watched pids and whether each is still alive.
    pub watched: Vec<(u32, bool)>,
    /// Kernel struct members missing from BTF (the features needing them are off).
    pub missing_offsets: Vec<String>,
    /// What `--record` wrote and could not write.
    pub recording: Option<RecordingStatus>,
}

/// What was written and what was not, for `status` (never silent). `lines + lines_lost` is every
/// line handed to the recorder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// The caller's lines in segments (headers not counted).
    pub lines: u64,
    /// Compressed bytes this recorder wrote (headers and gzip framing included).
    pub bytes: u64,
    /// Lines not known to be on disk: refused while the directory could not be written, and those
    /// since the last successful flush of a segment that then failed (a reader may still find
    /// some of these).
    pub lines_lost: u64,
    /// Segments opened.
    pub segments: u64,
    /// Segments deleted to keep the directory within its bounds.
    pub segments_deleted: u64,
    /// The latest I/O error, with the file it concerned.
    pub last_error: Option<String>,
}

impl RecordStats {
    /// Adds `o` (another recording of the same directory): the sums, and its error if it has one.
    pub fn add(&mut self, o: &RecordStats) {
        self.lines += o.lines;
        self.bytes += o.bytes;
        self.lines_lost += o.lines_lost;
        self.segments += o.segments;
        self.segments_deleted += o.segments_deleted;
        if o.last_error.is_some() {
            self.last_error.clone_from(&o.last_error);
        }
    }
}

/// A recording's figures for `status` (nothing the user asked to record is lost silently).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingStatus {
    pub dir: String,
    /// "continuous" (`--record`) or "flight" (`--flight-recorder`: written around verdicts).
    pub mode: &'static str,
    pub stats: RecordStats,
    /// Flight recorder: memory held by the kept minutes, and lines dropped from them early
    /// because that memory hit its bound.
    pub kept_bytes: Option<u64>,
    pub kept_dropped: Option<u64>,
}

impl Status {
    pub fn signal(&self, signal: Signal) -> Option<&SignalStatus> {
        self.signals.iter().find(|(n, _)| *n == signal).map(|(_, s)| s)
    }
}

/// Run-time statistics of one kernel program (BPF_ENABLE_STATS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_has_one_name() {
        let names: std::collections::BTreeSet<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Signal::ALL.len());
        for s in Signal::ALL {
            assert_eq!(Signal::from_name(s.name()), Some(s));
        }
        assert_eq!(Signal::from_name("netfilter_drop"), Some(Signal::NetfilterDrop));
        assert_eq!(Signal::from_name("nope"), None);
    }
}
