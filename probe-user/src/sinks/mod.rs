//! The outputs of `watch` besides the terminal: every record of the stream, as the JSON line
//! of the README contract, goes to each sink (the recorder, the flight recorder, the report
//! of the session). The printer renders for the terminal; these see the same records
//! whether the terminal gets text or JSON.

use std::time::SystemTime;

use serde_json::Value;

use crate::domain::status::RecordingStatus;

pub mod flight;
pub mod recorder;
pub mod session_report;

/// A consumer of the stream's records.
pub trait JsonSink {
    /// One record: its JSON object and the line as serialized.
    fn record(&mut self, now: SystemTime, v: &Value, line: &str);
    /// About once a second: make what was written durable, check time-based bounds.
    fn tick(&mut self, _now: SystemTime) {}
    /// SIGUSR1: the user asks for what the sink keeps (the flight recorder writes it).
    fn trigger(&mut self, _now: SystemTime) {}
    /// What `status` says about the sink (a recorder's counts), if anything.
    fn status(&self) -> Option<RecordingStatus> {
        None
    }
    /// The end of the run: flush and close; lines to print last (the session's report).
    fn finish(self: Box<Self>) -> Vec<String>;
}

/// The printer (text or JSON on the terminal) and the sinks, fed the same records.
pub struct Outputs<W: std::io::Write> {
    /// The terminal gets each record's JSON line (`--json`), else its text.
    pub json: bool,
    pub printer: crate::render::printer::Printer<W>,
    pub sinks: Vec<Box<dyn JsonSink>>,
}

impl<W: std::io::Write> Outputs<W> {
    pub fn new(json: bool, printer: crate::render::printer::Printer<W>, sinks: Vec<Box<dyn JsonSink>>) -> Outputs<W> {
        Outputs { json, printer, sinks }
    }

    /// Whether the record's JSON is needed: for the terminal in JSON mode, or for a sink.
    fn wants_json(&self) -> bool {
        self.json || !self.sinks.is_empty()
    }

    /// One record built once: printed as JSON (in JSON mode) and given to every sink, the same
    /// line for both (a recording holds exactly what was printed).
    fn emit(&mut self, v: &Value) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let line = v.to_string();
        if self.json {
            self.printer.line(&line)?;
        }
        for s in &mut self.sinks {
            s.record(now, v, &line);
        }
        Ok(())
    }

    pub fn status(&mut self, s: &crate::domain::status::Status) -> anyhow::Result<()> {
        if !self.json {
            self.printer.status(s)?;
        }
        if self.wants_json() {
            self.emit(&crate::render::status::status_json(SystemTime::now(), s))?;
        }
        Ok(())
    }

    pub fn event(&mut self, e: &crate::domain::model::EventRecord) -> anyhow::Result<()> {
        if !self.json {
            self.printer.event(e)?;
        }
        if self.wants_json() {
            self.emit(&crate::render::output::event_json(e))?;
        }
        Ok(())
    }

    pub fn samples(&mut self, samples: &[crate::domain::model::Sample]) -> anyhow::Result<()> {
        if !self.json {
            self.printer.samples(samples)?;
        }
        if self.wants_json() {
            let now = SystemTime::now();
            for s in samples {
                self.emit(&crate::render::output::sample_json(now, s))?;
            }
        }
        Ok(())
    }

    pub fn verdicts(&mut self, verdicts: &[crate::diagnosis::verdict::Verdict]) -> anyhow::Result<()> {
        if !self.json {
            self.printer.verdicts(verdicts)?;
        }
        if self.wants_json() {
            for v in verdicts {
                self.emit(&crate::render::verdict::to_json(v))?;
            }
        }
        Ok(())
    }

    pub fn suppressed(&mut self, pid: u32, comm: &str, kind: &str, count: u64) -> anyhow::Result<()> {
        if !self.json {
            self.printer.suppressed(pid, comm, kind, count)?;
        }
        if self.wants_json() {
            self.emit(&crate::render::output::suppressed_json(SystemTime::now(), pid, comm, kind, count))?;
        }
        Ok(())
    }

    /// A line for the terminal only (BPF statistics at exit).
    pub fn line(&mut self, s: &str) -> anyhow::Result<()> {
        self.printer.line(s)
    }

    pub fn tick(&mut self) {
        let now = SystemTime::now();
        for s in &mut self.sinks {
            s.tick(now);
        }
    }

    pub fn trigger(&mut self) {
        let now = SystemTime::now();
        for s in &mut self.sinks {
            s.trigger(now);
        }
    }

    /// The recording's figures, for `status`.
    pub fn recording(&self) -> Option<RecordingStatus> {
        self.sinks.iter().find_map(|s| s.status())
    }

    /// Closes every sink and prints what they leave (the session's report).
    pub fn finish(self) -> anyhow::Result<()> {
        let Outputs { mut printer, sinks, .. } = self;
        for s in sinks {
            for line in s.finish() {
                printer.line(&line)?;
            }
        }
        Ok(())
    }
}
