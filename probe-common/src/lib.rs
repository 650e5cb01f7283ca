//! Types shared by the kernel programs (`probe-ebpf`) and user space (`probe-user`).
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel side writes it into BPF maps
//! and the ring buffer, user space reads the same bytes back. One module per domain; the
//! `user` feature adds the `aya::Pod` impls user space needs.
#![no_std]

pub mod config;
pub mod counters;
pub mod event;
pub mod signal;
pub mod sock;

/// Length of `task_struct::comm` (TASK_COMM_LEN in include/linux/sched.h).
pub const COMM_LEN: usize = 16;
