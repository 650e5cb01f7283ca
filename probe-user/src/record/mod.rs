//! `watch --record DIR`: the NDJSON stream kept on disk in gzip segments a reader can open at any
//! moment (a sync flush at least once a second, so `kill -9` loses at most the last second), in a
//! directory held within its bounds; and the flight recorder's ring of the last minutes in memory.
//!
//! A segment is `conntrace-<YYYYmmddTHHMMSSZ>-<seq>.ndjson.gz`: one gzip stream of NDJSON lines,
//! the first a header (the caller's object with `type: "header"`, `format`, `segment`, `ts`), so
//! each segment is readable on its own. Names sort in recording order; the reader orders by the
//! sequence number itself, which increases across restarts in the same directory even if the
//! clock went back.
//!
//! An output-side module: it imports `domain` only.

mod flight;
mod read;
mod segment;
mod write;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use flight::{FlightRing, ENTRY_OVERHEAD};
pub use read::{each_line, read_paths, Line, ReadOutcome, MAX_LINE};
pub use segment::{list_segments, parse_segment_name, segment_name, FORMAT};
pub use write::Recorder;

/// Bounds of a recording directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The directory's segments together (finished ones and the current one at its largest).
    pub max_bytes: u64,
    /// Segments kept, the current one included (0 is taken as 1).
    pub max_files: usize,
    /// A segment older than this is closed and a new one opened.
    pub rotate: Duration,
}

impl Default for Bounds {
    /// 100 MB, 10 files, 1 h.
    fn default() -> Bounds {
        Bounds { max_bytes: 100_000_000, max_files: 10, rotate: Duration::from_secs(3600) }
    }
}

pub use crate::domain::status::RecordStats;
