use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime},
};

use flate2::{write::GzEncoder, Compression};
use serde_json::{json, Value};

use super::*;

/// What an I/O error does to a recording.
mod failures;

/// A directory removed when the test ends.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("conntrace-record-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
}

/// The golden `sample` line (probe-user/src/snapshots), its `ts` a second per 10 lines and its
/// counts varying as a busy process's do.
pub(crate) fn sample(i: u64) -> String {
    let ts = segment::ts(at(i / 10));
    let v = |m: u64| (i * 7919 + m * 104_729) % (m * 10 + 1);
    format!(
        r#"{{"type":"sample","ts":"{ts}","pid":{},"comm":"nginx","interval_s":1.0,"connect_attempts":{},"connect_ok":{},"connect_errors":{{"EADDRNOTAVAIL":{},"ECONNREFUSED":{}}},"connect_async_ok":10,"connect_async_errors":2,"port_assign_failures":{},"time_wait_created":{},"emfile":0,"enfile":0,"tw_overflows":0,"bind_errors":{{}},"bind_failures":0,"bound_connects":0,"listen_drops":{},"syncookies":0,"listens":1,"tcp_mem_send_refused":0,"tcp_mem_recv_refused":0,"memcg_refused":0,"netfilter_drops":0,"nofile_limit":1024,"open_fds":{}}}"#,
        1000 + i % 10,
        v(100),
        v(60),
        v(30),
        v(10),
        v(30),
        v(55),
        v(5),
        v(1000)
    )
}

fn header() -> Value {
    json!({"conntrace": "0.1.0", "argv": ["watch", "--record", "DIR"]})
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    segment::list_segments(dir).unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    segments(dir).iter().map(|(_, p)| fs::metadata(p).unwrap().len()).sum()
}

/// The `i` of the sample lines read back (headers left out).
fn indexes(lines: &[Line]) -> Vec<u64> {
    lines.iter().filter(|l| l.value["type"] != "header").map(|l| l.value["n"].as_u64().unwrap()).collect()
}

