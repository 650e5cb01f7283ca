//! Command line.

use std::time::Duration;

use clap::{Parser, Subcommand};

pub use crate::domain::status::{AttachMode, SyscallHooks};

#[derive(Parser, Debug)]
#[command(name = "conntrace", version, about = "Explains why a Linux server stops accepting or opening connections")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch connection failures live, per process.
    Watch(WatchArgs),
    /// Audit connection limits now (no eBPF): exit 0 when nothing fails, 1 when an item fails.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Check this process's limits and its network namespace (default: the processes closest
    /// to their fd limit, and conntrace's own namespace).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check for a target load: can the machine (and --pid's process) hold N concurrent
    /// connections? Each limit with what N needs, pass/warn/fail and the fix.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: Option<u64>,
    /// With --connections: M of them toward one destination (address and port) from one
    /// source address, which the ephemeral port range must hold.
    #[arg(long, value_name = "M", requires = "connections", value_parser = clap::value_parser!(u64).range(1..))]
    pub outbound_per_destination: Option<u64>,
    /// With --connections: R new outbound connections a second, closed by this side first.
    /// Each leaves a TIME_WAIT socket (and its port) for 60 s: R × 60 of them against
    /// net.ipv4.tcp_max_tw_buckets, and with --outbound-per-destination in the port range too.
    #[arg(long, value_name = "R", requires = "connections", value_parser = clap::value_parser!(u64).range(1..))]
    pub new_per_second: Option<u64>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Watch this process (and its threads); repeatable. Default: every process.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Watch processes with this name (as in /proc/PID/comm); repeatable.
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Reporting interval, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this long, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print NDJSON (one object per line) instead of the text table.
    #[arg(long)]
    pub json: bool,
    /// Which hooks to use.
    #[arg(long, value_enum, default_value = "auto", env = "CONNTRACE_ATTACH_MODE")]
    pub attach_mode: AttachMode,
    /// When to attach system-call tracepoints. On kernels without fentry/fexit they are the
    /// only exact hooks for EMFILE/ENFILE, failed bind() calls, connect() errors returned before
    /// a SYN is sent, and accepting processes; but while one is attached, every system call of
    /// every process on the host takes the kernel's slow path (a getppid loop loses ~14%).
    /// `on-demand` attaches the fd-failure hook only while a process is near its RLIMIT_NOFILE;
    /// `fd` attaches it always (exact EMFILE/ENFILE; the slow path at system-call exit only);
    /// `always` is exact everywhere (the slow path at entry and exit); `never` leaves those
    /// signals off. On kernels with fexit nothing changes: no signal needs one there.
    #[arg(long, value_enum, default_value = "on-demand", env = "CONNTRACE_SYSCALL_HOOKS")]
    pub syscall_hooks: SyscallHooks,
    /// Same as --syscall-hooks never.
    #[arg(long, conflicts_with = "syscall_hooks")]
    pub light: bool,
    /// Failure events per second and per (process, kind) to print; the counts stay exact.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub events_per_sec: u32,
    /// At exit, report what each of conntrace's kernel programs cost (runs, ns per run),
    /// from the kernel's BPF run-time statistics (enabled for the duration of the run).
    #[arg(long)]
    pub bpf_stats: bool,
}

impl WatchArgs {
    /// `--syscall-hooks`, with `--light` for `never`.
    pub fn syscall_hooks(&self) -> SyscallHooks {
        if self.light {
            SyscallHooks::Never
        } else {
            self.syscall_hooks
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1s, 500ms, 2m)"))?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_flags() {
        let cli = Cli::try_parse_from([
            "conntrace",
            "watch",
            "--pid",
            "1",
            "--pid",
            "2",
            "--comm",
            "nginx",
            "--interval",
            "250ms",
            "--duration",
            "3s",
            "--json",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else { panic!("not watch") };
        assert_eq!(w.pids, [1, 2]);
        assert_eq!(w.comms, ["nginx"]);
        assert_eq!(w.interval, Duration::from_millis(250));
        assert_eq!(w.duration, Some(Duration::from_secs(3)));
        assert!(w.json);
        assert_eq!(w.attach_mode, AttachMode::Auto);
        assert_eq!(w.syscall_hooks(), SyscallHooks::OnDemand);
    }

    #[test]
    fn light_is_syscall_hooks_never() {
        let parse = |a: &[&str]| match Cli::try_parse_from(a).map(|c| c.command) {
            Ok(Command::Watch(w)) => Ok(w.syscall_hooks()),
            Ok(_) => panic!("not watch"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(parse(&["conntrace", "watch", "--light"]), Ok(SyscallHooks::Never));
        assert_eq!(parse(&["conntrace", "watch", "--syscall-hooks", "always"]), Ok(SyscallHooks::Always));
        assert_eq!(parse(&["conntrace", "watch", "--syscall-hooks", "fd"]), Ok(SyscallHooks::Fd));
        assert!(parse(&["conntrace", "watch", "--light", "--syscall-hooks", "always"]).is_err());
        assert!(parse(&["conntrace", "watch", "--syscall-hooks", "sometimes"]).is_err());
    }

    #[test]
    fn parses_check_flags() {
        let cli = Cli::try_parse_from(["conntrace", "check", "--pid", "9", "--json"]).unwrap();
        let Command::Check(c) = cli.command else { panic!("not check") };
        assert_eq!((c.pid, c.json), (Some(9), true));
        assert!(Cli::try_parse_from(["conntrace", "check", "--pid", "-1"]).is_err());
        let cli =
            Cli::try_parse_from(["conntrace", "check", "--connections", "100", "--new-per-second", "50"]).unwrap();
        let Command::Check(c) = cli.command else { panic!("not check") };
        assert_eq!((c.connections, c.new_per_second), (Some(100), Some(50)));
        assert!(Cli::try_parse_from(["conntrace", "check", "--new-per-second", "50"]).is_err(), "needs --connections");
        assert!(Cli::try_parse_from(["conntrace", "check", "--connections", "1", "--new-per-second", "0"]).is_err());
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(Cli::try_parse_from(["conntrace", "watch", "--interval", "fast"]).is_err());
        assert!(Cli::try_parse_from(["conntrace", "watch", "--interval", "1ms"]).is_err());
        assert!(Cli::try_parse_from(["conntrace", "watch", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["conntrace", "watch", "--bogus"]).is_err());
    }
}
