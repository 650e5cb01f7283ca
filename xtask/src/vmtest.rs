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

use probe_common::signal::Signal;

use crate::{is_root, output, run as run_cmd};

const MODES: [&str; 4] = ["auto", "fexit", "kprobe", "tracepoint"];

/// Which signals each integration test proves (tests not listed prove the CLI).
fn signals_of(test: &str) -> &'static [Signal] {
    use Signal::*;
    match test {
        "ephemeral_port_exhaustion_is_counted_exactly" => &[PortAssign, Connect],
        "ephemeral_port_exhaustion_over_ipv6" | "pid_filter_shows_only_that_process" => &[PortAssign],
        "ephemeral_ports_verdict_when_established_connections_hold_the_ports"
        | "ephemeral_ports_verdict_when_time_wait_holds_the_ports" => &[PortAssign],
        "time_wait_is_charged_to_the_client_that_closed_first"
        | "time_wait_pressure_is_predicted_before_the_ports_run_out" => &[TimeWait],
        "emfile_is_counted_with_the_limit_in_force" | "fd_limit_verdict_with_evidence_then_resolution" => &[FdAlloc],
        "enfile_is_counted_with_file_max_lowered" => &[FdAlloc],
        "non_blocking_connect_outcomes_are_counted_when_they_happen" => &[Connect],
        "tw_bucket_overflow_is_charged_to_the_client" => &[TimeWait, TwOverflow],
        "resets_after_close_are_not_time_wait" => &[TimeWait],
        "full_accept_queue_is_charged_to_the_listener_owner" => &[AcceptQueue],
        "exhausted_tcp_memory_is_named_with_tcp_mem" => &[TcpMem],
        "full_conntrack_table_is_named_and_charged_to_the_connecting_process" => &[NetfilterDrop],
        "full_syn_queue_without_syncookies_drops_syns" | "full_syn_queue_with_syncookies_is_still_named" => &[SynQueue],
        "bind_before_connect_hoards_ports_across_destinations" | "non_local_address_is_not_port_exhaustion" => &[Bind],
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

/// A Debian kernel flavour the matrix boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `-amd64`: the kernel most hosts run.
    Generic,
    /// `-rt-amd64`: PREEMPT_RT (industrial and low-latency hosts).
    Rt,
}

/// One row group of the matrix: a kernel series in one flavour.
#[derive(Debug, Clone, Copy)]
struct KernelSpec {
    /// What `--kernel` and the table call it.
    name: &'static str,
    /// Debian's version prefix (`6.1` matches `6.1.0-57`, `6.12` matches `6.12.117+deb12`).
    series: &'static str,
    flavour: Flavour,
    /// The modes this kernel runs in under `--mode all` (the RT row is one auto boot: its
    /// hooks are the generic kernel's, and emulating it costs more).
    modes: &'static [&'static str],
}

const KERNELS: [KernelSpec; 3] = [
    KernelSpec { name: "6.1", series: "6.1", flavour: Flavour::Generic, modes: &MODES },
    KernelSpec { name: "6.12", series: "6.12", flavour: Flavour::Generic, modes: &MODES },
    KernelSpec { name: "6.12-rt", series: "6.12", flavour: Flavour::Rt, modes: &["auto"] },
];

/// The kernel release (what `uname -r` and `/boot/vmlinuz-*` say) of a Debian kernel image
/// package name, when it is `spec`'s series and flavour: `linux-image-6.12.117+deb12-amd64`
/// and its `-unsigned` twin give `6.12.117+deb12-amd64`; `-rt-`, `-cloud-`, `-dbg` and
/// meta-packages give None for the generic flavour.
fn release_of(pkg: &str, spec: &KernelSpec) -> Option<String> {
    let rest = pkg.strip_prefix("linux-image-")?;
    let release = rest.strip_suffix("-unsigned").unwrap_or(rest);
    release_matches(release, spec).then(|| release.to_string())
}

