//! The fd hook attached on demand (`--syscall-hooks on-demand`): loaded with the rest, but
//! attached only while some process nears its fd limit (the policy is `commands::arming`).

use anyhow::{Context as _, Result};
use aya::{
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint},
    Ebpf,
};

use super::{loader::Loader, probe::Probe};
use crate::domain::status::{Mode, Signal, SignalStatus};

/// The raw `sys_exit` link while attached. A raw tracepoint attaches at once; the exit
/// tracepoints of the 43 fd-creating system calls take ~3 s to attach here (each
/// registration waits for the kernel to patch and synchronize), too late for a burst.
pub(super) struct FdOnDemand {
    link: Option<RawTracePointLinkId>,
}

/// The raw tracepoint program that counts EMFILE/ENFILE at system-call exit.
const FD_SYS_EXIT: (&str, &str) = ("fd_sys_exit", "sys_exit");

/// The fd hook, when the ladder took the system-call rung: detached until a process nears its
/// limit (see [`Probe::arm_fd`]); it stays loaded, so attaching it later cannot fail
/// verification.
pub(super) fn on_demand(l: &mut Loader, signals: &mut [(Signal, SignalStatus)]) -> Result<Option<FdOnDemand>> {
    let Some((_, fd)) = signals.iter_mut().find(|(s, _)| *s == Signal::FdAlloc) else { return Ok(None) };
    if fd.mode != Mode::RawTracepoint {
        return Ok(None);
    }
    let Some(i) = l.raw_links.iter().position(|(p, _)| p == FD_SYS_EXIT.0) else { return Ok(None) };
    let (_, link) = l.raw_links.swap_remove(i);
    raw_tp(&mut l.ebpf)?.detach(link).context("detaching the fd hook")?;
    fd.armed = Some(false);
    Ok(Some(FdOnDemand { link: None }))
}

fn raw_tp(ebpf: &mut Ebpf) -> Result<&mut RawTracePoint> {
    let p: &mut RawTracePoint = ebpf.program_mut(FD_SYS_EXIT.0).context("fd_sys_exit program")?.try_into()?;
    Ok(p)
}

impl Probe {
    /// Attaches (`on`) or detaches the fd hook attached on demand; true when that changed
    /// something (never without `--syscall-hooks on-demand` and the system-call rung).
    pub fn arm_fd(&mut self, on: bool) -> Result<bool> {
        let Some(d) = self.fd_on_demand.as_mut() else { return Ok(false) };
        if d.link.is_some() == on {
            return Ok(false);
        }
        let p = raw_tp(&mut self.ebpf)?;
        match d.link.take() {
            Some(link) => p.detach(link).context("detaching the fd hook")?,
            None => d.link = Some(p.attach(FD_SYS_EXIT.1).context("attaching the fd hook")?),
        }
        for (s, st) in &mut self.status.signals {
            if *s == Signal::FdAlloc {
                st.armed = Some(on);
            }
        }
        Ok(true)
    }

    /// Whether the fd hook is attached on demand (`arm_fd` has something to do).
    pub fn fd_on_demand(&self) -> bool {
        self.fd_on_demand.is_some()
    }
}
