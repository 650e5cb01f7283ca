//! Hand-built records of two runs, with the field sets of the README contract and of the
//! golden snapshots (`src/snapshots/*.snap`): a load test where python3 leaks fds into an
//! EMFILE plateau after an fd_pressure warning, and a quiet run where nothing fails.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::domain::time::rfc3339;

/// 2026-09-21T12:00:00Z.
pub const T0: u64 = 1_789_992_000;

pub fn at(s: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(s)
}

pub fn ts(s: f64) -> String {
    rfc3339(at(s))
}

pub fn header(s: f64, limits: Value) -> Value {
    json!({"type": "header", "ts": ts(s), "hostname": "web-1", "boot_id": "6f1c2e3a-9b1d-4c55-8e0f-2a7d4b9c1e11",
        "kernel": "6.12.117+deb12-amd64", "version": "0.1.0", "attach_mode": "auto", "limits": limits})
}

pub fn limits() -> Value {
    json!({"fs.file-max": 9223372036854775807u64, "fs.nr_open": 1048576, "net.core.somaxconn": 4096,
        "net.ipv4.ip_local_port_range": "32768 60999", "net.ipv4.tcp_max_tw_buckets": 262144,
        "net.ipv4.tcp_tw_reuse": 2})
}

pub fn status(s: f64) -> Value {
    let sig = |mode: &str, hook: &str| json!({"mode": mode, "exact": true, "hooks": [hook], "note": null, "host_cost": "per_event"});
    json!({"type": "status", "ts": ts(s), "signals": {
        "port_assign": sig("fexit", "fexit/inet_hash_connect"),
        "time_wait": sig("fexit", "fexit/inet_twsk_alloc"),
        "fd_alloc": sig("fexit", "fexit/alloc_fd"),
        "connect": sig("fexit", "fexit/inet_stream_connect"),
        "accept_queue": sig("sock_diag", "sock_diag")},
        "slows_every_syscall": [], "dropped_events": 0, "kernel": "6.12.117+deb12-amd64",
        "watched": [], "btf_missing": []})
}

/// A sample with every counter of the contract at 0 but those given.
pub fn sample(s: f64, pid: u32, comm: &str, fields: Value) -> Value {
    let mut v = json!({"type": "sample", "ts": ts(s), "pid": pid, "comm": comm, "interval_s": 1.0,
        "connect_attempts": 0, "connect_ok": 0, "connect_errors": {}, "connect_async_ok": 0,
        "connect_async_errors": 0, "port_assign_failures": 0, "time_wait_created": 0, "emfile": 0,
        "enfile": 0, "tw_overflows": 0, "bind_errors": {}, "bind_failures": 0, "bound_connects": 0,
        "listen_drops": 0, "syncookies": 0, "listens": 0, "tcp_mem_send_refused": 0,
        "tcp_mem_recv_refused": 0, "memcg_refused": 0, "netfilter_drops": 0, "nofile_limit": null,
        "open_fds": null});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

pub fn event(
    s: f64,
    kind: &str,
    pid: u32,
    comm: &str,
    errno: &str,
    suppressed: u64,
    dest: Option<(&str, u16)>,
) -> Value {
    let mut v = json!({"type": "event", "ts": ts(s), "kind": kind, "pid": pid, "tid": pid, "comm": comm,
        "errno": errno, "netns": 4026531840u64, "suppressed": suppressed});
    if let (Some(o), Some((daddr, dport))) = (v.as_object_mut(), dest) {
        let net: Map<String, Value> = json!({"saddr": "10.0.0.1", "sport": 0, "daddr": daddr, "dport": dport,
            "async": false})
        .as_object()
        .cloned()
        .unwrap_or_default();
        o.extend(net);
    }
    v
}

pub struct V<'a> {
    pub s: f64,
    pub state: &'a str,
    pub cause: &'a str,
    pub pid: u32,
    pub comm: &'a str,
    pub since: f64,
    pub failures: u64,
    pub destination: Option<&'a str>,
    pub summary: &'a str,
    pub evidence: Value,
    pub fix: Vec<&'a str>,
}

