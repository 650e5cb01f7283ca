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

/// The stream `watch` prints: NDJSON (`--json`, the README contract) or text, one record
/// per line, flushed as it goes (a pipe reader sees each line at once).
pub struct Printer<W: Write> {
    pub json: bool,
    pub w: W,
    /// Event lines printed this interval in text mode, per (pid, kind, destination).
    printed: BTreeSet<(u32, &'static str, Option<String>, Option<u16>)>,
}

impl<W: Write> Printer<W> {
    pub fn new(json: bool, w: W) -> Printer<W> {
        Printer { json, w, printed: BTreeSet::new() }
    }

    pub fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.w, "{s}")?;
        self.w.flush()?;
        Ok(())
    }

    pub fn status(&mut self, s: &Status) -> Result<()> {
        if self.json {
            self.line(&crate::render::status::status_json(SystemTime::now(), s).to_string())
        } else {
            let t = crate::render::status::status_text(s);
            self.line(t.trim_end())
        }
    }

    /// JSON keeps every event; text prints one line per process, kind and destination per
    /// interval (the interval's table has the counts).
    pub fn event(&mut self, e: &EventRecord) -> Result<()> {
        if self.json {
            self.line(&output::event_json(e).to_string())
        } else if self.printed.insert((e.pid, e.kind, e.daddr.clone(), e.dport)) {
            self.line(&output::event_text(e))
        } else {
            Ok(())
        }
    }

    /// Failures kept off the stream by the event rate limit, settled (see `commands::owed`).
    pub fn suppressed(&mut self, pid: u32, comm: &str, kind: &str, count: u64) -> Result<()> {
        if self.json {
            self.line(&output::suppressed_json(SystemTime::now(), pid, comm, kind, count).to_string())
        } else {
            self.line(&output::suppressed_text(pid, comm, kind, count))
        }
    }

    pub fn verdicts(&mut self, verdicts: &[Verdict]) -> Result<()> {
        for v in verdicts {
            if self.json {
                self.line(&verdict::to_json(v).to_string())?;
            } else {
                self.line(&verdict::to_text(v))?;
            }
        }
        Ok(())
    }

    /// The interval's samples; the next events are a new interval's.
    pub fn samples(&mut self, samples: &[Sample]) -> Result<()> {
        self.printed.clear();
        let now = SystemTime::now();
        if self.json {
            for s in samples {
                self.line(&output::sample_json(now, s).to_string())?;
            }
            Ok(())
        } else {
            let t = output::interval_text(now, samples);
            self.line(t.trim_end())
        }
    }
}
