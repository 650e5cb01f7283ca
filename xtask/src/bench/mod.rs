//! `cargo xtask bench`: what conntrace costs, per workload (`workloads`): alternating runs
//! without and with `conntrace watch` (the median of the pairs' ratios: absolute rates drift
//! between minutes on a shared machine, neighbouring runs do not), conntrace's own CPU and
//! memory during the runs, and the kernel's run time of each BPF program.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{is_root, output, root, run};

pub mod soak;
mod workloads;

pub use workloads::Workload;
use workloads::{field, Env};

pub struct Options {
    pub pairs: u32,
    pub seconds: f64,
    pub workloads: Vec<Workload>,
    /// Passed to `conntrace watch` after `--json --interval 1s`.
    pub conntrace_args: Vec<String>,
    /// Run a process that does nothing (`sleep`) instead of conntrace: the ratios then show
    /// this machine's noise, the floor under any measured cost.
    pub calibrate: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A `conntrace watch --json` running beside a workload. Its output is read as it comes (a
/// thread keeps the lines after the first status): an undrained pipe would block conntrace's
/// writes, and with them its whole loop, within a minute.
pub(super) struct Traced {
    pub(super) child: std::process::Child,
    rest: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Traced {
    pub(super) fn start(conntrace: &Path, args: &[String], stats: bool) -> Result<Traced> {
        use std::io::BufRead as _;
        let mut child = if conntrace == Path::new("sleep") {
            Command::new("sleep").arg("3600").stdout(std::process::Stdio::piped()).spawn()?
        } else {
            Command::new(conntrace)
                .args(["watch", "--json", "--interval", "1s"])
                .args(args)
                .args(stats.then_some("--bpf-stats"))
                .stdout(std::process::Stdio::piped())
                .spawn()?
        };
        let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        // Wait until everything is attached.
        if conntrace != Path::new("sleep")
            && !lines.by_ref().map_while(Result::ok).any(|l| l.contains("\"type\":\"status\""))
        {
            bail!("conntrace exited before attaching");
        }
        let rest = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = rest.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().expect("output lines").push(line);
            }
        });
        Ok(Traced { child, rest, reader: Some(reader) })
    }

    /// Lines printed so far (after the first status line).
    pub(super) fn lines_so_far(&self) -> usize {
        self.rest.lock().expect("output lines").len()
    }

    /// User + system CPU time so far.
    pub(super) fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15.
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / clock_ticks())
    }

    /// Resident memory now, in MiB.
    pub(super) fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status.lines().find_map(|l| field(l, "VmRSS:")).unwrap_or(0.0) / 1024.0
    }

    /// SIGTERM; returns everything printed after the first status line.
    pub(super) fn stop(mut self) -> Result<Vec<String>> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        self.child.wait()?;
        if let Some(r) = self.reader.take() {
            r.join().map_err(|_| anyhow::anyhow!("the output reader panicked"))?;
        }
        Ok(std::mem::take(&mut *self.rest.lock().expect("output lines")))
    }
}

/// (program, run_count, run_time_ns) from a `bpf_stats` line.
fn parse_bpf_stats(line: &str) -> Vec<(String, u64, u64)> {
    line.split("{\"name\":\"")
        .skip(1)
        .map(|prog| {
            let name = prog.split('"').next().unwrap_or("?").to_string();
            let field = |k: &str| -> u64 {
                prog.split(&format!("\"{k}\":"))
                    .nth(1)
                    .map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            (name, field("run_count"), field("run_time_ns"))
        })
        .collect()
}

/// Clock ticks per second (USER_HZ) of /proc/PID/stat's times.
fn clock_ticks() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK")).and_then(|s| s.trim().parse().ok()).unwrap_or(100.0)
}

/// One workload's figures.
struct Row {
    workload: Workload,
    without: f64,
    with: f64,
    ratio: f64,
    ratio_range: (f64, f64),
    /// conntrace's CPU during the traced runs, percent of one core (median).
    cpu_pct: f64,
    rss_mib: f64,
    /// BPF run time per unit of work, and per program: (name, runs per unit, ns per run).
    bpf_ns: f64,
    programs: Vec<(String, f64, u64)>,
}

/// A traced run: the workload's rate, conntrace's CPU share and RSS, its output.
struct TracedRun {
    rate: f64,
    cpu_pct: f64,
    rss_mib: f64,
    rest: Vec<String>,
}

fn traced(w: Workload, env: &Env, conntrace: &Path, opts: &Options, stats: bool) -> Result<TracedRun> {
    let t = Traced::start(conntrace, &opts.conntrace_args, stats)?;
    let (cpu0, start) = (t.cpu(), Instant::now());
    let rate = w.run(env, opts.seconds);
    let (cpu1, wall) = (t.cpu(), start.elapsed());
    let rss_mib = t.rss_mib();
    let rest = t.stop()?;
    let cpu_pct = (cpu1.saturating_sub(cpu0)).as_secs_f64() / wall.as_secs_f64() * 100.0;
    Ok(TracedRun { rate: rate?, cpu_pct, rss_mib, rest })
}

