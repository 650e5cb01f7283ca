//! The `watch` output stream.

use std::{collections::BTreeSet, io::Write, time::SystemTime};

use anyhow::Result;

use super::{output, verdict};
use crate::{
    diagnosis::verdict::Verdict,
    domain::{
        model::{EventRecord, Sample},
        status::Status,
    },
};

/// The stream `watch` prints on a terminal as text, one record per line, flushed as it goes
/// (a pipe reader sees each line at once). In JSON mode (`--json`) the caller hands it each
/// record's JSON line instead (`line`): the same line the sinks get.
pub struct Printer<W: Write> {
    pub w: W,
    /// Event lines printed this interval, per (pid, kind, destination).
    printed: BTreeSet<(u32, &'static str, Option<String>, Option<u16>)>,
}

impl<W: Write> Printer<W> {
    pub fn new(w: W) -> Printer<W> {
        Printer { w, printed: BTreeSet::new() }
    }

    pub fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.w, "{s}")?;
        self.w.flush()?;
        Ok(())
    }

    pub fn status(&mut self, s: &Status) -> Result<()> {
        let t = crate::render::status::status_text(s);
        self.line(t.trim_end())
    }

    /// One line per process, kind and destination per interval (the interval's table has the
    /// counts).
    pub fn event(&mut self, e: &EventRecord) -> Result<()> {
        if self.printed.insert((e.pid, e.kind, e.daddr.clone(), e.dport)) {
            self.line(&output::event_text(e))
        } else {
            Ok(())
        }
    }

    /// Failures kept off the stream by the event rate limit, settled (see `commands::owed`).
    pub fn suppressed(&mut self, pid: u32, comm: &str, kind: &str, count: u64) -> Result<()> {
        self.line(&output::suppressed_text(pid, comm, kind, count))
    }

    pub fn verdicts(&mut self, verdicts: &[Verdict]) -> Result<()> {
        for v in verdicts {
            self.line(&verdict::to_text(v))?;
        }
        Ok(())
    }

    /// The interval's table; the next events are a new interval's.
    pub fn samples(&mut self, samples: &[Sample]) -> Result<()> {
        self.printed.clear();
        let t = output::interval_text(SystemTime::now(), samples);
        self.line(t.trim_end())
    }
}
