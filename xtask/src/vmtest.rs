//! `cargo xtask vm-test`: the kernel matrix. Debian's stock 6.1 and 6.12 kernels (where
//! fentry/fexit and kprobes work, unlike this machine's) boot under QEMU with software
//! emulation through virtme-ng, sharing this machine's filesystem, and run the integration
//! tests with the release binaries built here, once per attach mode.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{is_root, output, run as run_cmd};

const MODES: [&str; 4] = ["auto", "fexit", "kprobe", "tracepoint"];
const KERNELS: [&str; 2] = ["6.1", "6.12"];

/// Which signal each integration test proves (tests not listed prove the CLI).
fn signals_of(test: &str) -> &'static [&'static str] {
    match test {
        "ephemeral_port_exhaustion_is_counted_exactly" => &["port_assign", "connect"],
        "ephemeral_port_exhaustion_over_ipv6" | "pid_filter_shows_only_that_process" => &["port_assign"],
        "ephemeral_ports_verdict_when_established_connections_hold_the_ports"
        | "ephemeral_ports_verdict_when_time_wait_holds_the_ports" => &["port_assign"],
        "time_wait_is_charged_to_the_client_that_closed_first"
        | "time_wait_pressure_is_predicted_before_the_ports_run_out" => &["time_wait"],
        "emfile_is_counted_with_the_limit_in_force" | "fd_limit_verdict_with_evidence_then_resolution" => &["fd_alloc"],
        "enfile_is_counted_with_file_max_lowered" => &["fd_alloc"],
        "non_blocking_connect_outcomes_are_counted_when_they_happen" => &["connect"],
        "tw_bucket_overflow_is_charged_to_the_client" => &["time_wait", "tw_overflow"],
        "resets_after_close_are_not_time_wait" => &["time_wait"],
        "full_accept_queue_is_charged_to_the_listener_owner" => &["accept_queue"],
        "exhausted_tcp_memory_is_named_with_tcp_mem" => &["tcp_mem"],
        "full_conntrack_table_is_named_and_charged_to_the_connecting_process" => &["netfilter_drop"],
        "full_syn_queue_without_syncookies_drops_syns" | "full_syn_queue_with_syncookies_is_still_named" => {
            &["syn_queue"]
        }
        "bind_before_connect_hoards_ports_across_destinations" | "non_local_address_is_not_port_exhaustion" => {
            &["bind"]
        }
        _ => &[],
    }
}

/// Installs what the matrix needs on this machine (Debian packages, virtme-ng from PyPI).
fn ensure_host() -> Result<()> {
    if !is_root() {
        bail!("vm-test needs root (apt-get, and the tests inside the VM load eBPF)");
    }
    let have = |bin: &str| output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_some();
    let mut pkgs = Vec::new();
    if !have("qemu-system-x86_64") {
        pkgs.push("qemu-system-x86");
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        pkgs.push("busybox-static");
    }
    // The conntrack test needs a netfilter rule that uses conntrack in its namespace.
    if !have("nft") {
        pkgs.push("nftables");
    }
    if !pkgs.is_empty() {
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(Command::new("apt-get").args(["install", "-y", "-q"]).args(&pkgs))?;
    }
    if !have("vng") {
        run_cmd(Command::new("pip").args(["install", "-q", "virtme-ng"]))?;
    }
    Ok(())
}

fn find_vmlinuz(prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("vmlinuz-{prefix}"))))
        .collect();
    found.sort();
    found.pop()
}

/// The kernel image for `version`, installing Debian's package when missing.
fn ensure_kernel(version: &str) -> Result<PathBuf> {
    let prefix = format!("{version}.");
    if let Some(p) = find_vmlinuz(&prefix) {
        return Ok(p);
    }
    let pkg = match version {
        // bookworm's default kernel is 6.1.
        "6.1" => "linux-image-amd64".to_string(),
        _ => {
            let _ = output(Command::new("apt-get").args(["update", "-q"]));
            let list = output(Command::new("apt-cache").args([
                "search",
                "--names-only",
                &format!("^linux-image-{version}\\."),
            ]))
            .unwrap_or_default();
            // The generic flavour (cloud lacks the 9p/virtiofs modules virtme-ng needs).
            let mut names: Vec<&str> = list
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| {
                    n.ends_with("-amd64-unsigned")
                        || (n.ends_with("-amd64") && !n.contains("cloud") && !n.contains("rt"))
                })
                .collect();
            names.sort();
            names.pop().with_context(|| format!("no Debian package for kernel {version}"))?.to_string()
        }
    };
    run_cmd(Command::new("apt-get").args(["install", "-y", "-q", &pkg]))?;
    find_vmlinuz(&prefix).with_context(|| format!("{pkg} installed no /boot/vmlinuz-{prefix}*"))
}

