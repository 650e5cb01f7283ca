//! The writer: segments rotated by age and size, the oldest deleted to keep the directory within
//! its bounds, I/O errors counted and reported once rather than returned (a recording must never
//! stop the watch it records).

use std::{
    borrow::Cow,
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, Result};
use flate2::{write::GzEncoder, Compression};
use serde_json::{Map, Value};

use super::{
    segment::{self, Counted, Segment},
    Bounds, RecordStats,
};

/// While the directory cannot be written, opening a segment is retried at most this often (by the
/// `now` of the writes): not once per line on a full disk.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// An I/O error on a file, with the lines handed to that file that it may have cost.
type Failure = (PathBuf, io::Error, u64);

/// Writes NDJSON lines into rotating gzip segments of one directory (see the module's doc).
pub struct Recorder {
    dir: PathBuf,
    bounds: Bounds,
    /// The caller's header fields, repeated at the top of every segment.
    header: Map<String, Value>,
    current: Option<Segment>,
    next_seq: u64,
    /// Compressed bytes of the segments no longer written (the current one counts its own).
    closed_bytes: u64,
    stats: RecordStats,
    /// A failure was reported on stderr and writing has not worked since: the next error of the
    /// same failure stays in the counts only.
    failing: bool,
    /// When opening a segment last failed.
    failed_open_at: Option<SystemTime>,
    /// Lines printed on stderr, for the tests.
    pub(super) reports: u64,
}

impl Recorder {
    /// Creates DIR if needed. Err (one line naming DIR and the fix) if it cannot be created or
    /// written.
    pub fn create(dir: &Path, bounds: Bounds, header: Value) -> Result<Recorder> {
        Recorder::create_at(dir, bounds, header, SystemTime::now())
    }

    /// [`Recorder::create`] with the first segment opened at `now` (name, header `ts`, and the
    /// start of its age for rotation), as the later ones are opened at the `now` of a write.
    pub fn create_at(dir: &Path, bounds: Bounds, header: Value, now: SystemTime) -> Result<Recorder> {
        let shown = dir.display();
        fs::create_dir_all(dir)
            .map_err(|e| anyhow!("cannot record to {shown}: cannot create it as a directory ({e}): {}", fix(&e)))?;
        let existing = segment::list_segments(dir)
            .map_err(|e| anyhow!("cannot record to {shown}: cannot list it ({e}): {}", fix(&e)))?;
        // A restart continues the sequence, so names still sort in recording order.
        let next_seq = existing.last().map_or(1, |(seq, _)| seq.saturating_add(1));
        let header = match header {
            Value::Object(fields) => fields,
            Value::Null => Map::new(),
            other => Map::from_iter([("header".to_string(), other)]),
        };
        let mut rec = Recorder {
            dir: dir.to_path_buf(),
            bounds,
            header,
            current: None,
            next_seq,
            closed_bytes: 0,
            stats: RecordStats::default(),
            failing: false,
            failed_open_at: None,
            reports: 0,
        };
        rec.open(now).map_err(|(path, e, _)| {
            anyhow!("cannot record to {shown}: cannot write {} there ({e}): {}", file_name(&path), fix(&e))
        })?;
        rec.prune();
        Ok(rec)
    }

    /// The segment being written, if one is open.
    pub fn current_segment(&self) -> Option<&Path> {
        self.current.as_ref().map(|s| s.path.as_path())
    }

    pub fn stats(&self) -> &RecordStats {
        &self.stats
    }

    /// Appends one NDJSON line (without newline). Never returns an error: an I/O error (disk full,
    /// DIR removed) is counted in the stats (`lines_lost`, `last_error`) and reported once on
    /// stderr; later writes retry (a new segment, at most once a second while it fails).
    pub fn write(&mut self, now: SystemTime, line: &str) {
        // A newline would split the line in two for a reader. Between JSON tokens it is
        // whitespace, as a space is, and inside a string it is not valid JSON to begin with.
        let line: Cow<str> =
            if line.contains('\n') { Cow::Owned(line.replace('\n', " ")) } else { Cow::Borrowed(line) };
        let len = line.len() as u64 + 1;
        if self.current.is_none() {
            let retry = self
                .failed_open_at
                .is_none_or(|at| now < at || now.duration_since(at).unwrap_or_default() >= RETRY_EVERY);
            if !retry {
                self.stats.lines_lost += 1;
                return;
            }
            if let Err((path, e, _)) = self.open(now) {
                self.failed(&path, &e, 0, 1);
                return;
            }
            self.prune();
        }
        if let Err((path, e, unsure)) = self.make_room(now, len) {
            self.failed(&path, &e, unsure, 1);
            return;
        }
        let Some(seg) = self.current.as_mut() else {
            self.stats.lines_lost += 1;
            return;
        };
        match seg.enc.write_all(line.as_bytes()).and_then(|()| seg.enc.write_all(b"\n")) {
            Ok(()) => {
                seg.pending += len;
                seg.pending_lines += 1;
                seg.lines += 1;
                self.stats.lines += 1;
            }
            Err(e) => {
                let (path, unsure) = (seg.path.clone(), seg.pending_lines);
                self.abandon();
                self.failed(&path, &e, unsure, 1);
            }
        }
        self.refresh_bytes();
    }

