//! Sinks that print: the NDJSON contract and the text table (`output`), verdicts (`verdict`).

pub mod output;
pub mod verdict;
