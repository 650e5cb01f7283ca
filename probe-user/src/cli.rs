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
    /// Report on recordings made with `watch --record` or `--flight-recorder`: the plateaus
    /// (verdicts) over time, per process and destination, the limits in force.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Recording directories or segment files.
    #[arg(required = true, value_name = "DIR|FILE")]
    pub paths: Vec<std::path::PathBuf>,
    /// Only what happened from then on: RFC 3339 (2026-11-30T12:00:00Z) or a time ago (10m).
    #[arg(long, value_parser = parse_when)]
    pub since: Option<std::time::SystemTime>,
    /// Only what happened until then (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    pub until: Option<std::time::SystemTime>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "OUT")]
    pub html: Option<std::path::PathBuf>,
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
    /// Record the NDJSON stream (whatever is printed) into compressed, rotated segment files
    /// in DIR; `conntrace report DIR` reads them.
    #[arg(long, value_name = "DIR")]
    pub record: Option<std::path::PathBuf>,
    /// Bound of the recording directory: the oldest segments are deleted beyond it.
    #[arg(long, default_value = "100MB", value_parser = parse_size, requires = "record")]
    pub max_size: u64,
    /// At most this many segment files in the recording directory.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000), requires = "record")]
    pub max_files: u64,
    /// Start a new segment after this long.
    #[arg(long, default_value = "1h", value_parser = parse_duration, requires = "record")]
    pub rotate: Duration,
    /// With --record: write nothing while healthy; keep this much of the stream in memory and
    /// write it (then everything until --post-trigger after the last verdict resolves) when
    /// a verdict becomes active or on SIGUSR1.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "record")]
    pub flight_recorder: Option<Duration>,
    /// How long the flight recorder keeps writing after the last verdict resolved.
    #[arg(long, default_value = "2m", value_parser = parse_duration, requires = "flight_recorder")]
    pub post_trigger: Duration,
    /// Do not print the report of the session at the end.
    #[arg(long)]
    pub no_report: bool,
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

/// A size: bytes, or with a unit (kB, MB, GB: powers of 1,000; KiB, MiB, GiB: of 1,024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (examples: 100MB, 1GiB, 500000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        u => return Err(format!("unknown size unit `{u}` (use B, kB, MB, GB, KiB, MiB or GiB)")),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes < 16 * 1024 {
        return Err("must be at least 16KiB".into());
    }
    Ok(bytes)
}

/// A point in time: RFC 3339, or a duration ago ("10m").
pub fn parse_when(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(d) => std::time::SystemTime::now().checked_sub(d).ok_or_else(|| format!("`{s}` ago is before the epoch")),
        Err(_) => Err(format!("`{s}` is neither a time (2026-11-30T12:00:00Z) nor a duration ago (10m, 2h)")),
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
    fn parses_record_flags_and_sizes() {
        let cli = Cli::try_parse_from([
            "conntrace",
            "watch",
            "--record",
            "/var/lib/ct",
            "--max-size",
            "20MiB",
            "--max-files",
            "3",
            "--rotate",
            "10m",
            "--flight-recorder",
            "10m",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else { panic!("not watch") };
        assert_eq!(w.record.as_deref(), Some(std::path::Path::new("/var/lib/ct")));
        assert_eq!((w.max_size, w.max_files, w.rotate), (20 << 20, 3, Duration::from_secs(600)));
        assert_eq!((w.flight_recorder, w.post_trigger), (Some(Duration::from_secs(600)), Duration::from_secs(120)));
        // The recording's bounds make no sense without a recording.
        assert!(Cli::try_parse_from(["conntrace", "watch", "--max-size", "1GB"]).is_err());
        assert!(Cli::try_parse_from(["conntrace", "watch", "--flight-recorder", "10m"]).is_err());
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert!(parse_size("15KiB").is_err());
        assert!(parse_size("10").is_err(), "too small");
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("99999999999999999999GB").is_err());
        let cli = Cli::try_parse_from(["conntrace", "report", "/d", "--since", "2026-11-30T12:00:00Z", "--pid", "7"])
            .unwrap();
        let Command::Report(r) = cli.command else { panic!("not report") };
        assert_eq!(r.pid, Some(7));
        assert!(r.since.is_some());
        assert!(Cli::try_parse_from(["conntrace", "report"]).is_err(), "a path is required");
        assert!(parse_when("yesterday-ish").is_err());
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
