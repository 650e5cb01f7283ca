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

use crate::run as run_cmd;

mod kernels;
mod table;

use kernels::{ensure_host, ensure_kernel, KernelSpec, KERNELS};
use table::{print_table, row};

/// Every mode `--mode` accepts.
const MODES: [&str; 4] = ["auto", "fexit", "kprobe", "tracepoint"];
/// The modes `--mode all` boots. No fexit row: on these kernels auto must pick fexit for every
/// signal a test checks (`CONNTRACE_EXPECT_MODE=fexit` in the auto row), so a forced-fexit row
/// would load and attach the same programs and run the same tests again (~3 min a kernel).
/// What forcing adds (no fallback allowed) is unit-tested in the loader's ladder;
/// `--mode fexit` still boots it.
pub(super) const ALL_MODES: [&str; 3] = ["auto", "kprobe", "tracepoint"];

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
    /// test name → (runs passed, runs failed)
    tests: BTreeMap<String, (u32, u32)>,
    /// Tests that skipped themselves (the mode lacks what they need).
    skipped: std::collections::BTreeSet<String>,
    problem: Option<String>,
    /// The guest never reached the test script (virtme-ng or the boot failed): the only case
    /// that is booted again.
    never_ran: bool,
}

fn boot(
    root: &Path,
    stage: &Path,
    vmlinuz: &Path,
    mode: &str,
    exes: &BTreeMap<String, PathBuf>,
    opts: &Options,
) -> Result<BootResult> {
    let timeout = opts.timeout;
    let kernel = vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or("kernel").trim_start_matches("vmlinuz-");
    // One directory per boot, so a second attempt keeps the first one's output.
    static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("conntrace-vm-{}-{kernel}-{mode}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let results = dir.join("results.txt");
    let script = guest_script(stage, mode, exes, opts, &results);
    let script_path = dir.join("run.sh");
    std::fs::write(&script_path, script)?;
    run_cmd(Command::new("chmod").arg("+x").arg(&script_path))?;

    let start = Instant::now();
    // Watchdog: a hung boot or a kernel panic must not hang the run.
    let console = Command::new("timeout")
        .arg(timeout.to_string())
        .args(["vng", "--run"])
        .arg(vmlinuz)
        // --verbose: the kernel's console too, so a panic or a hung-task report is in
        // console.log beside the results.
        .args(["--verbose", "--disable-kvm"])
        .args(tcg_opts(opts.multi_threaded_tcg))
        .arg("--rwdir")
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
    let console_text =
        String::from_utf8_lossy(&console.stdout).into_owned() + &String::from_utf8_lossy(&console.stderr);
    let _ = std::fs::write(dir.join("console.log"), &console_text);
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let (tests, skipped) = parse_results(&text);
    // The script's first line; without it the guest never got as far as the tests.
    let never_ran = !text.starts_with("kernel ");
    let problem = if console.status.code() == Some(124) {
        Some(format!("watchdog: no result within {timeout} s"))
    } else if !text.contains("VMTEST-DONE") {
        let tail: Vec<&str> = console_text.lines().rev().take(25).collect();
        Some(format!(
            "the guest {} (boot failure or kernel panic); {} ends:\n{}",
            if never_ran { "never ran the tests" } else { "died during the tests" },
            dir.join("console.log").display(),
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
    if !tests.values().all(|(_, failed)| *failed == 0) {
        println!("    [{kernel} {mode}] guest output: {}", results.display());
    }
    Ok(BootResult { secs, tests, skipped, problem, never_ran })
}

/// The shell script a guest runs: the integration tests with the staged binaries, in `mode`,
/// appending their output to `results`.
fn guest_script(stage: &Path, mode: &str, exes: &BTreeMap<String, PathBuf>, opts: &Options, results: &Path) -> String {
    let expect = if mode == "auto" { "fexit" } else { mode };
    let mut script = format!(
        "#!/bin/sh\nmount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         export CONNTRACE_BIN={bin}\nexport CONNTRACE_WORKLOAD_BIN={wl}\n\
         export CONNTRACE_EXPECT_MODE={expect}\nexport CONNTRACE_VM_MODE={mode}\nexport CONNTRACE_IN_VM=1\n",
        bin = stage.join("conntrace").display(),
        wl = stage.join("conntrace-workload").display()
    );
    if mode != "auto" {
        script.push_str(&format!("export CONNTRACE_ATTACH_MODE={mode}\n"));
    }
    script.push_str(&format!("echo \"kernel $(uname -r)\" > {r}\n", r = results.display()));
    // `name*`: every test whose name contains `name`, two at a time as in the full run (a race
    // between two tests' conntrace instances only shows so).
    let filter = match opts.only.as_deref() {
        Some(t) => match t.strip_suffix('*') {
            Some(part) => format!(" {part}"),
            None => format!(" --exact {t}"),
        },
        None => String::new(),
    };
    script.push_str(&format!("for run in $(seq {}); do\n", opts.repeat.max(1)));
    for exe in exes.values() {
        // --show-output: passing tests' output too, where a test says it SKIPPED.
        script.push_str(&format!(
            "{} --test-threads=2 --show-output{filter} >> {} 2>&1\n",
            exe.display(),
            results.display()
        ));
    }
    script.push_str("done\n");
    script.push_str(&format!("echo VMTEST-DONE >> {}\n", results.display()));
    script
}

/// Per test, (passed, failed) runs; and the tests that said they SKIPPED.
type Outcomes = (BTreeMap<String, (u32, u32)>, std::collections::BTreeSet<String>);

/// Reads the tests' output a guest wrote.
fn parse_results(text: &str) -> Outcomes {
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
                // `#[ignore]`d tests are not run: neither passed nor failed.
                if outcome.starts_with("ignored") {
                    continue;
                }
                let e = tests.entry(name.trim().to_string()).or_insert((0, 0));
                if outcome.trim_end().ends_with("ok") {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
    (tests, skipped)
}

/// QEMU options for the emulator. Multi-threaded TCG (QEMU's default, one host thread per
/// vCPU) can run a stale translation of kernel code that another vCPU just patched: seen as
/// "Oops: int3" at `alloc_fd+0x1` and a panic when a BPF trampoline was attached while a
/// process called socket() (text_poke_bp had already replaced the int3 by the call). Real CPUs
/// cannot do that (text_poke_bp serialises every CPU), so it is the emulator's; single-threaded
/// TCG runs the vCPUs in turn on one host thread and never sees stale code.
fn tcg_opts(multi_threaded: bool) -> Vec<String> {
    if multi_threaded {
        Vec::new()
    } else {
        vec!["--qemu-opts=-accel tcg,thread=single".to_string()]
    }
}

/// What `cargo xtask vm-test` was asked for.
pub struct Options {
    pub kernel: String,
    pub mode: String,
    /// Watchdog per boot, seconds.
    pub timeout: u64,
    /// Run only this test (exact name; `part*`: the tests whose name contains `part`).
    pub only: Option<String>,
    /// Run the tests this many times in each boot.
    pub repeat: u32,
    /// QEMU's multi-threaded TCG (faster, but see `tcg_opts`).
    pub multi_threaded_tcg: bool,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let kernels: Vec<KernelSpec> = if opts.kernel == "all" {
        KERNELS.to_vec()
    } else {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        vec![*KERNELS
            .iter()
            .find(|k| k.name == opts.kernel)
            .with_context(|| format!("--kernel must be one of {}, all", names.join(", ")))?]
    };
    if opts.mode != "all" && !MODES.contains(&opts.mode.as_str()) {
        bail!("--mode must be one of auto, fexit, kprobe, tracepoint, all");
    }
    ensure_host()?;
    let images: Vec<(KernelSpec, PathBuf)> =
        kernels.iter().map(|k| Ok((*k, ensure_kernel(k)?))).collect::<Result<_>>()?;
    let (stage, exes) = build(root)?;

    let mut rows = Vec::new();
    for (k, image) in &images {
        let modes: Vec<&str> = if opts.mode == "all" { k.modes.to_vec() } else { vec![opts.mode.as_str()] };
        for m in modes {
            println!("xtask: booting {} in mode {m}", image.display());
            let mut r = boot(root, &stage, image, m, &exes, opts)?;
            let mut notes = Vec::new();
            if let (Some(p), true) = (&r.problem, r.never_ran) {
                // The guest never reached the tests (virtme-ng failed to start it, or the
                // emulated boot hung): boot once more, and say so in the table. A guest that
                // died during the tests, and tests that failed, are never retried: a failure
                // is a failure.
                let first = p.lines().next().unwrap_or("").to_string();
                println!("xtask: that guest never ran the tests ({first}), booting it once more");
                notes.push(format!("RETRIED: the first boot never ran the tests ({first})"));
                r = boot(root, &stage, image, m, &exes, opts)?;
            }
            rows.push(row(k.name, m, r, notes));
        }
    }
    print_table(&rows);
    let runs: u32 = rows.iter().map(|r| r.runs).sum();
    let passed: u32 = rows.iter().map(|r| r.passed).sum();
    println!("vm-test: {passed} passed, {} failed", runs - passed);
    let retried = rows.iter().filter(|r| r.notes.iter().any(|n| n.starts_with("RETRIED"))).count();
    if retried > 0 {
        println!("vm-test: {retried} boot(s) retried because the guest did not finish");
    }
    if rows.iter().any(|r| {
        r.cells.contains(&"FAIL")
            || r.passed != r.runs
            || r.runs == 0
            || r.notes.iter().any(|n| !n.starts_with("RETRIED"))
    }) {
        bail!("kernel matrix failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outcomes_per_run_and_skips() {
        let text = "kernel 6.1.0-57-amd64\nSKIPPED tcp_mem_refusals: needs tracepoints\n\
                    test tcp_mem_refusals ... ok\ntest emfile_is_counted ... FAILED\n\
                    test emfile_is_counted ... ok\ntest slow_one ... ignored, needs a fix\nVMTEST-DONE\n";
        let (tests, skipped) = parse_results(text);
        assert_eq!(tests["emfile_is_counted"], (1, 1));
        assert!(!tests.contains_key("slow_one"), "an ignored test neither passed nor failed");
        assert_eq!(tests["tcp_mem_refusals"], (1, 0));
        assert_eq!(skipped.into_iter().collect::<Vec<_>>(), ["tcp_mem_refusals"]);
    }
}