/// Release builds of conntrace and the test executables (name → path), copied to a stage
/// directory so that building in the tree while the matrix runs cannot change what the
/// guests execute. Returns the stage directory too.
fn build(root: &Path) -> Result<(PathBuf, BTreeMap<String, PathBuf>)> {
    run_cmd(Command::new("cargo").args(["build", "--release", "-p", "probe-user", "-p", "tests"]).current_dir(root))?;
    let out = Command::new("cargo")
        .args(["test", "--release", "-p", "tests", "--no-run", "--message-format=json"])
        .current_dir(root)
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed");
    }
    let stage = root.join(format!("target/vmtest-stage/{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    for bin in ["conntrace", "conntrace-workload"] {
        std::fs::copy(root.join("target/release").join(bin), stage.join(bin))
            .with_context(|| format!("staging {bin}"))?;
    }
    let mut exes = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // {"reason":"compiler-artifact",...,"target":{"kind":["test"],"name":"watch",...},"executable":"/…"}
        if !line.contains("\"compiler-artifact\"") || !line.contains("\"kind\":[\"test\"]") {
            continue;
        }
        let field = |key: &str| -> Option<String> {
            let at = line.find(key)? + key.len();
            Some(line[at..].split('"').next()?.to_string())
        };
        if let (Some(name), Some(exe)) = (field("\"name\":\""), field("\"executable\":\"")) {
            let staged = stage.join(format!("test-{name}"));
            std::fs::copy(&exe, &staged).with_context(|| format!("staging {exe}"))?;
            exes.insert(name, staged);
        }
    }
    if exes.is_empty() {
        bail!("no test executables found");
    }
    Ok((stage, exes))
}

struct BootResult {
    secs: f64,
    /// The guest's test output.
    results: PathBuf,
    /// test name → passed
    tests: BTreeMap<String, bool>,
    /// Tests that skipped themselves (the mode lacks what they need).
    skipped: std::collections::BTreeSet<String>,
    problem: Option<String>,
}

fn boot(
    root: &Path,
    stage: &Path,
    vmlinuz: &Path,
    mode: &str,
    exes: &BTreeMap<String, PathBuf>,
    timeout: u64,
) -> Result<BootResult> {
    let kernel = vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or("kernel").trim_start_matches("vmlinuz-");
    // One directory per boot, so a second attempt keeps the first one's output.
    static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("conntrace-vm-{}-{kernel}-{mode}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let results = dir.join("results.txt");
    let expect = if mode == "auto" { "fexit" } else { mode };
    let mut script = format!(
        "#!/bin/sh\nmount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         export CONNTRACE_BIN={bin}\nexport CONNTRACE_WORKLOAD_BIN={wl}\n\
         export CONNTRACE_EXPECT_MODE={expect}\nexport CONNTRACE_IN_VM=1\n",
        bin = stage.join("conntrace").display(),
        wl = stage.join("conntrace-workload").display()
    );
    if mode != "auto" {
        script.push_str(&format!("export CONNTRACE_ATTACH_MODE={mode}\n"));
    }
    script.push_str(&format!("echo \"kernel $(uname -r)\" > {r}\n", r = results.display()));
    for exe in exes.values() {
        // --show-output: passing tests' output too, where a test says it SKIPPED.
        script.push_str(&format!("{} --test-threads=2 --show-output >> {} 2>&1\n", exe.display(), results.display()));
    }
    script.push_str(&format!("echo VMTEST-DONE >> {}\n", results.display()));
    let script_path = dir.join("run.sh");
    std::fs::write(&script_path, script)?;
    run_cmd(Command::new("chmod").arg("+x").arg(&script_path))?;

    let start = Instant::now();
    // Watchdog: a hung boot or a kernel panic must not hang the run.
    let console = Command::new("timeout")
        .arg(timeout.to_string())
        .args(["vng", "--run"])
        .arg(vmlinuz)
        .args(["--disable-kvm", "--rwdir"])
        .arg(root)
        .arg("--rwdir")
        .arg(&dir)
        .arg("--cwd")
        .arg(root)
        .arg("--exec")
        .arg(&script_path)
        .output()
        .context("running vng")?;
    let secs = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let mut tests = BTreeMap::new();
    let mut skipped = std::collections::BTreeSet::new();
    for line in text.lines() {
        // Tests that cannot run in this mode say so ("SKIPPED name: why") and pass.
        if let Some(rest) = line.strip_prefix("SKIPPED ") {
            if let Some((name, _)) = rest.split_once(':') {
                skipped.insert(name.trim().to_string());
            }
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, outcome)) = rest.split_once(" ... ") {
                tests.insert(name.trim().to_string(), outcome.trim_end().ends_with("ok"));
            }
        }
    }
    let problem = if console.status.code() == Some(124) {
        Some(format!("watchdog: no result within {timeout} s"))
    } else if !text.contains("VMTEST-DONE") {
        let con = String::from_utf8_lossy(&console.stdout).into_owned() + &String::from_utf8_lossy(&console.stderr);
        let tail: Vec<&str> = con.lines().rev().take(15).collect();
        Some(format!(
            "the guest did not finish (boot failure or kernel panic); console tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    } else {
        None
    };
    // Keep failing output visible: the panic line and the assertion after it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked") {
            for l in &lines[i..(i + 4).min(lines.len())] {
                println!("    [{kernel} {mode}] {}", l.chars().take(600).collect::<String>());
            }
        }
    }
    Ok(BootResult { secs, results, tests, skipped, problem })
}

