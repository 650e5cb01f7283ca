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
    /// The lines of the status printed last: a later status prints only the lines that changed
    /// (a hook attached on demand, a loss), not the whole block again.
    last_status: Option<Vec<String>>,
}

impl<W: Write> Printer<W> {
    pub fn new(w: W) -> Printer<W> {
        Printer { w, printed: BTreeSet::new(), last_status: None }
    }

    pub fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.w, "{s}")?;
        self.w.flush()?;
        Ok(())
    }

    pub fn status(&mut self, s: &Status) -> Result<()> {
        let t = crate::render::status::status_text(s);
        let lines: Vec<String> = t.trim_end().lines().map(str::to_string).collect();
        let Some(prev) = self.last_status.replace(lines.clone()) else {
            return self.line(t.trim_end());
        };
        for l in lines.iter().filter(|l| !prev.contains(l)) {
            // A signal's note (after two spaces and a parenthesis) was printed in full once.
            let short = l.split("  (").next().unwrap_or(l).trim();
            self.line(&format!("conntrace: status: {short}"))?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::status::{Losses, Mode, Signal, SignalStatus};

    fn status(armed: bool, evicted: u64) -> Status {
        Status {
            kernel: "6.18.0".into(),
            signals: vec![(
                Signal::FdAlloc,
                SignalStatus {
                    mode: Mode::RawTracepoint,
                    exact: false,
                    hooks: vec!["raw_tracepoint/sys_exit".into()],
                    note: Some("counted only while attached".into()),
                    armed: Some(armed),
                },
            )],
            losses: Losses { owners_evicted: evicted, ..Default::default() },
            watched: vec![],
            missing_offsets: vec![],
            recording: None,
        }
    }

    #[test]
    fn a_later_status_prints_only_what_changed() {
        let mut p = Printer::new(Vec::new());
        p.status(&status(false, 0)).unwrap();
        let first = String::from_utf8(std::mem::take(&mut p.w)).unwrap();
        assert!(first.starts_with("conntrace: kernel 6.18.0\n"), "{first}");
        assert!(first.contains("(counted only while attached)"), "{first}");
        p.status(&status(true, 0)).unwrap();
        let second = String::from_utf8(std::mem::take(&mut p.w)).unwrap();
        let lines: Vec<&str> = second.lines().collect();
        assert_eq!(
            lines[0],
            "conntrace: status: fd_alloc     raw_tracepoint  approximate raw_tracepoint/sys_exit [attached now: a \
             process is near its RLIMIT_NOFILE]"
        );
        assert!(lines[1].starts_with("conntrace: status: host cost: system-call tracepoints (fd_alloc)"), "{second}");
        assert_eq!(lines.len(), 2, "{second}");
        p.status(&status(true, 0)).unwrap();
        assert!(p.w.is_empty(), "nothing changed, nothing printed");
        p.status(&status(true, 12)).unwrap();
        let fourth = String::from_utf8(std::mem::take(&mut p.w)).unwrap();
        assert!(fourth.starts_with("conntrace: status: lost: 12 socket owners evicted"), "{fourth}");
        assert_eq!(fourth.lines().count(), 1, "{fourth}");
    }
}