    /// Makes everything written so far readable by a reader even if the process is killed right
    /// after (gzip sync flush, then the file's buffer to the kernel; no fsync: a process killed
    /// loses nothing the kernel holds, only a machine that goes down does).
    pub fn flush(&mut self) {
        let Some(seg) = self.current.as_mut() else { return };
        // Nothing written since the last sync flush: another would add an empty deflate block
        // (an idle recording would grow by ~50 bytes a second for nothing).
        if seg.pending == 0 && seg.pending_lines == 0 {
            return;
        }
        let checked = seg.sync().map_err(|e| (e, seg.pending_lines)).and_then(|()| match seg.still_there() {
            Ok(true) => Ok(()),
            // Every line of a removed file is gone with it.
            Ok(false) => {
                Err((io::Error::new(io::ErrorKind::NotFound, "the segment was removed or replaced"), seg.lines))
            }
            Err(e) => Err((e, seg.lines)),
        });
        match checked {
            Ok(()) => self.failing = false,
            Err((e, unsure)) => {
                let path = seg.path.clone();
                self.abandon();
                self.failed(&path, &e, unsure, 0);
                // The next write tries a new segment at once.
                self.failed_open_at = None;
            }
        }
        self.refresh_bytes();
    }

    /// Flushes and closes the current segment (gzip trailer written).
    pub fn finish(mut self) -> RecordStats {
        if let Err((path, e, unsure)) = self.close() {
            self.failed(&path, &e, unsure, 0);
        }
        self.refresh_bytes();
        self.stats
    }

    /// Before a line of `len` bytes: a new segment if the current one is too old or the line
    /// could take it past its share of `max_bytes`.
    fn make_room(&mut self, now: SystemTime, len: u64) -> Result<(), Failure> {
        let limit = self.segment_limit();
        let Some(seg) = self.current.as_mut() else { return Ok(()) };
        // A clock stepped back restarts the segment's age rather than keeping it open for as long.
        if now < seg.opened {
            seg.opened = now;
        }
        let old = now.duration_since(seg.opened).unwrap_or_default() >= self.bounds.rotate;
        if !old && seg.pending > 0 && seg.size_with(len) > limit {
            // Maybe it is not that big: a sync flush tells how big it is.
            if let Err(e) = seg.sync() {
                let failure = (seg.path.clone(), e, seg.pending_lines);
                self.abandon();
                return Err(failure);
            }
            self.failing = false;
        }
        let Some(seg) = self.current.as_ref() else { return Ok(()) };
        // One with its header only takes the line whatever its age and size: no segment is
        // left without a line, and bounds too small for one line do not rotate forever.
        if seg.lines > 0 && (old || seg.size_with(len) > limit) {
            if let Err((path, e, unsure)) = self.close() {
                self.failed(&path, &e, unsure, 0);
            }
            self.open(now)?;
            self.prune();
        }
        Ok(())
    }

    /// A segment's share of `max_bytes`.
    fn segment_limit(&self) -> u64 {
        self.bounds.max_bytes / self.bounds.max_files.max(1) as u64
    }

    /// Opens the next segment, its header flushed to the file.
    fn open(&mut self, now: SystemTime) -> Result<(), Failure> {
        let opened = self.try_open(now);
        self.failed_open_at = if opened.is_err() { Some(now) } else { None };
        opened
    }