pub fn run(root: &Path, kernel: &str, mode: &str, timeout: u64) -> Result<()> {
    let kernels: Vec<&str> = if kernel == "all" { KERNELS.to_vec() } else { vec![kernel] };
    let modes: Vec<&str> = if mode == "all" { MODES.to_vec() } else { vec![mode] };
    for k in &kernels {
        if !KERNELS.contains(k) {
            bail!("--kernel must be one of 6.1, 6.12, all");
        }
    }
    for m in &modes {
        if !MODES.contains(m) {
            bail!("--mode must be one of auto, fexit, kprobe, tracepoint, all");
        }
    }
    ensure_host()?;
    let images: Vec<(String, PathBuf)> =
        kernels.iter().map(|k| Ok((k.to_string(), ensure_kernel(k)?))).collect::<Result<_>>()?;
    let (stage, exes) = build(root)?;

    let signals = [
        "port_assign",
        "time_wait",
        "tw_overflow",
        "fd_alloc",
        "connect",
        "bind",
        "tcp_mem",
        "netfilter_drop",
        "accept_queue",
        "syn_queue",
    ];
    let mut rows = Vec::new();
    let mut failed = false;
    for (k, image) in &images {
        for m in &modes {
            println!("xtask: booting {} in mode {m}", image.display());
            let mut r = boot(root, &stage, image, m, &exes, timeout)?;
            let mut flaky_tests: Vec<String> = Vec::new();
            if let Some(p) = &r.problem {
                // The guest did not finish (virtme-ng failed to start it, or the emulated guest
                // died mid-run, seen once in 16 boots): boot once more, and say so.
                println!("xtask: that boot did not finish ({}), retrying once", p.lines().next().unwrap_or(""));
                r = boot(root, &stage, image, m, &exes, timeout)?;
            } else if r.tests.values().any(|ok| !ok) {
                // Emulation is ~10x slower and its timing uneven: a test that fails once is
                // run again (the whole boot) and reported as flaky; failing twice is a failure.
                let failed: Vec<String> = r.tests.iter().filter(|(_, ok)| !**ok).map(|(t, _)| t.clone()).collect();
                println!(
                    "xtask: {} failed in {}, booting again to tell a flake from a failure",
                    failed.join(", "),
                    r.results.display()
                );
                let again = boot(root, &stage, image, m, &exes, timeout)?;
                if again.problem.is_none() {
                    let flaky: Vec<&String> = failed.iter().filter(|t| again.tests.get(*t) == Some(&true)).collect();
                    flaky_tests = flaky.iter().map(|t| t.to_string()).collect();
                    if !flaky.is_empty() {
                        println!(
                            "xtask: FLAKY (failed once, passed again): {}",
                            flaky.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        );
                    }
                    r = again;
                }
            }
            let mut cells = Vec::new();
            for sig in signals {
                let relevant: Vec<(&String, bool)> =
                    r.tests.iter().filter(|(t, _)| signals_of(t).contains(&sig)).map(|(t, ok)| (t, *ok)).collect();
                let pass = r.problem.is_none() && !relevant.is_empty() && relevant.iter().all(|(_, ok)| *ok);
                failed |= !pass;
                let all_skipped = pass && relevant.iter().all(|(t, _)| r.skipped.contains(*t));
                cells.push(if all_skipped {
                    "n/a"
                } else if pass {
                    "pass"
                } else {
                    "FAIL"
                });
            }
            let others_ok = r.tests.values().all(|ok| *ok) && !r.tests.is_empty();
            failed |= !others_ok || r.problem.is_some();
            let passed = r.tests.values().filter(|ok| **ok).count();
            let problem = match (r.problem, flaky_tests.is_empty()) {
                (Some(p), _) => Some(p),
                (None, false) => {
                    Some(format!("FLAKY (failed once, passed on a second boot): {}", flaky_tests.join(", ")))
                }
                (None, true) => None,
            };
            rows.push((k.clone(), m.to_string(), cells, format!("{passed}/{}", r.tests.len()), r.secs, problem));
        }
    }
    let mut header = format!("\n{:<7} {:<11}", "kernel", "mode");
    for sig in signals {
        header.push_str(&format!(" {sig:<12}"));
    }
    println!("{header} {:>7} {:>8}", "tests", "boot+run");
    for (k, m, cells, tests, secs, problem) in &rows {
        let mut line = format!("{k:<7} {m:<11}");
        for c in cells {
            line.push_str(&format!(" {c:<12}"));
        }
        println!("{line} {tests:>7} {secs:>7.0}s");
        if let Some(p) = problem {
            println!("        {p}");
        }
    }
    let total: usize =
        rows.iter().map(|r| r.3.split('/').nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)).sum();
    let passed: usize =
        rows.iter().map(|r| r.3.split('/').next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)).sum();
    println!("vm-test: {passed} passed, {} failed", total - passed);
    if failed {
        bail!("kernel matrix failed");
    }
    Ok(())
}
