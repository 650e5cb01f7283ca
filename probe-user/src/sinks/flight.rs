//! `--flight-recorder D`: the last D of the stream in memory, nothing written while healthy;
//! when a verdict becomes active (or on SIGUSR1) what was kept is written to the recording
//! directory, then everything until `--post-trigger` after the last active verdict resolved.
//! The minutes before a plateau are what explain it (TIME_WAIT rising, fds creeping up).

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::JsonSink;
use crate::{
    domain::status::RecordingStatus,
    record::{Bounds, FlightRing, Recorder},
};

/// The memory the kept minutes may take at most, whatever their length.
pub const MAX_KEPT_BYTES: usize = 64 << 20;

pub struct FlightSink {
    ring: FlightRing,
    dir: PathBuf,
    bounds: Bounds,
    header: Value,
    post: Duration,
    /// Writing since a trigger: the recorder, and when to stop (None while a verdict is active).
    writing: Option<(Recorder, Option<SystemTime>)>,
    /// Verdicts active now: (cause, pid, destination) of each.
    active: BTreeSet<(String, u64, String)>,
    /// Totals over the recordings made so far (for status).
    past: RecordingStatus,
    /// A trigger could not start a recording: said once.
    failed: bool,
}

impl FlightSink {
    pub fn new(keep: Duration, dir: PathBuf, bounds: Bounds, header: Value, post: Duration) -> FlightSink {
        let past = RecordingStatus { dir: dir.display().to_string(), mode: "flight", ..Default::default() };
        FlightSink {
            ring: FlightRing::new(keep, MAX_KEPT_BYTES),
            dir,
            bounds,
            header,
            post,
            writing: None,
            active: BTreeSet::new(),
            past,
            failed: false,
        }
    }

    /// Starts writing: what was kept first.
    fn start(&mut self, now: SystemTime) {
        if self.writing.is_some() {
            return;
        }
        match Recorder::create(&self.dir, self.bounds.clone(), self.header.clone()) {
            Ok(mut r) => {
                for line in self.ring.drain() {
                    r.write(now, &line);
                }
                r.flush();
                self.writing = Some((r, None));
            }
            Err(e) => {
                if !self.failed {
                    eprintln!("conntrace: flight recorder: {e:#}");
                    self.failed = true;
                }
            }
        }
    }

    fn stop(&mut self) {
        if let Some((r, _)) = self.writing.take() {
            self.past.stats.add(&r.finish());
        }
    }
}

/// The key of a verdict record: cause, pid, destination or listener.
fn verdict_key(v: &Value) -> (String, u64, String) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let place = if v["destination"].is_string() { s("destination") } else { s("listener") };
    (s("cause"), v["pid"].as_u64().unwrap_or(0), place)
}

impl JsonSink for FlightSink {
    fn record(&mut self, now: SystemTime, v: &Value, line: &str) {
        if v["type"] == "verdict" {
            let key = verdict_key(v);
            match v["state"].as_str() {
                Some("active") => {
                    self.active.insert(key);
                    self.start(now);
                }
                Some("resolved") => {
                    self.active.remove(&key);
                }
                _ => {}
            }
        }
        match &mut self.writing {
            Some((r, stop_at)) => {
                r.write(now, line);
                // The post-trigger window runs from when the last active verdict resolved.
                *stop_at = if self.active.is_empty() { Some(stop_at.unwrap_or(now + self.post)) } else { None };
            }
            None => self.ring.push(now, line.to_string()),
        }
    }

    fn tick(&mut self, now: SystemTime) {
        let done = match &mut self.writing {
            Some((r, stop_at)) => {
                r.flush();
                if self.active.is_empty() && stop_at.is_none() {
                    *stop_at = Some(now + self.post);
                }
                stop_at.is_some_and(|t| now >= t)
            }
            None => false,
        };
        if done {
            self.stop();
        }
    }

    fn trigger(&mut self, now: SystemTime) {
        self.start(now);
        if let Some((_, stop_at)) = &mut self.writing {
            if self.active.is_empty() {
                *stop_at = Some(now + self.post);
            }
        }
    }

    fn status(&self) -> Option<RecordingStatus> {
        let mut s = self.past.clone();
        if let Some((r, _)) = &self.writing {
            s.stats.add(r.stats());
        }
        s.kept_bytes = Some(self.ring.bytes() as u64);
        s.kept_dropped = Some(self.ring.dropped_for_size());
        Some(s)
    }

    fn finish(mut self: Box<Self>) -> Vec<String> {
        self.stop();
        Vec::new()
    }
}
