#![allow(dead_code, reason = "each test binary uses a different subset of these helpers")]
//! Shared by the integration tests: run conntrace, run workloads in private network
//! namespaces, sum what conntrace reported. Each test file includes this module.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

/// True when the test can load eBPF programs; otherwise prints why it is skipped.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (loads eBPF programs, creates network namespaces); run with sudo");
        return false;
    }
    true
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The conntrace binary: $CONNTRACE_BIN, else built once with cargo (debug profile).
pub fn conntrace_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("CONNTRACE_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "probe-user", "--bin", "conntrace"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for conntrace");
        assert!(st.success(), "building conntrace failed");
        let target =
            std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug/conntrace")
    })
    .clone()
}

/// The workload binary: $CONNTRACE_WORKLOAD_BIN (a staged copy, see `cargo xtask vm-test`),
/// else the one cargo built with these tests.
pub fn workload_bin() -> String {
    std::env::var("CONNTRACE_WORKLOAD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_conntrace-workload").to_string())
}

/// A running `conntrace watch --json`.
pub struct Conntrace {
    child: Child,
    lines: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

impl Conntrace {
    /// Starts conntrace with `args` (after `watch --json`) and waits for its first status line.
    pub fn start(args: &[&str]) -> Conntrace {
        Self::start_with_env(args, &[])
    }

    /// Like `start`, with extra environment variables (e.g. CONNTRACE_SKIP_HOOKS).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Conntrace {
        // The tests prove every hook exact, system-call tracepoints included (where the kernel
        // has no fexit): `always` unless the test chooses (light.rs, on_demand.rs).
        let hooks: &[&str] = if args.iter().any(|a| *a == "--light" || *a == "--syscall-hooks") {
            &[]
        } else {
            &["--syscall-hooks", "always"]
        };
        let mut child = Command::new(conntrace_bin())
            .envs(env.iter().copied())
            .args(["watch", "--json"])
            .args(if args.contains(&"--interval") { &[][..] } else { &["--interval", "200ms"][..] })
            .args(hooks)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting conntrace");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut c = Conntrace { child, lines: rx, seen: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.lines.recv_timeout(left) {
                Ok(v) => {
                    let is_status = v["type"] == "status";
                    c.seen.push(v);
                    if is_status {
                        return c;
                    }
                }
                Err(_) => panic!("conntrace printed no status line within 60 s"),
            }
        }
    }

    /// Waits (up to 30 s) for a line matching `pred`; every line read is kept.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(v) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let hit = pred(&v);
            self.seen.push(v);
            if hit {
                return true;
            }
        }
        false
    }

    /// The conntrace process's pid (its /proc/PID/status says its memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (no chance to flush anything), then everything it had printed.
    pub fn kill(mut self) -> (Vec<Value>, std::time::SystemTime) {
        let at = std::time::SystemTime::now();
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(v);
        }
        (self.seen, at)
    }

    /// SIGTERM, then everything it printed; asserts it exits 0.
    pub fn stop(mut self) -> Vec<Value> {
        // Let one more interval pass so the counts of the workload are in a sample.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for conntrace");
        assert!(status.success(), "conntrace exited with {status}");
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(v);
        }
        self.seen
    }
}

/// Runs a shell script in a private network namespace with loopback up; returns stdout.
pub fn in_netns(script: &str) -> String {
    let out = Command::new("unshare")
        .args(["-n", "sh", "-ec", &format!("ip link set lo up\n{script}")])
        .env("WL", workload_bin())
        .stderr(Stdio::inherit())
        .output()
        .expect("running unshare");
    assert!(out.status.success(), "netns script failed: {script}");
    String::from_utf8(out.stdout).expect("utf8")
}

/// The last JSON object line a workload printed.
pub fn report(stdout: &str) -> Value {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("workload printed no report");
    serde_json::from_str(line).expect("workload report is JSON")
}

/// Sum of a numeric sample field over all samples of `pid`.
pub fn total(lines: &[Value], pid: u64, field: &str) -> u64 {
    samples(lines, pid).map(|s| s[field].as_u64().unwrap_or(0)).sum()
}

