//! The reader: segments (or directories of them) back into lines, whatever state they are in. A
//! recording cut short (killed process, full disk, a copy taken mid-write) keeps every complete
//! line before the cut; what is not a recording is named and skipped.

use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use flate2::bufread::MultiGzDecoder;
use serde_json::Value;

use super::segment;

/// One line read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub file: PathBuf,
    /// The line's object; each segment's header line is one too (`"type":"header"`).
    pub value: Value,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadOutcome {
    pub lines: Vec<Line>,
    /// One line each: the file, what was wrong, and for a torn tail the compressed byte offset
    /// where reading stopped.
    pub warnings: Vec<String>,
    /// Recordings read (a torn one too).
    pub files_read: usize,
    /// Files that are not recordings or could not be opened.
    pub files_failed: usize,
    /// Lines read (those in `lines`, or handed to [`each_line`]'s callback).
    pub lines_read: u64,
}

/// The longest line read: past it a file is taken as damaged, rather than let one endless line
/// (a foreign gzip of anything) take all memory.
pub const MAX_LINE: usize = 16 << 20;

/// Reads recordings: each path a segment file or a directory of them (its segments in recording
/// order; other files there are ignored). Never panics on any input. A torn tail (a truncated gzip
/// stream, a partial last line, a corrupted block) keeps every complete line before it and adds a
/// warning naming the file and the compressed byte offset where reading stopped (for a stream
/// that just ends, the file's length). A file that is not a recording (not gzip, or no header
/// line first) is a warning "FILE: not a conntrace recording (...)" and counts in `files_failed`.
pub fn read_paths(paths: &[PathBuf]) -> ReadOutcome {
    let mut lines = Vec::new();
    let mut out = each_line(paths, &mut |file, value| lines.push(Line { file: file.to_path_buf(), value }));
    out.lines = lines;
    out
}

/// Like [`read_paths`], handing each line to `f` as it is read instead of keeping them all (a
/// report over a 100 MB recording holds gigabytes of lines otherwise). The outcome's `lines` is
/// empty; `lines_read` counts them.
pub fn each_line(paths: &[PathBuf], f: &mut dyn FnMut(&Path, Value)) -> ReadOutcome {
    let mut out = ReadOutcome::default();
    for path in paths {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => match segment::list_segments(path) {
                Ok(segments) if segments.is_empty() => {
                    out.warnings.push(format!("{}: no conntrace recording in this directory", path.display()))
                }
                Ok(segments) => segments.iter().for_each(|(_, file)| read_file(file, &mut out, f)),
                Err(e) => {
                    out.warnings.push(format!("{}: cannot list the directory: {e}", path.display()));
                    out.files_failed += 1;
                }
            },
            Ok(_) => read_file(path, &mut out, f),
            Err(e) => {
                out.warnings.push(format!("{}: cannot read: {e}", path.display()));
                out.files_failed += 1;
            }
        }
    }
    out
}

/// The compressed input, counting what the decoder consumed of it: where a decoding error was
/// met, to within the decoder's last step.
struct Consumed<R> {
    inner: R,
    at: u64,
}

impl<R: BufRead> Read for Consumed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Consumed<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.at += amt as u64;
        self.inner.consume(amt);
    }
}

/// How reading a file ended.
enum End {
    /// The stream's end, after a complete line.
    Clean,
    /// The stream's end in the middle of a line (its bytes so far).
    PartialLine(usize),
    /// A line longer than `MAX_LINE`.
    TooLong,
    /// A decoding or read error.
    Error(io::Error),
}

fn read_file(path: &Path, out: &mut ReadOutcome, f: &mut dyn FnMut(&Path, Value)) {
    let shown = path.display();
    let mut src = match File::open(path) {
        Ok(f) => Consumed { inner: BufReader::new(f), at: 0 },
        Err(e) => {
            out.warnings.push(format!("{shown}: cannot open: {e}"));
            out.files_failed += 1;
            return;
        }
    };
    let not_recording = |out: &mut ReadOutcome, why: String| {
        out.warnings.push(format!("{shown}: not a conntrace recording ({why})"));
        out.files_failed += 1;
    };
    match src.fill_buf() {
        Ok([]) => return not_recording(out, "empty file".into()),
        Ok([0x1f, 0x8b, ..]) => {}
        Ok(_) => return not_recording(out, "not gzip".into()),
        Err(e) => {
            out.warnings.push(format!("{shown}: cannot read: {e}"));
            out.files_failed += 1;
            return;
        }
    }
    let mut text = BufReader::new(MultiGzDecoder::new(src));
    let mut buf = Vec::new();
    let (mut lines, mut bad, mut first_bad) = (0u64, 0u64, None);
    let end = loop {
        buf.clear();
        match (&mut text).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf) {
            Ok(0) => break End::Clean,
            Ok(_) if buf.last() == Some(&b'\n') => {}
            Ok(n) if n > MAX_LINE => break End::TooLong,
            Ok(n) => break End::PartialLine(n),
            Err(e) => break End::Error(e),
        }
        let parsed = serde_json::from_slice::<Value>(&buf);
        if lines == 0 {
            // The header first, or this is someone else's file.
            match &parsed {
                Ok(v) if v.get("type").and_then(Value::as_str) == Some("header") => {
                    if v.get("format").and_then(Value::as_u64).is_none_or(|f| f > segment::FORMAT) {
                        out.warnings.push(format!(
                            "{shown}: header format {} is not the one this conntrace writes ({}): reading it anyway",
                            v.get("format").unwrap_or(&Value::Null),
                            segment::FORMAT
                        ));
                    }
                }
                Ok(_) => return not_recording(out, "its first line is not a conntrace header".into()),
                Err(e) => return not_recording(out, format!("its first line is not JSON: {e}")),
            }
        }
        lines += 1;
        match parsed {
            Ok(value) => {
                out.lines_read += 1;
                f(path, value);
            }
            Err(e) => {
                bad += 1;
                first_bad.get_or_insert(format!("line {lines}: {e}"));
            }
        }
    };
    let offset = text.get_ref().get_ref().at;
    if lines == 0 {
        let why = match end {
            End::Clean => "no line in it".to_string(),
            End::PartialLine(_) | End::TooLong => "no complete first line".to_string(),
            End::Error(e) => format!("no header line: {e} at compressed byte {offset}"),
        };
        return not_recording(out, why);
    }
    out.files_read += 1;
    if let Some(first) = first_bad {
        out.warnings.push(format!("{shown}: {bad} lines are not JSON, skipped (first: {first})"));
    }
    let why = match end {
        End::Clean => return,
        End::PartialLine(n) => format!("the last line is incomplete ({n} bytes dropped)"),
        End::TooLong => format!("a line longer than {} MiB", MAX_LINE >> 20),
        End::Error(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the gzip stream ends without its trailer (cut short: the recorder was killed or the disk filled)"
                .to_string()
        }
        End::Error(e) => format!("{e}"),
    };
    out.warnings.push(format!("{shown}: torn tail at compressed byte {offset}: {why}; {lines} complete lines kept"));
}
