//! fd and file allocation failures.

use crate::shared::count::{bump, current, current_comm, new_event};
use crate::shared::kernel::{current_nofile_limit, fexit_ret, read};
use crate::shared::maps::role_on;
use crate::shared::stash::{stash, unstash, SLOT_ALLOC_FD_END};
use aya_ebpf::macros::{fexit, kprobe, kretprobe, raw_tracepoint, tracepoint};
use aya_ebpf::programs::{FExitContext, ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext};
use probe_common::config::{arity, role};
use probe_common::counters::kind;
use probe_common::event;
pub const EMFILE: i64 = 24;
pub const ENFILE: i64 = 23;

/// Counts one EMFILE (with the RLIMIT_NOFILE in force) or ENFILE for the current process.
#[inline(always)]
pub fn failed(errno: i64, limit: u64, syscall_nr: i32) {
    let (tgid, tid) = current();
    let comm = current_comm();
    let (count_kind, event_kind) =
        if errno == EMFILE { (kind::EMFILE, event::kind::EMFILE) } else { (kind::ENFILE, event::kind::ENFILE) };
    // Event before count (see `count::bump`).
    if let Some(mut e) = new_event(event_kind, tgid, tid, errno as u16, &comm) {
        // SAFETY: new_event wrote a whole Event into the reserved entry.
        let ev = unsafe { e.assume_init_mut() };
        ev.limit = limit;
        ev.syscall_nr = syscall_nr;
        e.submit(0);
    }
    bump(tgid, count_kind, 0, &comm);
}

#[fexit(function = "alloc_fd")]
pub fn fd_fexit_alloc_fd(ctx: FExitContext) -> u32 {
    // static int alloc_fd(unsigned start, unsigned end, unsigned flags): end is the
    // RLIMIT_NOFILE in force (fs/file.c); -EMFILE when no fd below it is free.
    if fexit_ret::<i32>(&ctx, arity::ALLOC_FD) == -(EMFILE as i32) {
        let end: u32 = ctx.arg(1);
        failed(EMFILE, end as u64, -1);
    }
    0
}

#[fexit(function = "alloc_empty_file")]
pub fn fd_fexit_alloc_file(ctx: FExitContext) -> u32 {
    // struct file *alloc_empty_file(int flags, const struct cred *cred): ERR_PTR(-ENFILE)
    // above fs.file-max (fs/file_table.c).
    if fexit_ret::<i64>(&ctx, arity::ALLOC_EMPTY_FILE) == -ENFILE {
        failed(ENFILE, 0, -1);
    }
    0
}

/// Fallback: every syscall that returns EMFILE/ENFILE, i.e. exactly what applications saw.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn fd_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if ret != -EMFILE && ret != -ENFILE {
        return 0;
    }
    if !role_on(role::FD_VIA_SYS_EXIT) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let nr = read::<u64>(regs, off!(regs_syscall_nr)).map(|n| n as i32).unwrap_or(-1);
    let limit = if ret == -EMFILE { current_nofile_limit() } else { 0 };
    failed(-ret, limit, nr);
    0
}
/// The same at the exit of each system call that can create an fd (user space attaches it to
/// `syscalls/sys_exit_<name>` for each): a system call that creates none never runs it, so
/// only the slow path itself is paid by the rest of the host, not a program per call.
#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn fd_exit_tp(ctx: TracePointContext) -> u32 {
    // Record (format file, checked by user space): __syscall_nr at 8, ret at 16.
    // SAFETY: reads the record at the offsets its format file gives; read_at fails instead of faulting.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(16) }) else { return 0 };
    if ret != -EMFILE && ret != -ENFILE {
        return 0;
    }
    if !role_on(role::FD_VIA_SYS_EXIT) {
        return 0;
    }
    // SAFETY: as above.
    let nr = unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1);
    let limit = if ret == -EMFILE { current_nofile_limit() } else { 0 };
    failed(-ret, limit, nr);
    0
}

#[kprobe(function = "alloc_fd")]
pub fn fd_kprobe_alloc_fd(ctx: ProbeContext) -> u32 {
    if let Some(end) = ctx.arg::<u64>(1) {
        stash(SLOT_ALLOC_FD_END, end);
    }
    0
}

#[kretprobe(function = "alloc_fd")]
pub fn fd_kretprobe_alloc_fd(ctx: RetProbeContext) -> u32 {
    let end = unstash(SLOT_ALLOC_FD_END);
    if ctx.ret::<i32>() == -(EMFILE as i32) {
        failed(EMFILE, end.unwrap_or(0) as u32 as u64, -1);
    }
    0
}

#[kretprobe(function = "alloc_empty_file")]
pub fn fd_kretprobe_alloc_file(ctx: RetProbeContext) -> u32 {
    if ctx.ret::<i64>() == -ENFILE {
        failed(ENFILE, 0, -1);
    }
    0
}
