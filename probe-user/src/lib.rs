//! conntrace's user-space side: loader and attach strategy (`probe`), aggregation (`model`),
//! output (`output`), and the `watch` loop (`app`). Pure logic lives in modules that need no
//! kernel: `btf`, `tpformat`, `model`, `output`, `procinfo` parsing, `cli`.

pub mod app;
pub mod btf;
pub mod check;
pub mod cli;
pub mod errno;
pub mod evidence;
pub mod facts;
#[cfg(test)]
mod golden;
pub mod listeners;
pub mod model;
pub mod netdiag;
pub mod offsets;
pub mod output;
#[cfg(test)]
mod parsers_never_panic;
pub mod probe;
pub mod procinfo;
pub mod status;
pub mod tpformat;
pub mod verdict;
