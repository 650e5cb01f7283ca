//! The fd-allocation signal (EMFILE/ENFILE): fexit on the allocators, kprobes, or the exit of
//! the system calls that create fds.

use probe_common::config::{arity, role};

use super::{fexit, kprobe, kprobe_rung, Kernel, FD_ON_DEMAND, LIGHT};
use crate::domain::status::{Mode, SyscallHooks};
use crate::kernel::ladder::{Family, Hook, Rung};

/// The system calls that can create an fd, so return EMFILE/ENFILE (x86_64 and arm64 names;
/// those a kernel lacks are skipped): their exit tracepoints run conntrace's program only for
/// them. ioctl, fcntl (F_DUPFD) and clone/clone3 (CLONE_PIDFD) included.
const FD_SYSCALLS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_socket"),
    ("syscalls", "sys_exit_socketpair"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_exit_open"),
    ("syscalls", "sys_exit_openat"),
    ("syscalls", "sys_exit_openat2"),
    ("syscalls", "sys_exit_creat"),
    ("syscalls", "sys_exit_open_by_handle_at"),
    ("syscalls", "sys_exit_open_tree"),
    ("syscalls", "sys_exit_dup"),
    ("syscalls", "sys_exit_dup2"),
    ("syscalls", "sys_exit_dup3"),
    ("syscalls", "sys_exit_fcntl"),
    ("syscalls", "sys_exit_pipe"),
    ("syscalls", "sys_exit_pipe2"),
    ("syscalls", "sys_exit_eventfd"),
    ("syscalls", "sys_exit_eventfd2"),
    ("syscalls", "sys_exit_epoll_create"),
    ("syscalls", "sys_exit_epoll_create1"),
    ("syscalls", "sys_exit_signalfd"),
    ("syscalls", "sys_exit_signalfd4"),
    ("syscalls", "sys_exit_timerfd_create"),
    ("syscalls", "sys_exit_inotify_init"),
    ("syscalls", "sys_exit_inotify_init1"),
    ("syscalls", "sys_exit_fanotify_init"),
    ("syscalls", "sys_exit_memfd_create"),
    ("syscalls", "sys_exit_memfd_secret"),
    ("syscalls", "sys_exit_userfaultfd"),
    ("syscalls", "sys_exit_perf_event_open"),
    ("syscalls", "sys_exit_bpf"),
    ("syscalls", "sys_exit_pidfd_open"),
    ("syscalls", "sys_exit_pidfd_getfd"),
    ("syscalls", "sys_exit_fsopen"),
    ("syscalls", "sys_exit_fsmount"),
    ("syscalls", "sys_exit_fspick"),
    ("syscalls", "sys_exit_io_uring_setup"),
    ("syscalls", "sys_exit_mq_open"),
    ("syscalls", "sys_exit_seccomp"),
    ("syscalls", "sys_exit_landlock_create_ruleset"),
    ("syscalls", "sys_exit_ioctl"),
    ("syscalls", "sys_exit_clone"),
    ("syscalls", "sys_exit_clone3"),
];

pub fn fd_alloc(k: &Kernel) -> Vec<Rung> {
    let fexit = Rung::new(
        Mode::Fexit,
        Family::Fexit,
        "fexit",
        vec![
            fexit("fd_fexit_alloc_fd", "alloc_fd", arity::ALLOC_FD),
            fexit("fd_fexit_alloc_file", "alloc_empty_file", arity::ALLOC_EMPTY_FILE),
        ],
        "every fd/file allocation failure, including kernel-internal ones",
    );
    let sys_exit = |note: &'static str| {
        Rung::new(
            Mode::RawTracepoint,
            Family::Tracepoint,
            "raw_tracepoint",
            vec![Hook::RawTp { prog: "fd_sys_exit", tp: "sys_exit" }],
            note,
        )
        .role(role::FD_VIA_SYS_EXIT)
    };
    let kprobes = kprobe_rung(vec![
        kprobe("fd_kprobe_alloc_fd", "alloc_fd"),
        kprobe("fd_kretprobe_alloc_fd", "alloc_fd"),
        kprobe("fd_kretprobe_alloc_file", "alloc_empty_file"),
    ]);
    // Each fd-creating system call's own exit: the slow path for the host, but a program run
    // only for those calls (a getppid loop: ~0.86 of its speed instead of ~0.47 with sys_exit).
    let fd_syscalls = |note: &'static str| {
        Rung::new(
            Mode::Tracepoint,
            Family::Tracepoint,
            "tracepoint",
            vec![Hook::Tracepoint {
                prog: "fd_exit_tp",
                points: FD_SYSCALLS,
                layout: &[("__syscall_nr", 8, 4), ("ret", 16, 8)],
            }],
            note,
        )
        .role(role::FD_VIA_SYS_EXIT)
    };
    match k.syscall_hooks {
        SyscallHooks::Always | SyscallHooks::Fd => vec![
            fexit,
            fd_syscalls("the system calls that can create an fd returning EMFILE/ENFILE, i.e. what applications saw"),
            sys_exit("system calls that returned EMFILE/ENFILE, i.e. what applications saw"),
            kprobes,
        ],
        // kprobes cost only the calls they hook: before a hook that is attached only sometimes.
        // The raw sys_exit hook attaches at once (the 43 tracepoints take seconds): what
        // matters when a process is about to hit its limit.
        SyscallHooks::OnDemand => vec![fexit, kprobes, sys_exit(FD_ON_DEMAND).partial()],
        SyscallHooks::Never => vec![fexit, sys_exit("").blocked_unless(false, LIGHT), kprobes],
    }
}
