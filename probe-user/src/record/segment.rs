//! Segments: their names, the listing and pruning of a recording directory, and the one being
//! written (its encoder and what is known of its compressed size).

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flate2::write::GzEncoder;

use super::Bounds;
use crate::domain::time::rfc3339;

/// The `format` of the header line: a reader of a later format knows what it reads.
pub const FORMAT: u64 = 1;

const PREFIX: &str = "conntrace-";
const SUFFIX: &str = ".ndjson.gz";

/// `ts` of a header, as every `ts` of the JSON contract. The formatter panics before 1970 and
/// fails after year 9999; a clock that far off is clamped rather than taking the recording down.
pub fn ts(now: SystemTime) -> String {
    // The last millisecond of year 9999.
    let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    rfc3339(now.clamp(UNIX_EPOCH, last))
}

/// `conntrace-20260921T141320Z-000042.ndjson.gz`: the second the segment was opened (UTC) and its
/// sequence number (6 digits, more past 999,999).
pub fn segment_name(opened: SystemTime, seq: u64) -> String {
    // "2026-09-21T14:13:20.000Z" → "20260921T141320".
    let stamp: String = ts(opened).chars().take(19).filter(|c| *c != '-' && *c != ':').collect();
    format!("{PREFIX}{stamp}Z-{seq:06}{SUFFIX}")
}

/// The sequence number of a segment's file name; None for any other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (stamp, seq) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    if date.len() != 8 || time.len() != 6 || !digits(date) || !digits(time) || seq.len() < 6 || !digits(seq) {
        return None;
    }
    seq.parse().ok()
}

/// The segments of a directory in recording order (by sequence number, then name), each with its
/// sequence number. Other files are not listed.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_name) {
            // A directory that happens to carry a segment's name is not one.
            if entry.file_type().is_ok_and(|t| !t.is_dir()) {
                out.push((seq, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes the oldest segments of `dir` until at most `max_files` remain and they fit in
/// `max_bytes`, `current` counted at its largest (`current_max`) and never deleted. Returns how
/// many it deleted and the last error met (a segment it could not delete stays: the next
/// rotation tries again).
pub fn prune(dir: &Path, current: &Path, bounds: &Bounds, current_max: u64) -> (u64, Option<String>) {
    let segments = match list_segments(dir) {
        Ok(s) => s,
        Err(e) => return (0, Some(format!("{}: cannot list old segments: {e}", dir.display()))),
    };
    let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
    let sized: Vec<(PathBuf, u64)> = segments
        .into_iter()
        .map(|(_, p)| {
            let s = if p == current { size(&p).max(current_max) } else { size(&p) };
            (p, s)
        })
        .collect();
    let (mut count, mut total) = (sized.len(), sized.iter().map(|(_, s)| s).sum::<u64>());
    let (mut deleted, mut error) = (0, None);
    for (path, s) in &sized {
        if count <= bounds.max_files.max(1) && total <= bounds.max_bytes {
            break;
        }
        if path == current {
            continue;
        }
        match fs::remove_file(path) {
            Ok(()) => deleted += 1,
            // Someone else removed it: gone all the same.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                error = Some(format!("{}: cannot delete: {e}", path.display()));
                continue;
            }
        }
        count -= 1;
        total -= s;
    }
    (deleted, error)
}

/// The most `n` bytes handed to the encoder can add to the file once flushed: deflate falls back to
/// stored blocks when compressing would expand (5 bytes per 65,535), a sync flush adds an empty
/// stored block, and a block of a few bytes can grow by a few.
fn bound(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        n + n / 8192 + 16
    }
}

/// The end of a stream: the final block and the 8-byte trailer (CRC, length), with room to spare.
const FINISH: u64 = 32;

/// The file under the encoder, counting the compressed bytes handed to it (on disk after a flush).
pub(super) struct Counted {
    pub(super) file: BufWriter<File>,
    pub(super) bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) opened: SystemTime,
    pub(super) enc: GzEncoder<Counted>,
    /// Bytes handed to the encoder since its last sync flush: how much of them reached the file,
    /// compressed, is known only after the next one.
    pub(super) pending: u64,
    /// Lines handed to the encoder since its last successful flush: not known to be on disk.
    pub(super) pending_lines: u64,
    /// The caller's lines in this segment.
    pub(super) lines: u64,
}

impl Segment {
    pub(super) fn written(&self) -> u64 {
        self.enc.get_ref().bytes
    }

    /// The most this segment's file can hold, finished, with `more` bytes added.
    pub(super) fn size_with(&self, more: u64) -> u64 {
        self.written() + bound(self.pending) + bound(more) + FINISH
    }

    /// A gzip sync flush, through to the file: everything so far is readable.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.enc.flush()?;
        self.pending = 0;
        self.pending_lines = 0;
        Ok(())
    }

    /// Whether the file at `path` is still the one being written: a removed file (DIR deleted
    /// under a running recording) takes every line written to it along, silently otherwise.
    pub(super) fn still_there(&self) -> io::Result<bool> {
        let open = self.enc.get_ref().file.get_ref().metadata()?;
        match fs::metadata(&self.path) {
            Ok(m) => Ok(m.dev() == open.dev() && m.ino() == open.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}
