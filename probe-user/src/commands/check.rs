//! `conntrace check`: reads the machine's limits (and one process's, or the three processes
//! closest to their fd limit) and prints the readiness checklist; no eBPF.

use anyhow::Result;

use crate::{
    cli::CheckArgs,
    commands::host::nofile_now,
    diagnosis::check::{self, ProcFds},
    domain::net::Nofile,
    system::{facts, procinfo, systemd},
};

/// One process's fds against its RLIMIT_NOFILE, from /proc.
pub fn proc_fds(pid: u32) -> Option<ProcFds> {
    let Nofile { soft, hard, open } = nofile_now(pid);
    Some(ProcFds { pid, comm: procinfo::comm(pid).unwrap_or_else(|| "?".into()), open: open?, soft, hard })
}

/// `conntrace check`: returns the exit code (0 nothing fails, 1 an item fails, 2 bad input).
pub fn check(args: CheckArgs) -> Result<u8> {
    if let Some(pid) = args.pid {
        if !procinfo::exists(pid) {
            eprintln!("conntrace: no process with pid {pid}: check the pid (ps -p {pid}) and try again");
            return Ok(2);
        }
    }
    let procs: Vec<_> = match args.pid {
        Some(pid) => proc_fds(pid).into_iter().collect(),
        None => {
            // The three processes closest to their limit.
            let mut all: Vec<_> = std::fs::read_dir("/proc")?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(proc_fds)
                .collect();
            all.sort_by(|a, b| {
                let r = |p: &ProcFds| p.open as f64 / p.soft.unwrap_or(u64::MAX).max(1) as f64;
                r(b).total_cmp(&r(a))
            });
            all.truncate(3);
            all
        }
    };
    let net = facts::read_net_of(args.pid)?;
    let sys = facts::read_system();
    let mut items = check::run(&sys, &net, &procs);
    if let Some(connections) = args.connections {
        let target = check::Target {
            connections,
            per_destination: args.outbound_per_destination,
            new_per_second: args.new_per_second,
        };
        let proc =
            args.pid.and_then(|pid| procs.iter().find(|p| p.pid == pid)).map(|p| (p, procinfo::socket_fds(p.pid)));
        let source = args.pid.map(|pid| match systemd::unit_of(pid) {
            Some(unit) => {
                let limit_nofile = systemd::limit_nofile_of(std::path::Path::new("/"), &unit);
                check::LimitSource::Systemd { unit, limit_nofile }
            }
            None => check::LimitSource::Inherited,
        });
        items.extend(check::target_items(target, &sys, &net, proc, source.as_ref()));
    }
    if args.json {
        println!("{}", crate::render::check::to_json(&items));
    } else {
        print!("{}", crate::render::check::to_text(&items));
    }
    Ok(check::exit_code(&items))
}
