//! Sinks that print: the NDJSON contract and the text table (`output`), verdicts (`verdict`).

pub mod check;
pub mod output;
pub mod printer;
pub mod verdict;
