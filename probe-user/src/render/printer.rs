//! The `watch` output stream.

use std::{io::Write, time::SystemTime};

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
}

impl<W: Write> Printer<W> {
    pub fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.w, "{s}")?;
        self.w.flush()?;
        Ok(())
    }

    pub fn status(&mut self, s: &Status) -> Result<()> {
        if self.json {
            self.line(&output::status_json(SystemTime::now(), s).to_string())
        } else {
            let t = output::status_text(s);
            self.line(t.trim_end())
        }
    }

    pub fn event(&mut self, e: &EventRecord) -> Result<()> {
        if self.json {
            self.line(&output::event_json(e).to_string())
        } else {
            self.line(&output::event_text(e))
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

    pub fn samples(&mut self, samples: &[Sample]) -> Result<()> {
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