/// A sample line numbered with `n`, to tell which came back.
fn numbered(i: u64) -> String {
    sample(i).replacen(r#""type":"sample","#, &format!(r#""type":"sample","n":{i},"#), 1)
}

#[test]
fn names_sort_in_recording_order_and_parse_back() {
    let name = segment_name(at(0), 42);
    assert_eq!(name, "conntrace-20260921T141320Z-000042.ndjson.gz");
    assert_eq!(parse_segment_name(&name), Some(42));
    assert_eq!(parse_segment_name(&segment_name(at(0), 1_234_567)), Some(1_234_567));
    for other in ["conntrace-x-000001.ndjson.gz", "conntrace-20260921T141320Z-01.ndjson.gz", "notes.txt", ""] {
        assert_eq!(parse_segment_name(other), None, "{other}");
    }
    // A clock far off is clamped, not a panic.
    assert!(segment_name(SystemTime::UNIX_EPOCH - Duration::from_secs(5), 1).starts_with("conntrace-19700101T000000Z"));
}

#[test]
fn round_trip_across_rotations_in_order_each_segment_with_its_header() {
    let dir = TempDir::new("roundtrip");
    // A share of 1,500 bytes per segment and no deletion: every line comes back.
    let bounds = Bounds { max_bytes: 1_500 * 1_000, max_files: 1_000, rotate: Duration::from_secs(3600) };
    let mut rec = Recorder::create_at(&dir.0, bounds, header(), at(0)).unwrap();
    for i in 0..1_000 {
        rec.write(at(i / 10), &numbered(i));
        if i % 10 == 9 {
            rec.flush();
        }
    }
    let stats = rec.finish();
    assert_eq!((stats.lines, stats.lines_lost, stats.segments_deleted, stats.last_error), (1_000, 0, 0, None));
    let segs = segments(&dir.0);
    assert!(segs.len() > 5, "rotations: {}", segs.len());
    assert_eq!(stats.segments, segs.len() as u64);
    assert_eq!(stats.bytes, dir_bytes(&dir.0));
    for (_, p) in &segs {
        assert!(fs::metadata(p).unwrap().len() <= 1_500, "{} over its share", p.display());
    }
    let out = read_paths(std::slice::from_ref(&dir.0));
    assert_eq!((out.files_read, out.files_failed), (segs.len(), 0));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(indexes(&out.lines), (0..1_000).collect::<Vec<_>>());
    // Streamed, the same lines in the same order, none kept.
    let mut streamed = Vec::new();
    let each = crate::record::each_line(std::slice::from_ref(&dir.0), &mut |file, value| {
        streamed.push(Line { file: file.to_path_buf(), value })
    });
    assert!(each.lines.is_empty());
    assert_eq!(each.lines_read, out.lines.len() as u64);
    assert_eq!(streamed, out.lines);
    for (seq, p) in &segs {
        let first = out.lines.iter().find(|l| l.file == *p).unwrap();
        assert_eq!(first.value["type"], "header");
        assert_eq!(first.value["segment"], *seq);
        assert_eq!(first.value["format"], 1);
        assert_eq!(first.value["conntrace"], "0.1.0");
        assert!(first.value["ts"].as_str().unwrap().ends_with('Z'));
    }
    // The lines themselves, byte for byte as JSON.
    let back: Vec<&Value> = out.lines.iter().map(|l| &l.value).filter(|v| v["type"] != "header").collect();
    assert_eq!(back[7], &serde_json::from_str::<Value>(&numbered(7)).unwrap());
}

#[test]
fn bounds_hold_and_the_oldest_segments_are_deleted() {
    let dir = TempDir::new("bounds");
    // A leftover from another run that is no segment stays.
    fs::write(dir.0.join("notes.txt"), "keep me").unwrap();
    let bounds = Bounds { max_bytes: 6_000, max_files: 4, rotate: Duration::from_secs(3600) };
    let mut rec = Recorder::create_at(&dir.0, bounds, header(), at(0)).unwrap();
    for i in 0..1_000 {
        rec.write(at(i / 10), &numbered(i));
        if i % 10 == 9 {
            rec.flush();
            let segs = segments(&dir.0);
            assert!(segs.len() <= 4, "{} files", segs.len());
            assert!(dir_bytes(&dir.0) <= 6_000, "{} bytes", dir_bytes(&dir.0));
        }
    }
    let stats = rec.finish();
    let segs = segments(&dir.0);
    assert!(segs.len() <= 4 && dir_bytes(&dir.0) <= 6_000);
    assert!(stats.segments_deleted > 0);
    assert_eq!(stats.segments_deleted, stats.segments - segs.len() as u64);
    assert_eq!((stats.lines, stats.lines_lost), (1_000, 0));
    assert!(dir.0.join("notes.txt").exists());
    // What is left is the end of the recording, in order, each segment with its header.
    let out = read_paths(std::slice::from_ref(&dir.0));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let got = indexes(&out.lines);
    assert_eq!(got.last(), Some(&999));
    assert_eq!(got, (got[0]..1_000).collect::<Vec<_>>());
    assert_eq!(out.lines.iter().filter(|l| l.value["type"] == "header").count(), segs.len());
}

#[test]
fn a_segment_older_than_rotate_is_closed() {
    let dir = TempDir::new("age");
    let bounds = Bounds { rotate: Duration::from_secs(10), ..Bounds::default() };
    let mut rec = Recorder::create_at(&dir.0, bounds, Value::Null, at(0)).unwrap();
    for i in 0..35 {
        rec.write(at(i), &numbered(i));
    }
    let stats = rec.finish();
    // Opened at 0, 10, 20, 30.
    assert_eq!(stats.segments, 4);
    let out = read_paths(std::slice::from_ref(&dir.0));
    assert_eq!(indexes(&out.lines), (0..35).collect::<Vec<_>>());
    let header = &out.lines[0].value;
    assert_eq!(header.as_object().unwrap().keys().collect::<Vec<_>>(), ["type", "ts", "format", "segment"]);
}

#[test]
fn a_restart_continues_the_sequence() {
    let dir = TempDir::new("restart");
    let first = Recorder::create_at(&dir.0, Bounds::default(), header(), at(100)).unwrap();
    first.finish();
    // A later run whose clock is behind still sorts after the first.
    let mut second = Recorder::create_at(&dir.0, Bounds::default(), header(), at(0)).unwrap();
    second.write(at(1), &numbered(1));
    second.finish();
    let segs = segments(&dir.0);
    assert_eq!(segs.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
    let out = read_paths(std::slice::from_ref(&dir.0));
    assert_eq!(out.lines.last().unwrap().file, segs[1].1);
}

#[test]
fn killed_after_a_flush_every_line_before_it_reads_back() {
    let dir = TempDir::new("kill9");
    let mut rec = Recorder::create_at(&dir.0, Bounds::default(), header(), at(0)).unwrap();
    let seg = rec.current_segment().unwrap().to_path_buf();
    for i in 0..500 {
        rec.write(at(i / 10), &numbered(i));
    }
    rec.flush();
    let copy = dir.0.join("copy-after-flush.gz");
    fs::copy(&seg, &copy).unwrap();
    for i in 500..507 {
        rec.write(at(50), &numbered(i));
    }
    let later = dir.0.join("copy-later.gz");
    fs::copy(&seg, &later).unwrap();
    // kill -9: no finish, no drop.
    std::mem::forget(rec);

    let out = read_paths(std::slice::from_ref(&copy));
    assert_eq!(indexes(&out.lines), (0..500).collect::<Vec<_>>());
    assert_eq!((out.files_read, out.files_failed), (1, 0));
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    let w = &out.warnings[0];
    assert!(w.contains(&copy.display().to_string()) && w.contains("torn tail"), "{w}");
    let size = fs::metadata(&copy).unwrap().len();
    assert!(w.contains(&format!("compressed byte {size}:")), "{w}");

    // Lines after the last flush may be missing, nothing before it.
    let out = read_paths(std::slice::from_ref(&later));
    let got = indexes(&out.lines);
    assert!(got.len() >= 500 && got.len() <= 507 && got == (0..got.len() as u64).collect::<Vec<_>>());
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
}

#[test]
fn a_segment_cut_at_every_offset_reads_a_prefix() {
    let dir = TempDir::new("truncate");
    let mut rec = Recorder::create_at(&dir.0, Bounds::default(), header(), at(0)).unwrap();
    let seg = rec.current_segment().unwrap().to_path_buf();
    // Small enough to cut at each of its bytes (flate2 is unoptimized in test builds), with sync
    // flushes inside as every recording has.
    for i in 0..60 {
        rec.write(at(i / 10), &numbered(i));
        if i % 20 == 19 {
            rec.flush();
        }
    }
    rec.finish();
    let whole = fs::read(&seg).unwrap();
    let all = read_paths(std::slice::from_ref(&seg));
    assert!(all.warnings.is_empty() && all.lines.len() == 61);
    let cut = dir.0.join("cut.gz");
    for len in 0..whole.len() {
        fs::write(&cut, &whole[..len]).unwrap();
        let out = read_paths(std::slice::from_ref(&cut));
        assert_eq!(out.files_read + out.files_failed, 1);
        assert_eq!(out.warnings.len(), 1, "at {len}: {:?}", out.warnings);
        let values: Vec<&Value> = out.lines.iter().map(|l| &l.value).collect();
        let prefix: Vec<&Value> = all.lines.iter().take(values.len()).map(|l| &l.value).collect();
        assert_eq!(values, prefix, "at {len}");
        if out.files_read == 1 {
            assert!(out.warnings[0].contains("torn tail"), "at {len}: {}", out.warnings[0]);
        } else {
            assert!(out.warnings[0].contains("not a conntrace recording"), "at {len}: {}", out.warnings[0]);
        }
    }
}

#[test]
fn foreign_files_are_named_and_the_others_still_read() {
    let dir = TempDir::new("foreign");
    let gzip = |text: &str| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap()
    };
    let files = [
        ("plain.txt", b"just some text\n".to_vec()),
        ("empty", Vec::new()),
        ("words.gz", gzip("not json at all\n")),
        ("json.gz", gzip("{\"type\":\"sample\"}\n")),
    ];
    let mut rec = Recorder::create_at(&dir.0.join("rec"), Bounds::default(), header(), at(0)).unwrap();
    rec.write(at(1), &numbered(1));
    rec.finish();
    let mut paths = Vec::new();
    for (name, bytes) in &files {
        fs::write(dir.0.join(name), bytes).unwrap();
        paths.push(dir.0.join(name));
    }
    paths.insert(2, dir.0.join("rec"));
    paths.push(dir.0.join("missing.gz"));
    let out = read_paths(&paths);
    assert_eq!((out.files_read, out.files_failed), (1, 5));
    assert_eq!(indexes(&out.lines), [1]);
    assert_eq!(out.warnings.len(), 5, "{:?}", out.warnings);
    for (name, _) in &files {
        let w = out.warnings.iter().find(|w| w.starts_with(&dir.0.join(name).display().to_string())).unwrap();
        assert!(w.contains(": not a conntrace recording ("), "{w}");
    }
    // A directory with no segment says so; its other files are not read.
    let out = read_paths(std::slice::from_ref(&dir.0));
    assert_eq!((out.files_read, out.files_failed, out.warnings.len()), (0, 0, 1));
}

#[test]
fn bounds_too_small_for_a_line_keep_one_segment_of_one_line() {
    let dir = TempDir::new("tiny");
    let bounds = Bounds { max_bytes: 0, max_files: 0, rotate: Duration::ZERO };
    let mut rec = Recorder::create_at(&dir.0, bounds, header(), at(0)).unwrap();
    for i in 0..20 {
        rec.write(at(i), &numbered(i));
    }
    // A newline inside a line would split it for a reader: written as a space.
    rec.write(at(20), "{\"type\":\"sample\",\n\"n\":20}");
    let stats = rec.finish();
    assert_eq!((stats.lines, stats.lines_lost, stats.segments, stats.segments_deleted), (21, 0, 21, 20));
    let out = read_paths(std::slice::from_ref(&dir.0));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(indexes(&out.lines), [20]);
}

#[test]
fn compressed_size_of_typical_lines() {
    let dir = TempDir::new("size");
    let mut rec = Recorder::create_at(&dir.0, Bounds::default(), header(), at(0)).unwrap();
    let raw: usize = (0..10_000).map(|i| sample(i).len() + 1).sum();
    for i in 0..10_000 {
        rec.write(at(i / 10), &sample(i));
        // The watcher flushes once a second: 10 lines per second here.
        if i % 10 == 9 {
            rec.flush();
        }
    }
    let stats = rec.finish();
    eprintln!(
        "10,000 sample lines: {raw} bytes of NDJSON, {} bytes compressed in {} segment(s) ({:.1} bytes a line)",
        stats.bytes,
        stats.segments,
        stats.bytes as f64 / 10_000.0
    );
    assert!(stats.bytes < raw as u64 / 4, "{} of {raw}", stats.bytes);
}
