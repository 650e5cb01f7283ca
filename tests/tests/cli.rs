//! Bad input: clear one-line errors and the right exit codes.

mod common;

use common::*;
use std::process::Command;

#[test]
fn bad_flags_exit_2() {
    let out = Command::new(conntrace_bin()).args(["watch", "--interval", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));
}

#[test]
fn unknown_pid_is_a_clear_error() {
    if !require_root("unknown_pid_is_a_clear_error") {
        return;
    }
    let out = Command::new(conntrace_bin()).args(["watch", "--pid", "999999999"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process with pid 999999999"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn without_privileges_it_names_the_fix() {
    if !require_root("without_privileges_it_names_the_fix") {
        return;
    }
    // Run as nobody with no capabilities (setpriv, util-linux), from a copy nobody can reach.
    let dir = std::env::temp_dir().join(format!("conntrace-nopriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("conntrace");
    std::fs::copy(conntrace_bin(), &bin).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .args(["watch", "--duration", "1s"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sudo") && err.contains("setcap cap_bpf,cap_perfmon"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn duration_ends_the_run_cleanly_with_a_final_interval() {
    if !require_root("duration_ends_the_run_cleanly_with_a_final_interval") {
        return;
    }
    let out =
        Command::new(conntrace_bin()).args(["watch", "--duration", "700ms", "--interval", "500ms"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("port_assign"), "status first: {text}");
    // One full interval and the final partial one.
    assert_eq!(text.matches("PID     COMM").count(), 2, "{text}");
}
