//! conntrace's kernel programs.
//!
//! Each signal has a preferred hook (fentry/fexit) and fallbacks (tp_btf or classic
//! tracepoints, raw syscall tracepoints); user space loads whichever the running kernel
//! accepts and flips the `ROLES` switches so that every event is counted exactly once.
//! Counting happens here, per process, in per-CPU maps; only failures travel to user space
//! as events.
#![no_std]
#![no_main]
// atomic_xadd: an atomic add whose result is unused (BPF_XADD); core's AtomicU64 offers no
// fetch_add on this target.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics::atomic_xadd, see shared::count::add_one")]

/// Reads one field of the load-time [`probe_common::config::Config`]. The volatile read
/// keeps the compiler from folding the placeholder values the object is built with.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: CONFIG is a plain static user space fills before load; read volatile so the placeholder is not folded.
        unsafe { core::ptr::read_volatile(&raw const $crate::shared::kernel::CONFIG.$field) }
    };
}

// One file per signal, each with its handler and every entry point (fexit, tracepoints,
// kprobes) that feeds it; `shared` holds what they all use.
mod accept;
mod bind;
mod connect;
mod fd;
mod netfilter;
mod port;
mod set_state;
mod shared;
mod tcp_mem;
mod time_wait;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
