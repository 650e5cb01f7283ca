//! The benchmark's workloads, each run in a fresh network namespace (a run must not inherit
//! the previous run's TIME_WAIT table) with the measured process pinned to CPU 1 and its load
//! generator on CPU 0. Each returns the measured process's own rate.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::output;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// nginx (one worker) serving a small static file to `wrk -c50` over HTTP keep-alive:
    /// many system calls, few new connections.
    NginxKeepAlive,
    /// The same with `Connection: close`: one TCP connection per request; nginx closes first
    /// and keeps the TIME_WAIT.
    NginxClose,
    /// A process that makes no network call: getppid() in a loop. What watching costs every
    /// other process on the host.
    Getppid,
    /// connect/accept/close in one process over loopback, as fast as it goes.
    Churn,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::NginxKeepAlive, Workload::NginxClose, Workload::Getppid, Workload::Churn];

    pub fn name(self) -> &'static str {
        match self {
            Workload::NginxKeepAlive => "nginx-keepalive",
            Workload::NginxClose => "nginx-close",
            Workload::Getppid => "getppid",
            Workload::Churn => "churn",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::NginxKeepAlive | Workload::NginxClose => "req/s",
            Workload::Getppid => "calls/s",
            Workload::Churn => "conn/s",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The programs a run needs on this machine.
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            Workload::NginxKeepAlive | Workload::NginxClose => &["nginx", "wrk", "taskset", "unshare"],
            Workload::Getppid | Workload::Churn => &["taskset", "unshare"],
        }
    }

    /// One run of `seconds`; returns the rate in [`Workload::unit`].
    pub fn run(self, env: &Env, seconds: f64) -> Result<f64> {
        match self {
            Workload::NginxKeepAlive => env.nginx(seconds, false),
            Workload::NginxClose => env.nginx(seconds, true),
            Workload::Getppid => env.json_rate("true", &format!("getppid --seconds {seconds}")),
            Workload::Churn => env.json_rate(
                "sysctl -qw net.ipv4.ip_local_port_range='1024 65535'",
                &format!("churn --addr 127.0.0.1:9000 --seconds {seconds}"),
            ),
        }
    }
}

/// Where the workloads' programs and files are.
pub struct Env {
    pub workload: PathBuf,
    /// nginx's configuration, document root, pid file and logs.
    pub dir: PathBuf,
}

impl Env {
    pub fn new(workload: &Path, dir: &Path) -> Result<Env> {
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/index.html"), "<html><body>conntrace bench</body></html>\n".repeat(4))?;
        std::fs::write(dir.join("nginx.conf"), nginx_conf(dir))?;
        Ok(Env { workload: workload.to_path_buf(), dir: dir.to_path_buf() })
    }

    /// `setup`, then conntrace-workload `cmd` pinned to CPU 1, in a fresh namespace; its
    /// `per_sec`.
    fn json_rate(&self, setup: &str, cmd: &str) -> Result<f64> {
        let script = format!("ip link set lo up; {setup}; exec taskset -c 1 {} {cmd}", self.workload.display());
        let out = output(Command::new("unshare").args(["-n", "sh", "-ec", &script])).context("workload run failed")?;
        let line = out.lines().last().context("the workload printed nothing")?;
        field(line, "\"per_sec\":").context("no per_sec in the workload's output")
    }

    /// nginx's worker on CPU 1 (worker_cpu_affinity), wrk on CPU 0; wrk's requests/s.
    fn nginx(&self, seconds: f64, close: bool) -> Result<f64> {
        let conf = self.dir.join("nginx.conf");
        let pid = self.dir.join("nginx.pid");
        let header = if close { "-H 'Connection: close'" } else { "" };
        let script = format!(
            "ip link set lo up; rm -f {pid}; nginx -c {conf}; \
             for i in $(seq 100); do [ -s {pid} ] && break; sleep 0.02; done; \
             taskset -c 0 wrk -t1 -c50 -d{secs}s {header} http://127.0.0.1:8080/index.html; \
             master=$(cat {pid}); kill -QUIT $master; \
             while kill -0 $master 2>/dev/null; do sleep 0.02; done",
            pid = pid.display(),
            conf = conf.display(),
            secs = seconds.round().max(1.0),
        );
        let out = output(Command::new("unshare").args(["-n", "sh", "-ec", &script])).context("nginx run failed")?;
        let line = out.lines().find(|l| l.starts_with("Requests/sec:")).context("no Requests/sec from wrk")?;
        field(line, "Requests/sec:").context("unreadable wrk output")
    }
}

/// The number after `key` in `line`.
pub fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(key)? + key.len();
    let num: String = line[at..].trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().ok()
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\nworker_cpu_affinity 10;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  \
         server {{ listen 127.0.0.1:8080 backlog=4096; root {d}/www; }}\n}}\n"
    )
}
