//! What the kernel counts about conntrace's own programs that aya does not expose: runs it
//! skipped (bpf_prog_info.recursion_misses) and kretprobe hits it lost (bpf_link_info's
//! perf_event.kprobe.missed, Linux 6.7+). Raw `bpf(2)` commands on stable uapi layouts
//! (include/uapi/linux/bpf.h).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
struct IdAttr {
    /// start_id or link_id.
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD into `info`; the length the kernel filled.
fn obj_info(fd: BorrowedFd<'_>, info: &mut [u8]) -> Option<usize> {
    let mut attr =
        InfoAttr { bpf_fd: fd.as_raw_fd() as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes into `info`, which lives
    // across the call; attr is a valid bpf_attr prefix for this command.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr as *mut InfoAttr, size_of::<InfoAttr>() as u32)
    };
    (r == 0).then_some(attr.info_len as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// bpf_prog_info.recursion_misses of a program. Used only if the program id read from the
/// same struct matches the one aya read.
pub fn recursion_misses(fd: BorrowedFd<'_>, id: u32) -> Option<u64> {
    // struct bpf_prog_info: id at 4, recursion_misses at 208 (Linux 5.12+).
    let mut info = [0u8; 256];
    let len = obj_info(fd, &mut info)?;
    if len < 216 || u32_at(&info, 4)? != id {
        return None;
    }
    u64_at(&info, 208)
}

/// The kernel's ids of every BPF link on the host.
fn link_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    let mut attr = IdAttr { id: 0, next_id: 0, open_flags: 0 };
    // Bounded: the kernel returns ids in increasing order and ENOENT after the last.
    while ids.len() < 1 << 16 {
        // SAFETY: BPF_LINK_GET_NEXT_ID reads start_id and writes next_id of `attr`, a valid
        // bpf_attr prefix for this command that lives across the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_LINK_GET_NEXT_ID, &mut attr as *mut IdAttr, size_of::<IdAttr>() as u32)
        };
        if r != 0 {
            break;
        }
        ids.push(attr.next_id);
        attr.id = attr.next_id;
    }
    ids
}

fn link_fd(id: u32) -> Option<OwnedFd> {
    let mut attr = IdAttr { id, next_id: 0, open_flags: 0 };
    // SAFETY: BPF_LINK_GET_FD_BY_ID reads link_id from `attr` and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_GET_FD_BY_ID, &mut attr as *mut IdAttr, size_of::<IdAttr>() as u32)
    };
    // SAFETY: a non-negative return is a new file descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Hits the kernel lost for the kprobe/kretprobe links of the programs `prog_ids`, summed per
/// program id: a kprobe hit while another kprobe handler ran on that CPU, or a kretprobe
/// with no free instance for the call (bpf_link_info.perf_event.kprobe.missed, Linux 6.7+;
/// absent before, so 0).
pub fn kprobe_missed(prog_ids: &[u32]) -> Vec<(u32, u64)> {
    // struct bpf_link_info: type 0, id 4, prog_id 8; union at 16: perf_event.type 16,
    // kprobe.func_name 24, name_len 32, offset 36, addr 40, missed 48.
    const BPF_LINK_TYPE_PERF_EVENT: u32 = 7;
    const BPF_PERF_EVENT_KPROBE: u32 = 3;
    const BPF_PERF_EVENT_KRETPROBE: u32 = 4;
    let mut out: Vec<(u32, u64)> = Vec::new();
    for id in link_ids() {
        let Some(fd) = link_fd(id) else { continue };
        let mut name = [0u8; 128];
        let mut info = [0u8; 96];
        info[24..32].copy_from_slice(&(name.as_mut_ptr() as u64).to_ne_bytes());
        info[32..36].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        let Some(len) = obj_info(fd.as_fd(), &mut info) else { continue };
        let (Some(ty), Some(prog), Some(pe)) = (u32_at(&info, 0), u32_at(&info, 8), u32_at(&info, 16)) else {
            continue;
        };
        if len < 56
            || ty != BPF_LINK_TYPE_PERF_EVENT
            || !matches!(pe, BPF_PERF_EVENT_KPROBE | BPF_PERF_EVENT_KRETPROBE)
            || !prog_ids.contains(&prog)
        {
            continue;
        }
        let missed = u64_at(&info, 48).unwrap_or(0);
        match out.iter_mut().find(|(p, _)| *p == prog) {
            Some((_, n)) => *n += missed,
            None => out.push((prog, missed)),
        }
    }
    out
}
