//! The kernel side: the running kernel's BTF (`btf`, `offsets`), tracefs record formats
//! (`tpformat`), and the loader with its per-signal attach ladder (`probe`).

pub mod btf;
pub mod offsets;
pub mod probe;
pub mod tpformat;
