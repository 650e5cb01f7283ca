//! Project tasks: `cargo xtask setup | test | lint`.
//!
//! `setup` makes a fresh machine ready (idempotent, quick when done); `test` is the one test
//! command the README and CI use.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs: nightly rust-src, bpf-linker for the nightly's
    /// LLVM, the command-line tools the tests use; mount tracefs.
    Setup,
    /// Build everything and run all tests (unit and, as root, the kernel integration tests).
    Test,
    /// rustfmt check and clippy with warnings as errors, host and eBPF crates.
    Lint,
    /// Boots Debian's stock kernels under QEMU (virtme-ng, software emulation) and runs the
    /// integration suite inside with the release binaries built here, per attach mode.
    VmTest {
        /// 6.1, 6.12, 6.12-rt or all. The newest Debian package of each is used (printed);
        /// CONNTRACE_VM_KERNEL_6_12=linux-image-6.12.111+deb12-amd64-unsigned (and _6_1,
        /// _6_12_RT) picks an exact one.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// auto, fexit, kprobe, tracepoint or all.
        #[arg(long, default_value = "all")]
        mode: String,
        /// Watchdog per boot, seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Run only this integration test (exact name), or with `part*` the tests whose name
        /// contains `part`.
        #[arg(long)]
        only: Option<String>,
        /// Run the tests this many times in each boot (to measure how often a test fails).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// QEMU's multi-threaded TCG: faster, but its vCPUs can run stale copies of kernel
        /// code patched by another vCPU (attaching BPF trampolines does that), which panics
        /// the guest now and then.
        #[arg(long)]
        multi_threaded_tcg: bool,
    },
    /// Overhead on a loopback connection-churn loop: alternating runs without and with
    /// `conntrace watch`, medians and ratio, plus per-program cost from the kernel's BPF stats.
    Bench {
        /// Pairs of runs (one without, one with conntrace; the order alternates).
        #[arg(long, default_value_t = 6)]
        pairs: u32,
        /// Seconds per run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Workloads, comma-separated: nginx-keepalive, nginx-close, getppid, churn, or all.
        #[arg(long, default_value = "all")]
        workload: String,
        /// More `conntrace watch` arguments for the traced runs (e.g. `--attach-mode tracepoint`).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        conntrace_args: String,
        /// Run `sleep` instead of conntrace: the ratios show the machine's noise.
        #[arg(long)]
        calibrate: bool,
    },
    /// conntrace left on under a steady churn: memory, fds, CPU over time; fails when they grow,
    /// an update is lost or a connection is not counted.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Connections per second.
        #[arg(long, default_value_t = 5000)]
        rate: u32,
        /// More `conntrace watch` arguments.
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        conntrace_args: String,
    },
}

mod bench;
mod vmtest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn is_root() -> bool {
    output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

/// The LLVM major version of the nightly toolchain (bpf-linker must be built against it).
fn nightly_llvm_major() -> Result<String> {
    let v = output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV")?;
    let line = v.lines().find(|l| l.starts_with("LLVM version:")).context("no LLVM version in rustc -vV")?;
    let ver = line.trim_start_matches("LLVM version:").trim();
    Ok(ver.split('.').next().unwrap_or(ver).to_string())
}

fn setup() -> Result<()> {
    // 1. Nightly with rust-src (the eBPF crate is built with -Z build-std=core).
    if output(Command::new("rustc").args(["+nightly", "--version"])).is_none() {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context("nightly sysroot")?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    // 2. bpf-linker linked against the nightly's own libLLVM (a plain `cargo install`
    //    wants a system LLVM of another version).
    let llvm = nightly_llvm_major()?;
    let have = output(Command::new("bpf-linker").arg("--version")).is_some();
    let stamp = home_cargo().join(format!(".bpf-linker-llvm-{llvm}"));
    if !have || !stamp.exists() {
        let lib = sysroot.join("lib");
        let so = std::fs::read_dir(&lib)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
            })
            .context("nightly ships no libLLVM.so")?;
        let dir = std::env::temp_dir().join("conntrace-bpf-linker-llvm");
        std::fs::create_dir_all(&dir)?;
        let link = dir.join("libLLVM.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link)?;
        run(Command::new("cargo")
            .args(["+nightly", "install", "--force", "bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm}"))
            .env("RUSTFLAGS", format!("-L {} -C link-args=-Wl,-rpath,{}", dir.display(), lib.display())))?;
        std::fs::write(&stamp, "")?;
    }

    // 3. Tools the integration tests drive (Debian package names).
    // chromium: the HTML report is opened in it headless and its charts checked on a screenshot.
    let wanted = [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("setpriv", "util-linux"),
        ("sysctl", "procps"),
        ("chromium", "chromium"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none())
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing {missing:?}: install them with apt-get (needs root)");
        }
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get").args(["install", "-y", "-q"]).args(&missing))?;
    }

