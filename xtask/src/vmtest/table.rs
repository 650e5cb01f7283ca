//! The matrix's result table: per kernel and attach mode, pass/FAIL/n/a per signal.

use probe_common::signal::Signal;

use super::BootResult;

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

pub(super) struct Row {
    pub(super) kernel: String,
    pub(super) mode: String,
    pub(super) cells: Vec<&'static str>,
    pub(super) passed: u32,
    pub(super) runs: u32,
    pub(super) secs: f64,
    pub(super) notes: Vec<String>,
}

/// One table row from a boot's results.
pub(super) fn row(kernel: &str, mode: &str, r: BootResult, mut notes: Vec<String>) -> Row {
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

pub(super) fn print_table(rows: &[Row]) {
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
