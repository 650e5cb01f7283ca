//! The report of the session `watch` just watched, printed when it ends (as `time` or `perf
//! stat` do): the same report `conntrace report` makes of a recording.

use std::time::SystemTime;

use serde_json::Value;

use super::JsonSink;
use crate::report::{self, Filter, ReportBuilder};

pub struct SessionReport {
    builder: ReportBuilder,
    json: bool,
}

impl SessionReport {
    pub fn new(json: bool) -> SessionReport {
        SessionReport { builder: ReportBuilder::new(Filter::default()), json }
    }
}

impl JsonSink for SessionReport {
    fn record(&mut self, _now: SystemTime, v: &Value, _line: &str) {
        self.builder.add(v);
    }

    fn finish(self: Box<Self>) -> Vec<String> {
        let r = self.builder.finish();
        if self.json {
            vec![report::to_json(&r).to_string()]
        } else {
            vec![report::to_text(&r).trim_end().to_string()]
        }
    }
}