    // 4. tracefs, for classic tracepoints (not mounted on a fresh machine).
    if !Path::new("/sys/kernel/tracing/events").exists() {
        if is_root() {
            run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
        } else {
            eprintln!("xtask: tracefs not mounted; as root run: mount -t tracefs tracefs /sys/kernel/tracing");
        }
    }
    eprintln!("xtask: setup done");
    Ok(())
}

fn home_cargo() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Totals over every `test result:` line of a cargo test run, and the tests that reported
/// `SKIPPED` (root-only tests run without root).
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl Totals {
    fn add_line(&mut self, line: &str) {
        if line.starts_with("SKIPPED ") {
            self.skipped += 1;
        }
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

fn test() -> Result<()> {
    if !is_root() {
        eprintln!("xtask: not root: the kernel integration tests will report SKIPPED (run with sudo for them)");
    }
    run(Command::new("cargo").args(["build", "--workspace", "--exclude", "probe-ebpf"]).current_dir(root()))?;
    // --nocapture: the SKIPPED lines and the attach modes the tests print stay visible.
    let mut child = Command::new("sh")
        .args(["-c", "cargo test --workspace --exclude probe-ebpf -- --nocapture 2>&1"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child.wait()?;
    // Root-gated tests that skipped were counted as passed by libtest.
    let passed = totals.passed.saturating_sub(totals.skipped);
    println!("summary: {passed} passed, {} failed, {} skipped", totals.failed, totals.skipped);
    if !status.success() || totals.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

fn lint() -> Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]).current_dir(root()))?;
    run(Command::new("cargo")
        .args(["clippy", "--workspace", "--exclude", "probe-ebpf", "--all-targets", "--", "-D", "warnings"])
        .current_dir(root()))?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "-p",
            "probe-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(root()))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Test => test(),
        Task::Lint => lint(),
        Task::Bench { pairs, seconds, workload, conntrace_args, calibrate } => {
            let workloads = if workload == "all" {
                bench::Workload::ALL.to_vec()
            } else {
                workload
                    .split(',')
                    .map(|w| {
                        bench::Workload::parse(w.trim()).with_context(|| {
                            format!("unknown workload {w:?}: use nginx-keepalive, nginx-close, getppid, churn or all")
                        })
                    })
                    .collect::<Result<_>>()?
            };
            let conntrace_args = conntrace_args.split_whitespace().map(String::from).collect();
            bench::bench(&bench::Options { pairs, seconds, workloads, conntrace_args, calibrate })
        }
        Task::Soak { minutes, rate, conntrace_args } => {
            let conntrace_args = conntrace_args.split_whitespace().map(String::from).collect();
            bench::soak::soak(&bench::soak::Options { minutes, rate, conntrace_args })
        }
        Task::VmTest { kernel, mode, timeout, only, repeat, multi_threaded_tcg } => {
            vmtest::run(&root(), &vmtest::Options { kernel, mode, timeout, only, repeat, multi_threaded_tcg })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_from_cargo_output() {
        let mut t = Totals::default();
        for l in [
            "test result: ok. 21 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "SKIPPED emfile_is_counted: needs root",
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.0s",
        ] {
            t.add_line(l);
        }
        assert_eq!(t, Totals { passed: 24, failed: 2, skipped: 1 });
    }
}
