//! Sinks that print: the NDJSON contract and the text table (`output`).

pub mod output;
