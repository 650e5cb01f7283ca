//! conntrace at scale: one process holding 20,000 connections while it churns through 50,000
//! more, and 10,000 short-lived processes. Counts stay exact (against the workload's own
//! counts and the namespace's TcpExt counters), no map fills, no update is lost, a verdict
//! still comes within an interval, and the state of exited processes does not pile up.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// The conntrace interval the tests run with (common::Conntrace::start).
const INTERVAL_S: f64 = 0.2;

/// None (after saying why) where these tests cannot run; else a guard that runs them one at a
/// time: each loads the whole machine (tens of thousands of sockets host-wide, which every
/// sock_diag walk covers, and both CPUs), so side by side they would measure each other.
fn can_run(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !require_root(test) {
        return None;
    }
    if std::env::var("CONNTRACE_IN_VM").is_ok() {
        eprintln!("SKIPPED {test}: tens of thousands of connections and processes are too slow under TCG emulation");
        return None;
    }
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// With CONNTRACE_SCALE_DUMP=DIR, keeps what conntrace printed and the workload's output
/// (DIR/TEST.ndjson, DIR/TEST.out) for a closer look at a mismatch.
fn dump(test: &str, lines: &[Value], out: &str) {
    let Ok(dir) = std::env::var("CONNTRACE_SCALE_DUMP") else { return };
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(format!("{dir}/{test}.ndjson"), text).expect("writing the dump");
    std::fs::write(format!("{dir}/{test}.out"), out).expect("writing the dump");
}

fn secs(ts: &Value) -> f64 {
    let t = humantime::parse_rfc3339(ts.as_str().expect("timestamp")).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The last status line's `lost_updates`, and its `dropped_events` (ring buffer full: events
/// lost, counts still exact, per the JSON contract; allowed, only printed).
fn lost_and_dropped(lines: &[Value]) -> (Value, u64) {
    let last = lines.iter().rev().find(|v| v["type"] == "status").expect("a status line");
    (last["lost_updates"].clone(), last["dropped_events"].as_u64().expect("dropped_events"))
}

/// Every status line reports no lost update: no map full, no connect return missed; with
/// `runs_too`, no program run skipped by the kernel either.
fn assert_no_lost_updates(lines: &[Value], runs_too: bool) {
    for s in lines.iter().filter(|v| v["type"] == "status") {
        let lost = &s["lost_updates"];
        for k in ["counter_map_full", "owner_map_full", "owners_evicted", "inflight_map_full", "connect_returns_lost"] {
            assert_eq!(lost[k].as_u64(), Some(0), "{k}: {lost}");
        }
        if runs_too {
            let skipped = lost["skipped_runs"].as_object().expect("skipped_runs");
            assert!(skipped.values().all(|v| v.as_u64() == Some(0)), "runs skipped by the kernel: {lost}");
        }
    }
}

/// Sums of a numeric field of the errno map `field` over all samples of `pid`.
fn errnos(lines: &[Value], pid: u64, field: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for s in samples(lines, pid) {
        for (k, v) in s[field].as_object().into_iter().flatten() {
            *sums.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
    }
    sums
}

fn errno_map(v: &Value) -> BTreeMap<String, u64> {
    v.as_object().into_iter().flatten().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
}

/// 20,000 connections held by one process, then 50,000 connect/close cycles: every connect
/// and every TIME_WAIT counted (against the namespace's own TIME_WAIT sockets), no lost
/// update, the EMFILE verdict within an interval. This found two losses: runs of the
/// set_state program the kernel skipped when a softirq interrupted it (now handled by its
/// rescue program), and per-CPU counter increments overwritten by a program nested in the
/// middle of one (now atomic).
#[test]
fn twenty_thousand_held_plus_churn_counts_exactly() {
    let name = "twenty_thousand_held_plus_churn_counts_exactly";
    let Some(_one_at_a_time) = can_run(name) else { return };
    const HOLD: u64 = 20_000;
    const CHURN: u64 = 50_000;
    const EMFILE: u64 = 5;
    let ct = Conntrace::start(&[]);
    let ct_pid = ct.pid();
    let rss_start = rss_kib(ct_pid);
    let t0 = Instant::now();
    // 20,000 held and 50,000 churned connections leave 70,000 TIME_WAITs: a table that holds
    // them all (a new namespace's default is half the established hash), and every port of
    // the range. With tcp_tw_reuse a connect may take over a TIME_WAIT older than a second;
    // TcpExt TW counts each TIME_WAIT when it is created, so that changes no count.
    let out = in_netns(&format!(
        "sysctl -qw net.ipv4.ip_local_port_range='1024 65535'\n\
         sysctl -qw net.ipv4.tcp_max_tw_buckets=200000\n\
         sysctl -qw net.ipv4.tcp_tw_reuse=1\n\
         $WL scale --hold {HOLD} --churn {CHURN} --emfile {EMFILE}"
    ));
    let run_s = t0.elapsed().as_secs_f64();
    let rss_end = rss_kib(ct_pid);
    let lines = ct.stop();
    dump(name, &lines, &out);
    let wl = report(&out);
    let pid = wl["pid"].as_u64().unwrap();
    eprintln!("workload: {wl}");
    eprintln!(
        "run {run_s:.1} s (hold {:.1} s, churn {:.1} s, workload total {:.1} s); conntrace RSS {} KiB at start, {} KiB at the end",
        wl["hold_s"].as_f64().unwrap(),
        wl["churn_s"].as_f64().unwrap(),
        wl["total_s"].as_f64().unwrap(),
        rss_start,
        rss_end
    );

    // The workload's own truth.
    assert_eq!(wl["held"], HOLD, "{wl}");
    assert_eq!(wl["churn"], CHURN, "{wl}");
    assert_eq!(wl["emfile_errors"]["EMFILE"], EMFILE, "{wl}");
    assert_eq!(wl["tw_overflows"], 0, "the TIME_WAIT table must not overflow: {wl}");
    let hold_errors = errno_map(&wl["hold_errors"]);
    let churn_errors = errno_map(&wl["churn_errors"]);
    let churn_ok = wl["churn_ok"].as_u64().unwrap();
    let attempts = wl["hold_attempts"].as_u64().unwrap() + CHURN;
    let ok = HOLD + churn_ok;
    let mut errors = hold_errors.clone();
    for (k, v) in &churn_errors {
        *errors.entry(k.clone()).or_default() += v;
    }
    let tw_truth = wl["tw_growth"].as_u64().unwrap();
    assert_eq!(attempts, ok + errors.values().sum::<u64>(), "{wl}");

    // The hooks first: a wrong count then says whether the hook was missing or missed.
    assert_signal_exact(&lines, "connect", &NETWORK_MODES);
    assert_signal_exact(&lines, "time_wait", &NETWORK_MODES);
    assert_signal_exact(&lines, "fd_alloc", &["fexit", "raw_tracepoint", "tracepoint", "kprobe"]);
    let (lost, dropped) = lost_and_dropped(&lines);

    let counted_attempts = total(&lines, pid, "connect_attempts");
    let counted_ok = total(&lines, pid, "connect_ok");
    let counted_errors = errnos(&lines, pid, "connect_errors");
    let counted_tw = total(&lines, pid, "time_wait_created");
    let n_samples = samples(&lines, pid).count();
    eprintln!(
        "conntrace ({}): {counted_attempts} attempts (truth {attempts}), {counted_ok} ok (truth {ok}), errors \
         {counted_errors:?} (truth {errors:?}), {counted_tw} TIME_WAIT (TcpExt TW +{tw_truth}), in {n_samples} samples; \
         {dropped} events dropped; lost updates {lost}; TIME_WAIT charged to other processes: {:?}",
        conntrace_bin().display(),
        time_waits_elsewhere(&lines, pid)
    );
    assert_eq!(counted_attempts, attempts, "connect attempts: {wl}");
    assert_eq!(counted_ok, ok, "connect successes: {wl}");
    assert_eq!(counted_errors, errors, "connect errors: {wl}");
    assert_eq!(counted_tw, tw_truth, "TIME_WAIT created vs the namespace's TcpExt TW growth: {wl}");
    assert_eq!(total(&lines, pid, "tw_overflows"), 0);
    assert_eq!(total(&lines, pid, "emfile"), EMFILE);

    // Time to verdict under this load: the EMFILE failures come with 20,000 connections open
    // and 70,000 TIME_WAITs in the namespace; the verdict is still out within one interval of
    // the first failure.
    let vs = activations(&lines, pid, "fd_limit");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let delay = secs(&vs[0]["ts"]) - secs(&vs[0]["since"]);
    eprintln!("fd_limit verdict {delay:.3} s after the first failure: {}", vs[0]["summary"]);
    // Plus scheduling slack, as in verdict.rs.
    assert!(delay <= INTERVAL_S + 0.3, "verdict {delay:.3} s after the first failure: {}", vs[0]);
    assert_eq!(vs[0]["failures"], EMFILE, "{}", vs[0]);
    // Last, so that a failure here comes with the counts above already checked.
    assert_no_lost_updates(&lines, true);
}

#[test]
fn ten_thousand_short_lived_processes_leave_no_state() {
    let name = "ten_thousand_short_lived_processes_leave_no_state";
    let Some(_one_at_a_time) = can_run(name) else { return };
    const COUNT: u64 = 10_000;
    let ct = Conntrace::start(&[]);
    let ct_pid = ct.pid();
    std::thread::sleep(Duration::from_secs(1));
    let rss_first = rss_kib(ct_pid);
    let t0 = Instant::now();
    let out = in_netns(&format!("$WL procs --count {COUNT}"));
    let run_s = t0.elapsed().as_secs_f64();
    // A few intervals for the last exits to be reported and their state dropped.
    std::thread::sleep(Duration::from_secs(1));
    let rss_end = rss_kib(ct_pid);
    let lines = ct.stop();
    dump(name, &lines, &out);
    let wl = report(&out);
    let parent = wl["pid"].as_u64().unwrap();
    let children: Vec<u64> = wl["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_eq!(wl["failed"], 0, "every child connected: {}", wl["failed"]);
    assert_eq!(children.len() as u64, COUNT);

    assert_signal_exact(&lines, "connect", &NETWORK_MODES);
    let (lost, dropped) = lost_and_dropped(&lines);

    // Per pid: (connect attempts, connect successes, samples).
    let mut per_pid: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    for s in lines.iter().filter(|v| v["type"] == "sample") {
        let e = per_pid.entry(s["pid"].as_u64().unwrap()).or_default();
        e.0 += s["connect_attempts"].as_u64().unwrap_or(0);
        e.1 += s["connect_ok"].as_u64().unwrap_or(0);
        e.2 += 1;
    }
    let (mut attempts, mut ok, mut most_samples) = (0, 0, 0);
    let mut wrong = Vec::new();
    for c in &children {
        let (a, o, n) = per_pid.get(c).copied().unwrap_or_default();
        attempts += a;
        ok += o;
        most_samples = most_samples.max(n);
        if (a, o) != (1, 1) {
            wrong.push((*c, a, o));
        }
    }
    eprintln!(
        "{COUNT} processes in {run_s:.1} s (pids {} to {}): {attempts} connect attempts and {ok} successes counted, \
         at most {most_samples} samples per process; {dropped} events dropped; lost updates {lost}; conntrace RSS {rss_first} KiB after the \
         first second, {rss_end} KiB at the end",
        wl["first_pid"], wl["last_pid"]
    );
    assert!(
        wrong.is_empty(),
        "children not counted as one connect each (pid, attempts, ok): {:?}",
        &wrong[..wrong.len().min(20)]
    );
    assert_eq!(attempts, COUNT);
    assert_eq!(ok, COUNT);
    assert_eq!(per_pid.get(&parent).map_or(0, |p| p.0), 0, "the parent only listens");

    // The kernel's counter map holds 16,384 entries and 10,000 processes need more than that
    // (attempts and successes each): that no update was lost to a full map (above) shows the
    // entries of exited processes are removed. In user space, a process's state left behind
    // would grow with the 10,000 processes; the bound is generous against allocator noise
    // (arenas grow and are not returned at once, per-interval buffers size to the busiest
    // interval): 20 MiB, ~2 KiB per process.
    assert!(
        rss_end <= rss_first + 20 * 1024,
        "conntrace RSS grew from {rss_first} KiB to {rss_end} KiB over {COUNT} short-lived processes"
    );
    // Runs of the set_state program skipped by the kernel (a softirq interrupting it on the
    // same CPU, reported in skipped_runs) do not touch what this test counts: connects come
    // from the connect hooks.
    assert_no_lost_updates(&lines, false);
}

/// A verdict's evidence about a namespace is one sock_diag dump of its TCP sockets plus its
/// sysctls and counters (`Host::net`, i.e. `host::net_now`, read once per namespace and
/// interval). With 100,000 sockets in the namespace (50,000 connections, both ends), reading
/// it takes ≤ 100 ms (median of 7), and the ports it finds in use are the 50,000 client ends,
/// not the accepted ones.
#[test]
fn evidence_with_a_hundred_thousand_sockets_takes_under_100_ms() {
    let name = "evidence_with_a_hundred_thousand_sockets_takes_under_100_ms";
    let Some(_one_at_a_time) = can_run(name) else { return };
    const HOLD: u64 = 50_000;
    // sock_diag walks the whole host's socket tables whatever the namespace: what other
    // namespaces hold (containers, another test's TIME_WAITs) costs every read. That cost is
    // measured first, on an empty namespace, and left out of the budget.
    let mut empty = std::process::Command::new("unshare").args(["-n", "sleep", "120"]).spawn().expect("unshare");
    wait_for_own_netns(empty.id());
    let baseline = median_ms(&read_namespace(empty.id(), 7).0);
    let _ = empty.kill();
    let _ = empty.wait();
    let ready = std::env::temp_dir().join(format!("conntrace-evidence-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut netns = std::process::Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-ec",
            &format!(
                "ip link set lo up\n\
                 sysctl -qw net.ipv4.ip_local_port_range='1024 65535'\n\
                 exec $WL scale --hold {HOLD} --churn 0 --ready-file {r} --open-ms 120000 > /dev/null",
                r = ready.display()
            ),
        ])
        .env("WL", workload_bin())
        .spawn()
        .expect("unshare");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the workload never opened its {HOLD} connections");
        assert!(netns.try_wait().unwrap().is_none(), "the workload exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(100));
    let pid: u32 = std::fs::read_to_string(&ready).unwrap().trim().parse().unwrap();
    let (runs, facts) = read_namespace(pid, 7);
    // The kernel's count of TCP sockets in the namespace ("TCP: inuse N orphan O tw T ...").
    let sockstat = std::fs::read_to_string(format!("/proc/{pid}/net/sockstat")).expect("sockstat");
    let in_ns: u64 = sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP: inuse "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("TCP inuse");
    // SAFETY: kill(2) of the workload we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = netns.wait();
    let _ = std::fs::remove_file(&ready);
    let use_ = probe_user::domain::net::EphemeralUse::of(&facts).expect("the namespace's port range");
    let toward: u64 = use_.toward("127.0.0.1".parse().unwrap(), 9000).values().sum();
    let in_use: u64 = use_.by_dest.values().flat_map(|s| s.values()).sum();
    let median = median_ms(&runs);
    eprintln!(
        "{in_ns} TCP sockets in the namespace, {} described by the kernel (the rest filtered out), read in \
         {runs:.1?} ms (median {median:.1} ms; an empty namespace: {baseline:.1} ms, the walk of other \
         namespaces' sockets); ephemeral ports in use: {in_use}, {toward} toward 127.0.0.1:9000",
        facts.sockets.len()
    );
    assert!(in_ns > 2 * HOLD, "{sockstat}");
    // The client ends and the listener; the accepted ends are filtered out in the kernel.
    assert_eq!(facts.sockets.len() as u64, HOLD + 1);
    assert_eq!(toward, HOLD);
    assert_eq!(in_use, HOLD, "accepted sockets hold no ephemeral port");
    assert!(
        median - baseline <= 100.0,
        "reading the evidence with {in_ns} sockets took {median:.1} ms ({baseline:.1} ms for an empty namespace)"
    );
}

/// `n` timed reads of the namespace of `pid` as a verdict's evidence reads it: the times in ms
/// and the last facts.
fn read_namespace(pid: u32, n: usize) -> (Vec<f64>, probe_user::domain::net::NetFacts) {
    let netns = probe_user::system::netdiag::netns_inode(pid).expect("the process's namespace");
    let mut runs = Vec::new();
    let mut facts = None;
    for _ in 0..n {
        let t = Instant::now();
        facts = Some(probe_user::commands::host::net_now(pid, netns).expect("reading the namespace"));
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (runs, facts.unwrap())
}

/// Waits until `pid` (started by `unshare -n`) is in a network namespace of its own.
fn wait_for_own_netns(pid: u32) {
    let own = probe_user::system::netdiag::netns_inode(std::process::id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while own.is_none() || probe_user::system::netdiag::netns_inode(pid) == own {
        assert!(Instant::now() < deadline, "the process never entered its namespace");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn median_ms(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
