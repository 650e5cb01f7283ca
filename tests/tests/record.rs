//! Recording and reporting: `watch --record DIR` writes the stream into rotated, compressed
//! segments; `conntrace report DIR` shows the verdicts `watch` printed live; a recorder killed
//! with SIGKILL loses at most its last second; the directory stays within its bounds; the flight
//! recorder writes nothing while healthy and, at a plateau, the minutes before it.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use serde_json::Value;

/// One at a time: each test's conntrace sees every process of the host, and a plateau of one
/// test would be another's (the flight recorder's "nothing while healthy").
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The recording and the report are user space only, the same on every kernel: these run on
/// the host, not in each row of the kernel matrix (its time budget).
fn on_the_host(name: &str) -> bool {
    let vm = std::env::var("CONNTRACE_IN_VM").is_ok();
    if vm {
        eprintln!("SKIPPED {name}: recording and reports are user space only; the host suite runs them");
    }
    !vm
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("conntrace-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".ndjson.gz")));
    v.sort();
    v
}

/// `conntrace report ARGS --json`: the report document and the exit code.
fn report_json(args: &[&str]) -> (Value, Option<i32>, String) {
    let out =
        std::process::Command::new(conntrace_bin()).arg("report").args(args).arg("--json").output().expect("report");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = stdout.lines().find(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("JSON"));
    (doc.unwrap_or(Value::Null), out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Where a verdict record (or report entry) is: its destination or listener.
fn place(v: &Value) -> String {
    v["destination"].as_str().or(v["listener"].as_str()).unwrap_or("").to_string()
}

/// (cause, pid, since, destination) of the verdicts that became active, as `watch` printed them.
fn live_verdicts(lines: &[Value]) -> Vec<(String, u64, String, String)> {
    let mut v: Vec<_> = lines
        .iter()
        .filter(|l| l["type"] == "verdict" && l["state"] == "active")
        .map(|l| {
            (
                l["cause"].as_str().unwrap_or("").to_string(),
                l["pid"].as_u64().unwrap_or(0),
                l["since"].as_str().unwrap_or("").to_string(),
                place(l),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The same from a report document's timeline.
fn reported_verdicts(doc: &Value) -> Vec<(String, u64, String, String)> {
    let mut v: Vec<_> = doc["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["first_state"] == "active")
        .map(|e| {
            (
                e["cause"].as_str().unwrap_or("").to_string(),
                e["pid"].as_u64().unwrap_or(0),
                e["start"].as_str().unwrap_or("").to_string(),
                place(e),
            )
        })
        .collect();
    v.sort();
    v
}

/// An EMFILE plateau and an ephemeral-port plateau recorded: the report of the recording names
/// the same verdicts (cause, pid, start, destination) `watch` printed live, and the session's own report at
/// the end of `watch` says the same.
#[test]
fn a_recorded_plateau_is_reported_as_it_was_seen_live() {
    if !require_root("a_recorded_plateau_is_reported_as_it_was_seen_live")
        || !on_the_host("a_recorded_plateau_is_reported_as_it_was_seen_live")
    {
        return;
    }
    let _serial = one_at_a_time();
    let dir = fresh_dir("plateau");
    let d = dir.display().to_string();
    let ct = Conntrace::start(&["--record", &d]);
    let fds = in_netns("$WL emfile --nofile 64 --failures 30 --hold-ms 1000");
    let ports = in_netns(
        "sysctl -qw net.ipv4.ip_local_port_range='40000 40009'\n\
         $WL ports --listen 127.0.0.1:9000 --connect 127.0.0.1:9000 --count 15 --hold-ms 1000",
    );
    let lines = ct.stop();
    let (fd_pid, port_pid) = (report(&fds)["pid"].as_u64().unwrap(), report(&ports)["pid"].as_u64().unwrap());
    let live = live_verdicts(&lines);
    assert!(live.iter().any(|v| v.0 == "fd_limit" && v.1 == fd_pid), "{live:?}");
    assert!(live.iter().any(|v| v.0 == "ephemeral_ports" && v.1 == port_pid), "{live:?}");
    let (doc, code, err) = report_json(&[&d]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(reported_verdicts(&doc), live, "{doc}");
    // The session's own report, the last line of `watch --json`.
    let last = lines.last().expect("lines");
    assert_eq!(last["type"], "report", "{last}");
    assert_eq!(reported_verdicts(last), live);
    // --pid keeps one process.
    let (doc, _, _) = report_json(&[&d, "--pid", &fd_pid.to_string()]);
    assert!(reported_verdicts(&doc).iter().all(|v| v.1 == fd_pid), "{doc}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL in the middle of a recording: every line `watch` printed more than a second and a
/// half before the kill is in the recording, read with a warning for the torn tail, never an
/// abort; the report of it works.
#[test]
fn a_killed_recorder_loses_at_most_its_last_second() {
    if !require_root("a_killed_recorder_loses_at_most_its_last_second")
        || !on_the_host("a_killed_recorder_loses_at_most_its_last_second")
    {
        return;
    }
    let _serial = one_at_a_time();
    let dir = fresh_dir("kill");
    let d = dir.display().to_string();
    let ct = Conntrace::start(&["--record", &d]);
    let mut wl = std::process::Command::new("unshare")
        .args(["-n", "sh", "-ec", "ip link set lo up\nexec $WL emfile --nofile 64 --failures 200 --rate 50"])
        .env("WL", workload_bin())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("workload");
    std::thread::sleep(Duration::from_secs(4));
    let (seen, killed_at) = ct.kill();
    let _ = wl.kill();
    let _ = wl.wait();
    let read = probe_user::record::read_paths(std::slice::from_ref(&dir));
    eprintln!("{} lines read; warnings: {:?}", read.lines.len(), read.warnings);
    let recorded: std::collections::BTreeSet<String> = read.lines.iter().map(|l| l.value.to_string()).collect();
    let cutoff = killed_at - Duration::from_millis(1500);
    let mut missing = Vec::new();
    let mut older = 0;
    for v in &seen {
        let ts = humantime::parse_rfc3339(v["ts"].as_str().unwrap_or("")).unwrap_or(killed_at);
        if ts < cutoff {
            older += 1;
            if !recorded.contains(&v.to_string()) {
                missing.push(v.clone());
            }
        }
    }
    assert!(older > 10, "the run printed {older} lines before the cutoff");
    assert!(
        missing.is_empty(),
        "{} of {older} lines printed before the last second are not in the recording: {:?}",
        missing.len(),
        missing.first()
    );
    let (doc, code, err) = report_json(&[&d]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(doc["type"], "report");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With small bounds (16 KiB, 4 files) and a busy stream the directory rotates and deletes its oldest segments,
/// staying within --max-files and --max-size, and `status` counts the deletions.
#[test]
fn rotation_keeps_the_recording_within_its_bounds() {
    if !require_root("rotation_keeps_the_recording_within_its_bounds")
        || !on_the_host("rotation_keeps_the_recording_within_its_bounds")
    {
        return;
    }
    let _serial = one_at_a_time();
    let dir = fresh_dir("rotate");
    let d = dir.display().to_string();
    let ct = Conntrace::start(&["--record", &d, "--max-size", "16KiB", "--max-files", "4"]);
    // 1,500 short-lived processes, one connection each: a sample line apiece.
    let _ = in_netns("$WL procs --count 1500 --parallel 50");
    let lines = ct.stop();
    let segs = segments(&dir);
    let total: u64 = segs.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let last = lines.iter().rev().find(|v| v["type"] == "status").expect("status");
    eprintln!("{} segments, {total} bytes; {}", segs.len(), last["recording"]);
    assert!(segs.len() <= 4, "{segs:?}");
    assert!(total <= 16 * 1024, "{total} bytes");
    assert!(last["recording"]["segments_deleted"].as_u64().unwrap_or(0) > 0, "{}", last["recording"]);
    assert_eq!(last["recording"]["lines_lost"], 0);
    let read = probe_user::record::read_paths(std::slice::from_ref(&dir));
    assert_eq!(read.files_failed, 0, "{:?}", read.warnings);
    assert!(read.lines.iter().all(|l| l.value.is_object()));
    // Each segment is readable on its own: it starts with a header.
    for s in &segs {
        let one = probe_user::record::read_paths(std::slice::from_ref(s));
        assert_eq!(one.lines.first().map(|l| l.value["type"].clone()), Some(Value::from("header")), "{s:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The flight recorder writes nothing while all is well; when the EMFILE plateau starts it
/// writes the minutes it kept, so samples from before the first failure are in the file.
#[test]
fn the_flight_recorder_keeps_the_minutes_before_a_plateau() {
    if !require_root("the_flight_recorder_keeps_the_minutes_before_a_plateau")
        || !on_the_host("the_flight_recorder_keeps_the_minutes_before_a_plateau")
    {
        return;
    }
    let _serial = one_at_a_time();
    let dir = fresh_dir("flight");
    let d = dir.display().to_string();
    let ct = Conntrace::start(&["--record", &d, "--flight-recorder", "1m", "--post-trigger", "1s"]);
    // Healthy for 3 s: connections that succeed.
    let _ = in_netns("$WL churn --addr 127.0.0.1:9000 --seconds 3 --rate 50");
    assert!(segments(&dir).is_empty(), "nothing written while healthy: {:?}", segments(&dir));
    // A leak (20 fds a second under a limit of 256) then EMFILE. A process that makes no
    // connections is found by the scan of the host's fd tables once its table outgrows 64
    // slots (3.2 s in), at most 2 s later; its trend then needs 3 s of readings. 256 leaves
    // the warning ~3.5 s to spare before the first EMFILE (12.6 s in); 128 left none.
    let out = in_netns("$WL emfile --nofile 256 --failures 5 --rate 20 --hold-ms 1500");
    let lines = ct.stop();
    let pid = report(&out)["pid"].as_u64().unwrap();
    let first_failure = report(&out)["first_failure_ms"].as_u64().expect("EMFILE") as f64 / 1000.0;
    assert!(live_verdicts(&lines).iter().any(|v| v.0 == "fd_limit" && v.1 == pid));
    let read = probe_user::record::read_paths(std::slice::from_ref(&dir));
    assert!(!read.lines.is_empty(), "the plateau was written: {:?}", read.warnings);
    let ts = |v: &Value| humantime::parse_rfc3339(v["ts"].as_str().unwrap_or("")).ok();
    let secs = |v: &Value| ts(v).map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64());
    // The healthy minute's samples (the churn, seconds before the leak failed) and the leak's
    // warning are in the file.
    let before: Vec<&Value> = read
        .lines
        .iter()
        .map(|l| &l.value)
        .filter(|v| v["type"] == "sample" && secs(v).is_some_and(|t| t < first_failure - 2.0))
        .collect();
    eprintln!("{} samples from more than 2 s before the first EMFILE were written", before.len());
    assert!(before.len() >= 3, "the minutes before the plateau are in the file");
    let warned = read.lines.iter().filter(|l| l.value["cause"] == "fd_pressure").find_map(|l| secs(&l.value));
    eprintln!("fd_pressure written {:.1} s before the first EMFILE", warned.map_or(f64::NAN, |t| first_failure - t));
    assert!(
        warned.is_some_and(|t| t < first_failure),
        "the warning before the plateau is in the file (first EMFILE at {first_failure}; live warnings: {:?})",
        lines
            .iter()
            .filter(|v| v["cause"] == "fd_pressure")
            .map(|v| (v["ts"].clone(), v["state"].clone()))
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGUSR1 asks the flight recorder for what it kept, with no verdict: the healthy minutes
/// before the signal are written, then the post-trigger window.
#[test]
fn sigusr1_makes_the_flight_recorder_write_what_it_kept() {
    if !require_root("sigusr1_makes_the_flight_recorder_write_what_it_kept")
        || !on_the_host("sigusr1_makes_the_flight_recorder_write_what_it_kept")
    {
        return;
    }
    let _serial = one_at_a_time();
    let dir = fresh_dir("usr1");
    let d = dir.display().to_string();
    let ct = Conntrace::start(&["--record", &d, "--flight-recorder", "1m", "--post-trigger", "1s"]);
    let out = in_netns("$WL churn --addr 127.0.0.1:9000 --seconds 2 --rate 50");
    let pid = report(&out)["pid"].as_u64().unwrap();
    assert!(segments(&dir).is_empty(), "nothing written before the signal");
    let asked = std::time::SystemTime::now();
    // SAFETY: kill(2) of the conntrace we started.
    unsafe { libc::kill(ct.pid() as i32, libc::SIGUSR1) };
    std::thread::sleep(Duration::from_millis(2500));
    let lines = ct.stop();
    let read = probe_user::record::read_paths(std::slice::from_ref(&dir));
    let churn: Vec<&Value> =
        read.lines.iter().map(|l| &l.value).filter(|v| v["type"] == "sample" && v["pid"] == pid).collect();
    let live = lines.iter().filter(|v| v["type"] == "sample" && v["pid"] == pid).count();
    eprintln!("{} of the churn's {live} samples written after SIGUSR1", churn.len());
    assert_eq!(churn.len(), live, "every sample kept before the signal is written");
    // Those from before the signal (the churn's last sample may come in the interval after it)
    // came from memory.
    let ts = |v: &Value| humantime::parse_rfc3339(v["ts"].as_str().unwrap_or("")).ok();
    let before = churn.iter().filter(|v| ts(v).is_some_and(|t| t < asked)).count();
    assert!(before >= 5, "{before} samples from before the signal were written");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording directory that cannot be created is a one-line error naming it, before anything
/// is attached; a report on files that are not recordings names them and exits 1.
#[test]
fn bad_recording_paths_are_refused_with_the_fix() {
    if !require_root("bad_recording_paths_are_refused_with_the_fix")
        || !on_the_host("bad_recording_paths_are_refused_with_the_fix")
    {
        return;
    }
    let _serial = one_at_a_time();
    let out = std::process::Command::new(conntrace_bin())
        .args(["watch", "--json", "--duration", "1s", "--record", "/proc/version/sub"])
        .output()
        .expect("conntrace");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/version/sub") && err.trim().lines().count() == 1, "{err}");
    let junk = std::env::temp_dir().join(format!("conntrace-junk-{}.ndjson.gz", std::process::id()));
    std::fs::write(&junk, b"not a recording").unwrap();
    let (_, code, err) = report_json(&[junk.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(junk.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_file(&junk);
}

/// The HTML report of a recorded EMFILE plateau, opened in headless Chromium: the screenshot
/// shows its charts drawn (pixels in the series colors), the page fetches nothing.
#[test]
fn the_html_report_draws_its_charts_in_a_browser() {
    let name = "the_html_report_draws_its_charts_in_a_browser";
    if !require_root(name) || !on_the_host(name) {
        return;
    }
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("SKIPPED {name}: no chromium (cargo xtask setup installs the Debian package)");
        return;
    };
    let _serial = one_at_a_time();
    let dir = fresh_dir("html");
    let d = dir.display().to_string();
    let ct = Conntrace::start(&["--record", &d]);
    let _ = in_netns("$WL emfile --nofile 128 --failures 40 --rate 40 --hold-ms 1500");
    let _ = ct.stop();
    let html = dir.join("report.html");
    let (_, code, err) = report_json(&[&d, "--html", html.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    // Self-contained: no URL but the SVG namespace.
    assert_eq!(page.matches("http").count(), page.matches("http://www.w3.org/2000/svg").count(), "a fetch in the page");
    assert!(!page.contains("<script"), "no script needed");
    // The same page with every series path emptied: what the legends and shading alone draw.
    let mut bare = String::new();
    let mut rest = page.as_str();
    while let Some(i) = rest.find("class=\"series\" d=\"") {
        let j = i + "class=\"series\" d=\"".len();
        bare.push_str(&rest[..j]);
        rest = &rest[j..];
        rest = &rest[rest.find('"').unwrap_or(0)..];
    }
    bare.push_str(rest);
    let bare_html = dir.join("bare.html");
    std::fs::write(&bare_html, bare).unwrap();
    let drawn = series_pixels(chromium, &html);
    let without = series_pixels(chromium, &bare_html);
    eprintln!("{drawn} pixels in the series colors; {without} with the series paths emptied");
    assert!(drawn > without + 300, "the charts' lines were not drawn: {drawn} vs {without} without them");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pixels in the report's series colors (anti-aliasing allowed for) on a headless Chromium
/// screenshot of `page`.
fn series_pixels(chromium: &str, page: &Path) -> usize {
    let shot = page.with_extension("png");
    let out = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(shot.exists(), "chromium wrote no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let px = info.color_type.samples();
    let palette: [[i32; 3]; 3] = [[0x1f, 0x77, 0xb4], [0xd6, 0x27, 0x28], [0x2c, 0xa0, 0x2c]];
    buf[..info.buffer_size()]
        .chunks(px)
        .filter(|p| palette.iter().any(|c| (0..3).all(|i| (p[i] as i32 - c[i]).abs() < 24)))
        .count()
}
