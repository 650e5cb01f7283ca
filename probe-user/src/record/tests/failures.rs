use std::{fs, io::Write as _, process::Command};

use super::*;

#[test]
fn an_unwritable_dir_is_one_line_naming_it() {
    let dir = TempDir::new("unwritable");
    let file = dir.0.join("a-file");
    fs::write(&file, "x").unwrap();
    // As root, permission bits stop nothing: a path through a regular file does.
    for target in [file.clone(), file.join("sub")] {
        let err = Recorder::create(&target, Bounds::default(), header()).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains(&target.display().to_string()) && msg.contains("--record"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

#[test]
fn a_removed_dir_is_counted_then_recorded_again() {
    let dir = TempDir::new("removed");
    let rec_dir = dir.0.join("rec");
    let mut rec = Recorder::create_at(&rec_dir, Bounds::default(), header(), at(0)).unwrap();
    for i in 0..20 {
        rec.write(at(0), &numbered(i));
    }
    rec.flush();
    fs::remove_dir_all(&rec_dir).unwrap();
    for i in 20..25 {
        rec.write(at(1), &numbered(i));
    }
    rec.flush();
    // The 25 lines went to a file no one can read any more: counted, reported once.
    assert_eq!((rec.stats().lines, rec.stats().lines_lost, rec.reports), (0, 25, 1));
    assert!(rec.stats().last_error.as_deref().unwrap().contains("removed"));
    rec.write(at(2), &numbered(25));
    let stats = rec.finish();
    assert_eq!((stats.lines, stats.lines_lost, stats.segments), (1, 25, 2));
    let out = read_paths(std::slice::from_ref(&rec_dir));
    assert_eq!(indexes(&out.lines), [25]);
}

/// A tmpfs of 64 KiB mounted for the test, unmounted after.
struct SmallDisk(TempDir);

impl SmallDisk {
    fn mount() -> Result<SmallDisk, String> {
        let dir = TempDir::new("tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "conntrace-test"])
            .arg(&dir.0)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0 .0).status();
    }
}

#[test]
fn a_full_disk_loses_lines_counted_and_writing_resumes_after() {
    let disk = match SmallDisk::mount() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED a_full_disk_loses_lines_counted_and_writing_resumes_after: cannot mount a tmpfs ({e})");
            return;
        }
    };
    let root = disk.0 .0.clone();
    let rec_dir = root.join("rec");
    let mut rec = Recorder::create_at(&rec_dir, Bounds::default(), header(), at(0)).unwrap();
    // Fill the rest of the disk.
    let filler = root.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    while f.write_all(&[0x5a; 4096]).is_ok() {}
    drop(f);
    // A new recording there cannot start: one line saying why and what to do.
    let err = Recorder::create(&root.join("other"), Bounds::default(), header()).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("other") && msg.contains("free space") && !msg.contains('\n'), "{msg}");
    // Lines that do not compress, until the disk refuses them.
    let noise = |i: u64| format!(r#"{{"type":"sample","n":{i},"noise":"{}"}}"#, pseudo_random_hex(i, 600));
    let mut given = 0;
    for i in 0..200 {
        rec.write(at(i / 10), &noise(i));
        given += 1;
        rec.flush();
        if rec.stats().lines_lost > 0 && i % 10 == 9 {
            break;
        }
    }
    let stats = rec.stats().clone();
    assert!(stats.lines_lost > 0, "{stats:?}");
    assert!(stats.last_error.as_deref().unwrap().contains("No space left"), "{stats:?}");
    assert_eq!(stats.lines + stats.lines_lost, given);
    assert_eq!(rec.reports, 1);
    // Space again: a new segment within a second.
    fs::remove_file(&filler).unwrap();
    for i in 0..10 {
        rec.write(at(100 + i), &noise(1_000 + i));
    }
    let end = rec.finish();
    assert_eq!(end.segments, stats.segments + 1, "{end:?}");
    assert_eq!(end.lines + end.lines_lost, given + 10);
    assert_eq!(end.lines_lost, stats.lines_lost, "{end:?}");
    // Every line counted written is there (and maybe some of those counted lost: the failed
    // segment's encoder tries to finish it once more), in order.
    let out = read_paths(std::slice::from_ref(&rec_dir));
    let got = indexes(&out.lines);
    let before = got.len() - 10;
    assert!(before as u64 >= end.lines - 10, "{got:?} {end:?}");
    assert_eq!(got, (0..before as u64).chain(1_000..1_010).collect::<Vec<_>>());
}

fn pseudo_random_hex(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x % 16) as usize])
        })
        .collect()
}
