//! `cargo xtask soak`: conntrace left on under a steady connection churn for a long time
//! (30 minutes at 5,000 connections/s by default). Passes when its memory and fds stay flat,
//! nothing was lost, and it counted every connection the workload made.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{workloads::field, Traced};
use crate::{is_root, root, run};

pub struct Options {
    pub minutes: f64,
    pub rate: u32,
    pub conntrace_args: Vec<String>,
}

/// One reading of conntrace's footprint.
struct Point {
    at: Duration,
    rss_mib: f64,
    fds: usize,
    cpu: Duration,
    /// Lines conntrace printed so far.
    lines: usize,
}

/// RSS may grow this much after the first minute (allocator warm-up, buffers that reach their
/// working size) and still count as flat.
const RSS_SLACK_MIB: f64 = 4.0;

pub fn soak(o: &Options) -> Result<()> {
    if !is_root() {
        bail!("soak needs root (it loads eBPF programs and creates network namespaces)");
    }
    run(Command::new("cargo").args(["build", "--release", "-p", "probe-user", "-p", "tests"]).current_dir(root()))?;
    let conntrace = root().join("target/release/conntrace");
    let workload = root().join("target/release/conntrace-workload");
    let seconds = o.minutes * 60.0;
    let traced = Traced::start(&conntrace, &o.conntrace_args, false)?;
    let pid = traced.child.id();
    let script = format!(
        "ip link set lo up; sysctl -qw net.ipv4.tcp_tw_reuse=1; \
         sysctl -qw net.ipv4.ip_local_port_range='1024 65535'; \
         exec {} churn --addr 127.0.0.1:9000 --seconds {seconds} --rate {}",
        workload.display(),
        o.rate
    );
    let wl = Command::new("unshare").args(["-n", "sh", "-ec", &script]).stdout(Stdio::piped()).spawn()?;
    let started = Instant::now();
    let mut points = Vec::new();
    let every = Duration::from_secs(30).min(Duration::from_secs_f64(seconds / 4.0).max(Duration::from_secs(1)));
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(every);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        let p = Point {
            at: started.elapsed(),
            rss_mib: traced.rss_mib(),
            fds,
            cpu: traced.cpu(),
            lines: traced.lines_so_far(),
        };
        let since = points.last().map(|q: &Point| (p.at - q.at, p.cpu - q.cpu)).unwrap_or((p.at, p.cpu));
        println!(
            "soak: {:>6.0} s  RSS {:.1} MiB  fds {}  CPU {:.2}% of a core since the last reading  {} lines printed",
            p.at.as_secs_f64(),
            p.rss_mib,
            p.fds,
            100.0 * since.1.as_secs_f64() / since.0.as_secs_f64(),
            p.lines
        );
        points.push(p);
    }
    let out = wl.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    let made = field(&report, "\"connections\":").context("the workload printed no report")? as u64;
    let wl_pid = field(&report, "\"pid\":").context("no pid in the workload's report")? as u64;
    let lines = traced.stop()?;
    verdict(&points, &lines, made, wl_pid, seconds)
}

/// Open fds move by a few while conntrace reads /proc and sock_diag: a leak is growth beyond
/// this between the first and the last quarter of the run.
const FD_SLACK: usize = 3;

/// Compares the first reading after a minute (or the first) with the last, the fds of the
/// first and last quarters, and the counts.
fn verdict(points: &[Point], lines: &[String], made: u64, wl_pid: u64, seconds: f64) -> Result<()> {
    let first = points.iter().find(|p| p.at >= Duration::from_secs(60)).or(points.first()).context("no reading")?;
    let last = points.last().context("no reading")?;
    let quarter = points.len().div_ceil(4);
    let early_fds = points[..quarter].iter().map(|p| p.fds).max().unwrap_or(0);
    let late_fds = points[points.len() - quarter..].iter().map(|p| p.fds).min().unwrap_or(0);
    let steady_cpu = if last.at > first.at {
        (last.cpu - first.cpu).as_secs_f64() / (last.at - first.at).as_secs_f64()
    } else {
        last.cpu.as_secs_f64() / last.at.as_secs_f64()
    };
    let samples: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"sample\"") && field(l, "\"pid\":").map(|p| p as u64) == Some(wl_pid))
        .collect();
    let counted: u64 = samples.iter().filter_map(|l| field(l, "\"connect_attempts\":")).map(|n| n as u64).sum();
    let status = lines.iter().rev().find(|l| l.contains("\"type\":\"status\"")).cloned().unwrap_or_default();
    let lost: u64 =
        ["counter_map_full", "owner_map_full", "owners_evicted", "inflight_map_full", "connect_returns_lost"]
            .iter()
            .filter_map(|k| field(&status, &format!("\"{k}\":")))
            .map(|n| n as u64)
            .sum();
    println!(
        "soak: RSS {:.1} → {:.1} MiB, fds {} → {} (first/last quarter), CPU {:.2}% of a core after the first \
         reading; {} connections made, {} counted in {} samples; lost updates {}",
        first.rss_mib,
        last.rss_mib,
        early_fds,
        late_fds,
        100.0 * steady_cpu,
        made,
        counted,
        samples.len(),
        lost
    );
    let mut bad = Vec::new();
    if last.rss_mib > first.rss_mib + RSS_SLACK_MIB {
        bad.push(format!("RSS grew from {:.1} to {:.1} MiB", first.rss_mib, last.rss_mib));
    }
    if late_fds > early_fds + FD_SLACK {
        bad.push(format!("fds grew from {early_fds} to {late_fds}"));
    }
    // One sample a second for a process that connects all the time: fewer means conntrace's
    // loop stalled (it reported late, in bigger intervals).
    if (samples.len() as f64) < 0.9 * seconds {
        bad.push(format!("{} samples of the workload in {seconds:.0} s: conntrace's loop stalled", samples.len()));
    }
    if counted != made {
        bad.push(format!("{made} connections made, {counted} counted"));
    }
    if lost > 0 {
        let detail = status.find("\"lost_updates\"").map(|i| &status[i..]).unwrap_or("");
        bad.push(format!("{lost} lost updates ({})", detail.chars().take(300).collect::<String>()));
    }
    if !bad.is_empty() {
        bail!("soak failed: {}", bad.join("; "));
    }
    Ok(())
}