/// True when a kernel release (`6.1.0-57-amd64`, `6.12.117+deb12-rt-amd64`) is `spec`'s
/// series and flavour.
fn release_matches(release: &str, spec: &KernelSpec) -> bool {
    let suffix = match spec.flavour {
        Flavour::Generic => "-amd64",
        Flavour::Rt => "-rt-amd64",
    };
    let Some(version) = release.strip_suffix(suffix) else { return false };
    // Every '-'-separated part of the version is numeric-led (`6.1.0`, `57`, `6.12.117+deb12`):
    // that rules out flavours (`rt`, `cloud`) left in front of the generic suffix.
    let numeric = version.split('-').all(|part| part.starts_with(|c: char| c.is_ascii_digit()));
    let in_series = version.strip_prefix(spec.series).is_some_and(|r| r.starts_with('.'));
    numeric && in_series
}

/// Orders kernel versions by their numbers (`6.12.99` before `6.12.117`), not as strings.
fn version_key(release: &str) -> Vec<u64> {
    release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// The newest release among `candidates` that is `spec`'s series and flavour.
fn newest<'a>(candidates: impl Iterator<Item = &'a str>, spec: &KernelSpec) -> Option<String> {
    candidates.filter(|r| release_matches(r, spec)).max_by_key(|r| version_key(r)).map(str::to_string)
}

/// The environment variable that names an exact package for `spec`
/// (`CONNTRACE_VM_KERNEL_6_12=linux-image-6.12.111+deb12-amd64-unsigned`).
fn override_var(spec: &KernelSpec) -> String {
    format!("CONNTRACE_VM_KERNEL_{}", spec.name.replace(['.', '-'], "_").to_uppercase())
}

/// The kernel image for `spec`: the package named by its override variable, else the newest
/// Debian package of its series and flavour (installed when missing), else the newest such
/// image already in /boot when the archive cannot be asked.
fn ensure_kernel(spec: &KernelSpec) -> Result<PathBuf> {
    let var = override_var(spec);
    let chosen = match std::env::var(&var) {
        Ok(pkg) => {
            let release = pkg
                .strip_prefix("linux-image-")
                .map(|r| r.strip_suffix("-unsigned").unwrap_or(r).to_string())
                .with_context(|| {
                    format!("{var}={pkg}: expected a package name like linux-image-6.12.117+deb12-amd64")
                })?;
            Some((pkg, release))
        }
        Err(_) => {
            let _ = output(Command::new("apt-get").args(["update", "-q"]));
            let list = output(Command::new("apt-cache").args([
                "search",
                "--names-only",
                &format!("^linux-image-{}\\.", spec.series.replace('.', "\\.")),
            ]))
            .unwrap_or_default();
            let pkgs: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
            let releases: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, spec)).collect();
            newest(releases.iter().map(String::as_str), spec).map(|release| {
                // Prefer the unsigned image (no shim dependencies); either boots the same way.
                let unsigned = format!("linux-image-{release}-unsigned");
                let pkg = if pkgs.contains(&unsigned.as_str()) { unsigned } else { format!("linux-image-{release}") };
                (pkg, release)
            })
        }
    };
    let Some((pkg, release)) = chosen else {
        let installed: Vec<String> = std::fs::read_dir("/boot")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
            .collect();
        let release = newest(installed.iter().map(String::as_str), spec)
            .with_context(|| format!("no Debian package for kernel {} (apt-cache search found none)", spec.name))?;
        println!("xtask: kernel {}: no package list; using the installed {release}", spec.name);
        return Ok(PathBuf::from(format!("/boot/vmlinuz-{release}")));
    };
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    println!(
        "xtask: kernel {}: {pkg}{} (set {var} to choose another package)",
        spec.name,
        if image.exists() { ", installed" } else { "" }
    );
    if !image.exists() {
        run_cmd(Command::new("apt-get").args(["install", "-y", "-q", &pkg]))?;
    }
    if !image.exists() {
        bail!("{pkg} installed no {}", image.display());
    }
    Ok(image)
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
    let filter = opts.only.as_deref().map(|t| format!(" --exact {t}")).unwrap_or_default();
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
                let e = tests.entry(name.trim().to_string()).or_insert((0, 0));
                if outcome.trim_end().ends_with("ok") {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
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
    /// Run only this test (exact name), e.g. to chase a failure.
    pub only: Option<String>,
    /// Run the tests this many times in each boot.
    pub repeat: u32,
    /// QEMU's multi-threaded TCG (faster, but see `tcg_opts`).
    pub multi_threaded_tcg: bool,
}