fn measure(w: Workload, env: &Env, conntrace: &Path, opts: &Options) -> Result<Row> {
    let (mut base, mut with, mut cpu, mut rss) = (Vec::new(), Vec::new(), Vec::new(), 0.0f64);
    println!(
        "\n{} ({}):\n{:<5} {:>14} {:>14} {:>7} {:>9}",
        w.name(),
        w.unit(),
        "pair",
        "without",
        "with",
        "ratio",
        "cpu %"
    );
    for i in 0..opts.pairs {
        // Throughput runs go without BPF statistics: the kernel's per-run accounting (two
        // clock reads per program run) would inflate the cost being measured. The order
        // alternates so that a drift favours neither side.
        let (b, t) = if i % 2 == 0 {
            let b = w.run(env, opts.seconds)?;
            (b, traced(w, env, conntrace, opts, false)?)
        } else {
            let t = traced(w, env, conntrace, opts, false)?;
            (w.run(env, opts.seconds)?, t)
        };
        println!("{:<5} {:>14.0} {:>14.0} {:>7.3} {:>9.1}", i + 1, b, t.rate, t.rate / b, t.cpu_pct);
        base.push(b);
        with.push(t.rate);
        cpu.push(t.cpu_pct);
        rss = rss.max(t.rss_mib);
    }
    let mut ratios: Vec<f64> = base.iter().zip(&with).map(|(b, w)| w / b).collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let (mut programs, mut bpf_ns) = (Vec::new(), 0.0);
    if !opts.calibrate {
        (programs, bpf_ns) = bpf_cost(w, env, conntrace, opts)?;
    }
    Ok(Row {
        workload: w,
        without: median(&mut base),
        with: median(&mut with),
        ratio: median(&mut ratios),
        ratio_range: (lo, hi),
        cpu_pct: median(&mut cpu),
        rss_mib: rss,
        bpf_ns,
        programs,
    })
}

/// One more traced run, with BPF statistics: (program, runs per unit, ns per run) and the
/// total BPF time per unit.
type BpfCost = (Vec<(String, f64, u64)>, f64);

fn bpf_cost(w: Workload, env: &Env, conntrace: &Path, opts: &Options) -> Result<BpfCost> {
    let t = traced(w, env, conntrace, opts, true)?;
    let ops = (t.rate * opts.seconds).max(1.0);
    let stats = t.rest.iter().rev().find(|l| l.contains("\"type\":\"bpf_stats\"")).context("no bpf_stats line")?;
    let mut programs = Vec::new();
    let mut bpf_ns = 0.0;
    for (name, cnt, ns) in parse_bpf_stats(stats) {
        bpf_ns += ns as f64 / ops;
        if cnt > 0 {
            programs.push((name, cnt as f64 / ops, ns / cnt));
        }
    }
    Ok((programs, bpf_ns))
}

fn print_table(rows: &[Row], opts: &Options) {
    println!(
        "\nmedians of {} pairs, {} s per run, {}",
        opts.pairs,
        opts.seconds,
        if opts.calibrate {
            "calibration: `sleep` in conntrace's place".to_string()
        } else {
            format!("conntrace watch --json --interval 1s {}", opts.conntrace_args.join(" "))
        }
    );
    println!(
        "{:<16} {:>8} {:>12} {:>12} {:>7} {:>13} {:>11} {:>8} {:>12}",
        "workload", "unit", "without", "with", "ratio", "(min-max)", "conntrace %", "RSS MiB", "BPF ns/unit"
    );
    for r in rows {
        println!(
            "{:<16} {:>8} {:>12.0} {:>12.0} {:>7.3} {:>13} {:>11.1} {:>8.0} {:>12.0}",
            r.workload.name(),
            r.workload.unit(),
            r.without,
            r.with,
            r.ratio,
            format!("{:.3}-{:.3}", r.ratio_range.0, r.ratio_range.1),
            r.cpu_pct,
            r.rss_mib,
            r.bpf_ns
        );
    }
    for r in rows {
        let progs: Vec<String> = r.programs.iter().map(|(n, per, ns)| format!("{n} {per:.2}x{ns}ns")).collect();
        println!(
            "  {}: {}",
            r.workload.name(),
            if progs.is_empty() { "no BPF program ran".into() } else { progs.join(", ") }
        );
    }
}

pub fn bench(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!("bench needs root (it loads eBPF programs and creates network namespaces)");
    }
    for w in &opts.workloads {
        for prog in w.needs() {
            if output(Command::new("sh").args(["-c", &format!("command -v {prog}")])).is_none() {
                bail!("the {} workload needs {prog}: apt-get install -y nginx wrk util-linux", w.name());
            }
        }
    }
    run(Command::new("cargo").args(["build", "--release", "-p", "probe-user", "-p", "tests"]).current_dir(root()))?;
    let conntrace = if opts.calibrate { "sleep".into() } else { root().join("target/release/conntrace") };
    let env = Env::new(&root().join("target/release/conntrace-workload"), &root().join("target/bench"))?;
    let mut rows = Vec::new();
    for &w in &opts.workloads {
        rows.push(measure(w, &env, &conntrace, opts)?);
    }
    print_table(&rows, opts);
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpf_stats_lines() {
        let l = r#"{"type":"bpf_stats","ts":"x","programs":[{"name":"a","run_count":10,"run_time_ns":500,"avg_ns":50},{"name":"b","run_count":0,"run_time_ns":0,"avg_ns":0}]}"#;
        assert_eq!(parse_bpf_stats(l), vec![("a".to_string(), 10, 500), ("b".to_string(), 0, 0)]);
        let mut v = vec![3.0, 1.0, 2.0, 10.0];
        assert_eq!(median(&mut v), 2.5);
    }
}
