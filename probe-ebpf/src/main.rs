//! conntrace's kernel programs.
//!
//! Each signal has a preferred hook (fentry/fexit) and fallbacks (tp_btf or classic
//! tracepoints, raw syscall tracepoints); user space loads whichever the running kernel
//! accepts and flips the `ROLES` switches so that every event is counted exactly once.
//! Counting happens here, per process, in per-CPU maps; only failures travel to user space
//! as events.
#![no_std]
#![no_main]

/// Reads one field of the load-time [`probe_common::config::Config`]. The volatile read
/// keeps the compiler from folding the placeholder values the object is built with.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::CONFIG.$field) }
    };
}

mod bind;
mod connect;
mod count;
mod fd;
mod kernel;
mod kprobes;
mod maps;
mod progs;
mod state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