/// Sum of `connect_errors[errno]` over all samples of `pid`.
pub fn total_errno(lines: &[Value], pid: u64, errno: &str) -> u64 {
    samples(lines, pid).map(|s| s["connect_errors"][errno].as_u64().unwrap_or(0)).sum()
}

pub fn samples(lines: &[Value], pid: u64) -> impl Iterator<Item = &Value> {
    lines.iter().filter(move |v| v["type"] == "sample" && v["pid"] == pid)
}

pub fn events<'a>(lines: &'a [Value], pid: u64, kind: &'a str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == "event" && v["pid"] == pid && v["kind"] == kind).collect()
}

pub fn status(lines: &[Value]) -> &Value {
    lines.iter().find(|v| v["type"] == "status").expect("a status line")
}

/// The attach modes a signal may report. By default any exact mode; under
/// CONNTRACE_EXPECT_MODE (set by `cargo xtask vm-test`) exactly the family that mode forces,
/// so a kernel matrix run proves the hook it claims to test.
pub fn expected_modes(signal: &str, default: &[&'static str]) -> Vec<&'static str> {
    match std::env::var("CONNTRACE_EXPECT_MODE").as_deref() {
        Ok("fexit") => vec!["fexit"],
        Ok("kprobe") => vec!["kprobe"],
        Ok("tracepoint") => match signal {
            "fd_alloc" => vec!["raw_tracepoint", "tracepoint"],
            "connect" | "bind" => vec!["tracepoint"],
            _ => vec!["tp_btf", "tracepoint"],
        },
        _ => default.to_vec(),
    }
}

/// True (after printing why) when CONNTRACE_ATTACH_MODE forces a family a test cannot use.
pub fn forced_away_from_tracepoints(test: &str) -> bool {
    match std::env::var("CONNTRACE_ATTACH_MODE").as_deref() {
        Ok("fexit") | Ok("kprobe") => {
            eprintln!("SKIPPED {test}: CONNTRACE_ATTACH_MODE forces another hook family");
            true
        }
        _ => false,
    }
}

pub const NETWORK_MODES: [&str; 4] = ["fexit", "tp_btf", "tracepoint", "kprobe"];

pub fn assert_signal_exact(lines: &[Value], signal: &str, modes: &[&'static str]) {
    check_signal(lines, signal, &expected_modes(signal, modes));
}

pub fn kprobe_mode(lines: &[Value], signal: &str) -> bool {
    status(lines)["signals"][signal]["mode"] == "kprobe"
}

/// Like `assert_signal_exact`, with exactly these modes whatever the run expects.
pub fn check_signal(lines: &[Value], signal: &str, modes: &[&str]) {
    let s = &status(lines)["signals"][signal];
    let mode = s["mode"].as_str().unwrap_or("");
    assert!(modes.contains(&mode), "{signal} runs in mode {mode}: {s}");
    // kprobe mode says it is approximate (per-CPU recursion guard); every other mode is exact.
    assert_eq!(s["exact"], mode != "kprobe", "{signal}: {s}");
    eprintln!("{signal}: mode {mode}, hooks {}", s["hooks"]);
}

pub fn verdicts<'a>(lines: &'a [Value], pid: u64, cause: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == "verdict" && v["pid"] == pid && v["cause"] == cause).collect()
}

/// The verdicts of `cause` that became active (a slow run may also show their resolution).
/// One per episode (its first record): an active verdict is repeated while its failures grow,
/// and once more at the end of the run with its final count.
pub fn activations<'a>(lines: &'a [Value], pid: u64, cause: &str) -> Vec<&'a Value> {
    let mut seen = std::collections::BTreeSet::new();
    verdicts(lines, pid, cause)
        .into_iter()
        .filter(|v| v["state"] == "active")
        .filter(|v| seen.insert((v["since"].to_string(), v["destination"].to_string(), v["listener"].to_string())))
        .collect()
}

