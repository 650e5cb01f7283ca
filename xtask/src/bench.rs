//! `cargo xtask bench`: what conntrace costs a connection-churning workload, by alternating
//! runs without and with `conntrace watch`, and the kernel's own per-program BPF run time.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{is_root, output, root, run};

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

/// One churn run in a fresh network namespace; returns connections per second.
fn churn(workload: &Path, seconds: f64) -> Result<f64> {
    let script = format!(
        "ip link set lo up; sysctl -qw net.ipv4.ip_local_port_range='1024 65535'; \
         exec {} churn --addr 127.0.0.1:9000 --seconds {seconds}",
        workload.display()
    );
    let out = output(Command::new("unshare").args(["-n", "sh", "-ec", &script])).context("churn run failed")?;
    let line = out.lines().last().context("churn printed nothing")?;
    let key = "\"per_sec\":";
    let at = line.find(key).context("no per_sec in churn output")? + key.len();
    let num: String = line[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    Ok(num.parse()?)
}

/// A `conntrace watch --json` running beside a workload.
struct Traced {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Traced {
    fn start(conntrace: &Path, stats: bool) -> Result<Traced> {
        use std::io::BufRead as _;
        let mut child = Command::new(conntrace)
            .args(["watch", "--json", "--interval", "1s"])
            .args(stats.then_some("--bpf-stats"))
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        // Wait until everything is attached.
        for line in lines.by_ref() {
            if line?.contains("\"type\":\"status\"") {
                return Ok(Traced { child, lines });
            }
        }
        bail!("conntrace exited before attaching")
    }

    /// SIGTERM; returns everything printed after the first status line.
    fn stop(mut self) -> Result<Vec<String>> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        let rest: Vec<String> = self.lines.map_while(Result::ok).collect();
        self.child.wait()?;
        Ok(rest)
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

pub fn bench(pairs: u32, seconds: f64) -> Result<()> {
    if !is_root() {
        bail!("bench needs root (it loads eBPF programs and creates network namespaces)");
    }
    run(Command::new("cargo").args(["build", "--release", "-p", "probe-user", "-p", "tests"]).current_dir(root()))?;
    let conntrace = root().join("target/release/conntrace");
    let workload = root().join("target/release/conntrace-workload");
    let traced = |stats: bool| -> Result<(f64, Vec<String>)> {
        let t = Traced::start(&conntrace, stats)?;
        let rate = churn(&workload, seconds);
        let rest = t.stop()?;
        Ok((rate?, rest))
    };

    let (mut base, mut with) = (Vec::new(), Vec::new());
    println!("{:<5} {:>14} {:>14} {:>7}", "pair", "without (c/s)", "with (c/s)", "ratio");
    for i in 0..pairs {
        // Throughput runs go without BPF statistics: the kernel's per-run accounting (two
        // clock reads per program run) would inflate the cost being measured.
        let (b, w) = if i % 2 == 0 {
            let b = churn(&workload, seconds)?;
            (b, traced(false)?.0)
        } else {
            let w = traced(false)?.0;
            (churn(&workload, seconds)?, w)
        };
        println!("{:<5} {:>14.0} {:>14.0} {:>7.3}", i + 1, b, w, w / b);
        base.push(b);
        with.push(w);
    }
    let mut ratios: Vec<f64> = base.iter().zip(&with).map(|(b, w)| w / b).collect();
    let (mb, mw, mr) = (median(&mut base), median(&mut with), median(&mut ratios));
    println!(
        "median: without {mb:.0} c/s, with {mw:.0} c/s, pair ratio {mr:.3} (throughput cost {:.1}%)",
        (1.0 - mr) * 100.0
    );

    // One more traced run, with statistics, for the cost of each program.
    let (rate, rest) = traced(true)?;
    let connections = (rate * seconds).max(1.0);
    let stats = rest.iter().rev().find(|l| l.contains("\"type\":\"bpf_stats\"")).context("no bpf_stats line")?;
    println!("\n{:<22} {:>12} {:>10} {:>10}", "program", "runs", "ns/run", "runs/conn");
    let mut per_conn = 0.0;
    for (name, cnt, ns) in parse_bpf_stats(stats) {
        let avg = ns.checked_div(cnt).unwrap_or(0);
        per_conn += ns as f64 / connections;
        println!("{name:<22} {cnt:>12} {avg:>10} {:>10.2}", cnt as f64 / connections);
    }
    println!("BPF time per connection: {per_conn:.0} ns (statistics enabled adds its own clock reads)");
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
