//! The commands: each wires a source to diagnosis and sinks (`watch`: the live kernel probe;
//! `check`: one read of the machine's limits).

pub mod arming;
pub mod check;
pub mod event_facts;
pub mod evidence;
pub mod filter;
pub mod header;
pub mod host;
pub mod listen_poll;
pub mod owed;
pub mod report;
pub mod session;
pub mod watch;