/// Predictions (`state` "warning") of `cause` for `pid`.
pub fn warnings<'a>(lines: &'a [Value], pid: u64, cause: &str) -> Vec<&'a Value> {
    verdicts(lines, pid, cause).into_iter().filter(|v| v["state"] == "warning").collect()
}

/// Runs the kernel skipped for conntrace's programs whose name starts with `prefix`, from the
/// last status line (`lost_updates.skipped_runs`; kprobe skips are counted since Linux 6.7).
pub fn skipped_runs(lines: &[Value], prefix: &str) -> u64 {
    let Some(last) = lines.iter().rev().find(|v| v["type"] == "status") else { return 0 };
    last["lost_updates"]["skipped_runs"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with(prefix)).filter_map(|(_, v)| v.as_u64()).sum())
        .unwrap_or(0)
}

/// Whether the kernel in the status line is at least `major.minor`.
pub fn kernel_at_least(lines: &[Value], major: u32, minor: u32) -> bool {
    let release = status(lines)["kernel"].as_str().unwrap_or("");
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0)) >= (major, minor)
}

/// TIME_WAITs charged to every process but `pid`: where a miscount went, if anywhere.
pub fn time_waits_elsewhere(lines: &[Value], pid: u64) -> std::collections::BTreeMap<String, u64> {
    let mut by = std::collections::BTreeMap::new();
    for s in lines.iter().filter(|v| v["type"] == "sample" && v["pid"] != pid) {
        let n = s["time_wait_created"].as_u64().unwrap_or(0);
        if n > 0 {
            *by.entry(format!("{}[{}]", s["comm"].as_str().unwrap_or("?"), s["pid"])).or_default() += n;
        }
    }
    by
}

/// Restores a global sysctl when the test ends, pass or fail.
pub struct Sysctl(pub &'static str, pub String);

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// Whether this run is the one that runs tests needed in one kernel-matrix row only (they
/// lower a global sysctl and read what is the same on every kernel): the VM's 6.12 kernel in
/// auto mode.
pub fn the_row(name: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let row = std::env::var("CONNTRACE_IN_VM").is_ok()
        && std::env::var("CONNTRACE_VM_MODE").as_deref() == Ok("auto")
        && release.starts_with("6.12")
        && !release.contains("-rt");
    if !row {
        eprintln!(
            "SKIPPED {name}: lowers a global sysctl, so it runs inside the kernel-matrix VM, in its 6.12 auto row only \
             (the rule reads /proc, the same in every row)"
        );
    }
    row
}

/// A workload started before conntrace: it opens its connections in a private namespace,
/// creates a ready file, and goes on only once the go file exists. `args` follows
/// `$WL` and ends with the workload's own flags naming those two files (`{ready}`, `{go}`).
pub struct Gated {
    child: Child,
    ready: PathBuf,
    go: PathBuf,
}

impl Gated {
    /// Starts it and waits (at most 60 s) until its connections are open.
    pub fn start(tag: &str, args: &str) -> Gated {
        let file = |what: &str| std::env::temp_dir().join(format!("conntrace-{tag}-{what}-{}", std::process::id()));
        let (ready, go) = (file("ready"), file("go"));
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&go);
        let args = args.replace("{ready}", &ready.display().to_string()).replace("{go}", &go.display().to_string());
        let mut child = Command::new("unshare")
            .args(["-n", "sh", "-ec", &format!("ip link set lo up\nexec $WL {args}")])
            .env("WL", workload_bin())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the workload never opened its connections");
            assert!(child.try_wait().expect("the workload").is_none(), "the workload exited early");
            std::thread::sleep(Duration::from_millis(50));
        }
        Gated { child, ready, go }
    }

    /// Lets it go on, waits for it to end, and returns its report.
    pub fn go(self) -> Value {
        std::fs::write(&self.go, "").expect("writing the go file");
        let out = self.child.wait_with_output().expect("the workload");
        let _ = std::fs::remove_file(&self.go);
        let _ = std::fs::remove_file(&self.ready);
        report(&String::from_utf8_lossy(&out.stdout))
    }
}