pub fn verdict(v: V) -> Value {
    json!({"type": "verdict", "ts": ts(v.s), "state": v.state, "cause": v.cause, "pid": v.pid, "comm": v.comm,
        "since": ts(v.since), "failures": v.failures, "destination": v.destination, "summary": v.summary,
        "evidence": v.evidence, "fix": v.fix})
}

/// Adds `duration_s` (and a warning's `resolution`) to a record turned `resolved`.
pub fn resolved(mut v: Value, duration_s: f64, resolution: Option<&str>) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), json!("resolved"));
        o.insert("duration_s".into(), json!(duration_s));
        if let Some(r) = resolution {
            o.insert("resolution".into(), json!(r));
        }
    }
    v
}

const FD_FIX: [&str; 2] = [
    "raise the soft limit up to the hard limit (4096): LimitNOFILE= in the systemd unit, `ulimit -n` before start, or now: prlimit --pid 1904 --nofile=4096:4096",
    "if the open count only grows, it is an fd leak: see what is open in /proc/1904/fd",
];

fn fd_limit(s: f64, failures: u64) -> Value {
    let summary = format!(
        "python3[1904] hit its open-file limit: 512 of 512 file descriptors open (RLIMIT_NOFILE, hard limit 4,096); {} calls failed with EMFILE since 12:00:20",
        crate::domain::time::thousands(failures)
    );
    verdict(V {
        s,
        state: "active",
        cause: "fd_limit",
        pid: 1904,
        comm: "python3",
        since: 20.6,
        failures,
        destination: None,
        summary: &summary,
        evidence: json!({"nofile_soft": 512, "nofile_hard": 4096, "open_fds": 512, "sockets": 509}),
        fix: FD_FIX.to_vec(),
    })
}

fn fd_pressure(s: f64, open: u64, left: u64) -> Value {
    let summary = format!(
        "python3[1904] opens file descriptors faster than it closes them (20.0/s): {open} of 512 open (RLIMIT_NOFILE); at this rate it hits the limit in about {left} s, then its accept(), connect() and open() calls fail with EMFILE"
    );
    verdict(V {
        s,
        state: "warning",
        cause: "fd_pressure",
        pid: 1904,
        comm: "python3",
        since: 6.0,
        failures: 0,
        destination: None,
        summary: &summary,
        evidence: json!({"open_fds": open, "nofile_soft": 512, "nofile_hard": 4096, "rate_per_s": 20.0, "seconds_left": left}),
        fix: vec![
            "if its connections or files should not pile up, it leaks them: see what is open in /proc/1904/fd (ls -l)",
            "raise the limit before it is reached: prlimit --pid 1904 --nofile=N:N as root now (hard limit 4096), and LimitNOFILE= in its systemd unit or `ulimit -n` where it starts",
        ],
    })
}

