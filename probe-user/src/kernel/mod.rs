//! The kernel side: the running kernel's BTF (`btf`, `offsets`), tracefs record formats
//! (`tpformat`), the per-signal attach ladders as data (`hooks`) walked by one function
//! (`ladder`), and the loader (`probe`).

mod bpf_info;
pub mod btf;
mod fd_arm;
pub mod hooks;
pub mod ladder;
mod loader;
mod losses;
pub mod offsets;
pub mod probe;
pub mod tpformat;
