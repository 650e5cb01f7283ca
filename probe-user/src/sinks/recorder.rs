//! `watch --record DIR`: every record of the stream into rotated, compressed segments (see
//! [`crate::record`]), made durable about once a second.

use std::time::SystemTime;

use serde_json::Value;

use super::JsonSink;
use crate::{domain::status::RecordingStatus, record::Recorder};

pub struct RecordSink {
    recorder: Recorder,
    dir: String,
}

impl RecordSink {
    pub fn new(recorder: Recorder, dir: String) -> RecordSink {
        RecordSink { recorder, dir }
    }
}

/// A recorder's figures as `status` shows them.
pub fn recording_status(r: &Recorder, dir: &str, mode: &'static str) -> RecordingStatus {
    RecordingStatus { dir: dir.to_string(), mode, stats: r.stats().clone(), kept_bytes: None, kept_dropped: None }
}

impl JsonSink for RecordSink {
    fn record(&mut self, now: SystemTime, _v: &Value, line: &str) {
        self.recorder.write(now, line);
    }

    fn tick(&mut self, _now: SystemTime) {
        self.recorder.flush();
    }

    fn status(&self) -> Option<RecordingStatus> {
        Some(recording_status(&self.recorder, &self.dir, "continuous"))
    }

    fn finish(self: Box<Self>) -> Vec<String> {
        let stats = self.recorder.finish();
        if stats.lines_lost > 0 {
            eprintln!(
                "conntrace: recording to {}: {} of {} lines were not written ({})",
                self.dir,
                stats.lines_lost,
                stats.lines + stats.lines_lost,
                stats.last_error.as_deref().unwrap_or("write error")
            );
        }
        Vec::new()
    }
}