    fn try_open(&mut self, now: SystemTime) -> Result<(), Failure> {
        // The directory removed under a running recording is made again, as `create` made it.
        fs::create_dir_all(&self.dir).map_err(|e| (self.dir.clone(), e, 0))?;
        let mut path = self.dir.join(segment::segment_name(now, self.next_seq));
        let file = match File::options().write(true).create_new(true).open(&path) {
            // Another recorder in the same directory took this number: continue after its last.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let last = segment::list_segments(&self.dir).map_err(|e| (path.clone(), e, 0))?.last().map(|(s, _)| *s);
                self.next_seq = last.unwrap_or(self.next_seq).max(self.next_seq).saturating_add(1);
                path = self.dir.join(segment::segment_name(now, self.next_seq));
                File::options().write(true).create_new(true).open(&path)
            }
            other => other,
        };
        let seq = self.next_seq;
        let file = file.map_err(|e| (path.clone(), e, 0))?;
        self.next_seq = seq.saturating_add(1);
        let mut enc = GzEncoder::new(Counted { file: BufWriter::new(file), bytes: 0 }, Compression::default());
        let header = self.header_line(now, seq);
        if let Err(e) = enc.write_all(header.as_bytes()).and_then(|()| enc.write_all(b"\n")).and_then(|()| enc.flush())
        {
            drop(enc);
            // A file without its header is no recording: leave none behind.
            let _ = fs::remove_file(&path);
            return Err((path, e, 0));
        }
        self.stats.segments += 1;
        self.current = Some(Segment { path, opened: now, enc, pending: 0, pending_lines: 0, lines: 0 });
        self.failing = false;
        self.refresh_bytes();
        Ok(())
    }

    /// `{"type":"header","ts":…,"format":1,"segment":N, the caller's fields…}`.
    fn header_line(&self, now: SystemTime, seq: u64) -> String {
        let mut fields = Map::new();
        fields.insert("type".into(), "header".into());
        fields.insert("ts".into(), segment::ts(now).into());
        fields.insert("format".into(), segment::FORMAT.into());
        fields.insert("segment".into(), seq.into());
        for (k, v) in &self.header {
            fields.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(fields).to_string()
    }

    /// Finishes the current segment: the rest of the stream, its trailer, the file's buffer.
    fn close(&mut self) -> Result<(), Failure> {
        let Some(mut seg) = self.current.take() else { return Ok(()) };
        // Not `enc.flush()` after `try_finish`: flate2 asserts no trailer byte was written then.
        let done = seg.enc.try_finish().and_then(|()| seg.enc.get_mut().flush());
        self.closed_bytes += seg.written();
        done.map_err(|e| (seg.path, e, seg.pending_lines))
    }

    /// Drops the current segment after an error; a new one is opened by a later write. What
    /// reached its file stays readable up to the error (a torn tail for a reader).
    fn abandon(&mut self) {
        if let Some(seg) = self.current.take() {
            self.closed_bytes += seg.written();
            // Dropping the encoder tries to finish the stream once more; its error is the one
            // already counted.
            drop(seg);
        }
    }

    /// Counts the lines an I/O error on `path` cost (`unsure`: handed to a segment since its last
    /// successful flush; `refused`: never handed to one) and reports the first error of a failure.
    fn failed(&mut self, path: &Path, err: &io::Error, unsure: u64, refused: u64) {
        self.stats.lines = self.stats.lines.saturating_sub(unsure);
        self.stats.lines_lost += unsure + refused;
        self.stats.last_error = Some(format!("{}: {err}", path.display()));
        if !self.failing {
            self.failing = true;
            self.reports += 1;
            eprintln!(
                "conntrace: recording to {}: {}: {err}: {} lines not written so far",
                self.dir.display(),
                file_name(path),
                self.stats.lines_lost
            );
        }
    }

    /// Deletes the oldest segments until at most `max_files` remain and they fit in `max_bytes`,
    /// the current one counted at its largest (its share), never deleted.
    fn prune(&mut self) {
        let Some(current) = self.current.as_ref().map(|s| s.path.clone()) else { return };
        let (deleted, error) = segment::prune(&self.dir, &current, &self.bounds, self.segment_limit());
        self.stats.segments_deleted += deleted;
        if error.is_some() {
            self.stats.last_error = error;
        }
    }

    fn refresh_bytes(&mut self) {
        self.stats.bytes = self.closed_bytes + self.current.as_ref().map_or(0, |s| s.written());
    }
}

/// What to do about an error of `create`.
fn fix(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "free space there or give --record another directory"
        }
        _ => "give --record a directory path root can create and write",
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
