//! Sinks that print: the NDJSON contract and the text table (`output`), status and BPF
//! statistics (`status`), verdicts (`verdict`).

pub mod check;
pub mod output;
pub mod printer;
pub mod status;
pub mod verdict;
