//! conntrace's user-space side, one pipeline in layers (each imports only the ones above it
//! in this list):
//!
//! - `domain`: pure data (signals, counts, events, sockets, limits);
//! - `system`: readers of /proc, sysctls and sock_diag;
//! - `kernel`: BTF, tracefs formats, the loader and its attach ladder;
//! - `diagnosis`: the verdict engine and the `check` rules;
//! - `render`: NDJSON and text;
//! - `record`: the recording of `watch --record` (gzip segments on disk, the flight recorder's
//!   ring), an output beside `render` that needs only `domain`;
//! - `report`: the report of a run (text, JSON, HTML) from its NDJSON records, beside `render`:
//!   it reads records back, so it needs nothing but `domain`;
//! - `sinks`: the outputs of `watch` beside the terminal (recorder, flight recorder, the
//!   session's report), fed the stream's JSON records;
//! - `commands` (`watch`, `check`) and `cli`: wire a source to diagnosis and the sinks.

pub mod cli;
pub mod commands;
pub mod diagnosis;
pub mod domain;
#[cfg(test)]
mod golden;
pub mod kernel;
#[cfg(test)]
mod layers;
#[cfg(test)]
mod parsers_never_panic;
pub mod record;
pub mod render;
pub mod report;
pub mod sinks;
pub mod system;