struct Row {
    kernel: String,
    mode: String,
    cells: Vec<&'static str>,
    passed: u32,
    runs: u32,
    secs: f64,
    notes: Vec<String>,
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

/// One table row from a boot's results.
fn row(kernel: &str, mode: &str, r: BootResult, mut notes: Vec<String>) -> Row {
    let mut cells = Vec::new();
    for sig in Signal::ALL {
        let relevant: Vec<(&String, &(u32, u32))> =
            r.tests.iter().filter(|(t, _)| signals_of(t).contains(&sig)).collect();
        let pass = r.problem.is_none() && !relevant.is_empty() && relevant.iter().all(|(_, (_, f))| *f == 0);
        let all_skipped = pass && relevant.iter().all(|(t, _)| r.skipped.contains(*t));
        cells.push(if relevant.is_empty() && r.problem.is_none() {
            "-"
        } else if all_skipped {
            "n/a"
        } else if pass {
            "pass"
        } else {
            "FAIL"
        });
    }
    let failed: Vec<String> =
        r.tests.iter().filter(|(_, (_, f))| *f > 0).map(|(t, (p, f))| format!("{t} ({f} of {})", p + f)).collect();
    if !failed.is_empty() {
        notes.push(format!("FAILED: {}", failed.join(", ")));
    }
    if let Some(p) = r.problem {
        notes.push(p);
    }
    Row {
        kernel: kernel.to_string(),
        mode: mode.to_string(),
        cells,
        passed: r.tests.values().map(|(p, _)| p).sum(),
        runs: r.tests.values().map(|(p, f)| p + f).sum(),
        secs: r.secs,
        notes,
    }
}

fn print_table(rows: &[Row]) {
    let mut header = format!("\n{:<8} {:<11}", "kernel", "mode");
    for sig in Signal::ALL {
        header.push_str(&format!(" {:<12}", sig.name()));
    }
    println!("{header} {:>7} {:>8}", "tests", "boot+run");
    for r in rows {
        let mut line = format!("{:<8} {:<11}", r.kernel, r.mode);
        for c in &r.cells {
            line.push_str(&format!(" {c:<12}"));
        }
        println!("{line} {:>7} {:>7.0}s", format!("{}/{}", r.passed, r.runs), r.secs);
        for n in &r.notes {
            println!("         {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERIC_612: KernelSpec = KERNELS[1];
    const RT_612: KernelSpec = KERNELS[2];
    const GENERIC_61: KernelSpec = KERNELS[0];

    #[test]
    fn picks_the_flavour_asked_for() {
        let pkgs = [
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.12.117+deb12-amd64-dbg",
            "linux-image-6.12.117+deb12-rt-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.99+deb12-amd64-unsigned",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-amd64",
            "linux-image-6.120.1-amd64",
        ];
        let generic: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, &GENERIC_612)).collect();
        assert_eq!(generic, ["6.12.117+deb12-amd64", "6.12.117+deb12-amd64", "6.12.99+deb12-amd64"]);
        let rt: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, &RT_612)).collect();
        assert_eq!(rt, ["6.12.117+deb12-rt-amd64"]);
        let old: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, &GENERIC_61)).collect();
        assert_eq!(old, ["6.1.0-57-amd64"]);
    }

    #[test]
    fn orders_by_version_not_by_string() {
        let r = ["6.12.99+deb12-amd64", "6.12.117+deb12-amd64", "6.12.117+deb12-rt-amd64", "6.12.100+deb12-amd64"];
        assert_eq!(newest(r.iter().copied(), &GENERIC_612).as_deref(), Some("6.12.117+deb12-amd64"));
        let r = ["6.1.0-9-amd64", "6.1.0-57-amd64", "6.1.0-10-amd64"];
        assert_eq!(newest(r.iter().copied(), &GENERIC_61).as_deref(), Some("6.1.0-57-amd64"));
        assert_eq!(newest(["6.12.117+deb12-amd64"].into_iter(), &RT_612), None);
    }

    #[test]
    fn override_variables_are_shell_names() {
        assert_eq!(override_var(&GENERIC_612), "CONNTRACE_VM_KERNEL_6_12");
        assert_eq!(override_var(&RT_612), "CONNTRACE_VM_KERNEL_6_12_RT");
    }
}