/// A 60 s load test: wrk[2100] drives python3[1904] (RLIMIT_NOFILE 512), which leaks 20 fds
/// a second: fd_pressure from 12:00:06, EMFILE from 12:00:20.6 until 12:00:40 (the leak
/// stops), the fd_limit verdict resolved at 12:00:45.
pub fn emfile_run() -> Vec<Value> {
    let mut out = vec![header(0.0, limits()), status(0.5)];
    let mut failures = 0u64;
    for i in 1..=60u64 {
        let s = i as f64;
        let open = (100 + 20 * i).min(512);
        let emfile = match i {
            21 => 180,
            22..=40 => 255,
            41 => 256,
            _ => 0,
        };
        failures += emfile;
        let refused = if (22..=40).contains(&i) { 20 } else { 0 };
        out.push(sample(
            s,
            1904,
            "python3",
            json!({"listens": u64::from(i == 1), "emfile": emfile,
            "open_fds": if i > 41 { 140 } else { open }, "nofile_limit": 512}),
        ));
        out.push(sample(
            s,
            2100,
            "wrk",
            json!({"connect_attempts": 500, "connect_ok": 500 - refused,
            "connect_errors": if refused > 0 { json!({"ECONNREFUSED": refused}) } else { json!({}) },
            "time_wait_created": 480, "open_fds": 60, "nofile_limit": 65536}),
        ));
        if emfile > 0 {
            out.push(event(s - 0.5, "emfile", 1904, "python3", "EMFILE", emfile - 1, None));
        }
        if refused > 0 {
            out.push(event(
                s - 0.4,
                "connect_error",
                2100,
                "wrk",
                "ECONNREFUSED",
                refused - 1,
                Some(("10.0.0.5", 8080)),
            ));
        }
        match i {
            6 => out.push(fd_pressure(s, 220, 14)),
            16 => out.push(fd_pressure(s, 420, 4)),
            21 => {
                out.push(resolved(fd_pressure(s, 512, 0), 15.0, Some("EMFILE failures began")));
                out.push(fd_limit(s, failures));
            }
            31 | 41 => out.push(fd_limit(s, failures)),
            45 => out.push(resolved(fd_limit(s, failures), 24.4, None)),
            _ => {}
        }
    }
    out
}

/// 10 s in which nginx[800] serves wrk[2100] with every connect succeeding.
pub fn idle_run() -> Vec<Value> {
    let mut out = vec![header(0.0, limits()), status(0.5)];
    for i in 1..=10 {
        let s = i as f64;
        out.push(sample(s, 800, "nginx", json!({"open_fds": 64, "nofile_limit": 1024})));
        out.push(sample(
            s,
            2100,
            "wrk",
            json!({"connect_attempts": 100, "connect_ok": 100,
            "time_wait_created": 100, "open_fds": 60, "nofile_limit": 65536}),
        ));
    }
    out
}

/// port_pressure then ephemeral_ports toward 10.0.0.5:6379 for client[300] (a 28,232-port range).
pub fn ports_run() -> Vec<Value> {
    let mut out = vec![header(0.0, limits())];
    for (i, in_use) in [(10u64, 20_750u64), (20, 23_250), (30, 25_750)] {
        out.push(verdict(V {
            s: i as f64,
            state: "warning",
            cause: "port_pressure",
            pid: 300,
            comm: "client",
            since: 10.0,
            failures: 0,
            destination: Some("10.0.0.5:6379"),
            summary: "client[300]'s connections toward 10.0.0.5:6379 are using up the ephemeral ports",
            evidence: json!({"in_use": in_use, "range": "32768-60999", "usable": 28232, "rate_per_s": 250.0}),
            fix: vec!["bound the connections to 10.0.0.5:6379"],
        }));
    }
    out.push(verdict(V {
        s: 41.0,
        state: "active",
        cause: "ephemeral_ports",
        pid: 300,
        comm: "client",
        since: 40.2,
        failures: 30,
        destination: Some("10.0.0.5:6379"),
        summary: "client[300] cannot get an ephemeral port toward 10.0.0.5:6379",
        evidence: json!({"range": "32768-60999", "usable": 28232, "established": 28000, "time_wait": 200, "other": 32}),
        fix: vec!["keep connections to 10.0.0.5:6379 alive and reuse them"],
    }));
    for i in 35..=45 {
        let fail = if i > 40 { 30 } else { 0 };
        out.push(sample(
            i as f64,
            300,
            "client",
            json!({"connect_attempts": 250, "connect_ok": 250 - fail,
            "port_assign_failures": fail, "connect_errors": {"EADDRNOTAVAIL": fail}, "open_fds": 20000 + i,
            "nofile_limit": 65536}),
        ));
    }
    out
}
