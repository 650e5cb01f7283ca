//! Loading kernel programs through aya: the [`Attacher`] the attach ladder climbs with, BTF
//! arity checks for fexit, tracefs format checks for classic tracepoints, and the short
//! reasons `status` gives when the kernel refuses a hook.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{
        raw_trace_point::RawTracePointLinkId, BtfTracePoint, FEntry, FExit, KProbe, ProgramError, RawTracePoint,
        TracePoint,
    },
    Btf, Ebpf,
};

use super::{
    ladder::{Attacher, Hook},
    tpformat,
};

/// Short reason for a failed load/attach, for `status` notes: classified by the errno of the
/// failing syscall (aya's `ProgramError`/`SyscallError` carry it), or by BTF not knowing the
/// function; otherwise aya's own message.
fn reason(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        let errno = if let Some(ProgramError::LoadError { io_error, .. }) = cause.downcast_ref::<ProgramError>() {
            io_error.raw_os_error()
        } else if let Some(ProgramError::SyscallError(se)) = cause.downcast_ref::<ProgramError>() {
            se.io_error.raw_os_error()
        } else if let Some(se) = cause.downcast_ref::<aya::sys::SyscallError>() {
            se.io_error.raw_os_error()
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            io.raw_os_error()
        } else if let Some(ProgramError::Btf(aya::BtfError::UnknownBtfTypeName { .. })) =
            cause.downcast_ref::<ProgramError>()
        {
            return "hook not present in this kernel".into();
        } else {
            None
        };
        match errno {
            // The kernel refused (lockdown, no trampolines on this architecture or config).
            Some(libc::EPERM) => return "refused by this kernel (EPERM)".into(),
            // No such function, tracepoint or PMU.
            Some(libc::ENOENT) => return "hook not present in this kernel".into(),
            _ => {}
        }
    }
    format!("{e:#}").chars().take(160).collect()
}

/// Makes sure tracefs is reachable for classic tracepoints (a fresh machine has it unmounted).
pub fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .context("running mount -t tracefs")?;
    if !status.success() || !Path::new("/sys/kernel/tracing/events").exists() {
        return Err(anyhow!(
            "tracefs is not mounted and mounting it failed: run `sudo mount -t tracefs tracefs /sys/kernel/tracing`"
        ));
    }
    Ok(())
}

fn tracefs_format(category: &str, name: &str) -> Option<String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/{category}/{name}/format")).ok())
}

pub(super) struct Loader<'a> {
    pub(super) ebpf: Ebpf,
    pub(super) btf: Option<&'a Btf>,
    /// The same BTF through conntrace's own reader (function parameter counts).
    pub(super) types: Option<&'a crate::kernel::btf::Btf>,
    /// Hook families to pretend the kernel refuses (`CONNTRACE_SKIP_HOOKS`), so tests can
    /// prove every fallback level on a kernel that would take the preferred one.
    pub(super) skip: Vec<String>,
    /// Raw tracepoint links by program, so that one attached on demand can be detached.
    pub(super) raw_links: Vec<(String, RawTracePointLinkId)>,
}

impl Loader<'_> {
    fn skipped(&self, family: &str) -> Result<()> {
        if self.skip.iter().any(|s| s == family) {
            return Err(anyhow!("skipped by CONNTRACE_SKIP_HOOKS"));
        }
        Ok(())
    }

    /// fexit on `func`; `arity` is the parameter count the program reads the return value
    /// after (None when it does not use it), checked against this kernel's BTF.
    fn fexit(&mut self, prog: &str, func: &str, arity: Option<usize>) -> Result<String> {
        self.skipped("fexit")?;
        let btf = self.btf.context("no kernel BTF")?;
        if let Some(want) = arity {
            let have = self.types.and_then(|t| t.function_arity(func));
            if have != Some(want) {
                return Err(anyhow!("{func} has {have:?} parameters in this kernel, the program expects {want}"));
            }
        }
        let p: &mut FExit = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load(func, btf)?;
        p.attach()?;
        Ok(format!("fexit/{func}"))
    }

    fn fentry(&mut self, prog: &str, func: &str) -> Result<String> {
        self.skipped("fexit")?;
        let btf = self.btf.context("no kernel BTF")?;
        let p: &mut FEntry = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load(func, btf)?;
        p.attach()?;
        Ok(format!("fentry/{func}"))
    }

    fn tp_btf(&mut self, prog: &str, tp: &str) -> Result<String> {
        self.skipped("tp_btf")?;
        let btf = self.btf.context("no kernel BTF")?;
        let p: &mut BtfTracePoint = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load(tp, btf)?;
        p.attach()?;
        Ok(format!("tp_btf/{tp}"))
    }

    fn tracepoint(&mut self, prog: &str, points: &[(&str, &str)]) -> Result<Vec<String>> {
        self.skipped("tracepoint")?;
        let p: &mut TracePoint = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load()?;
        let mut hooks = Vec::new();
        for (cat, name) in points {
            // A point this kernel or architecture lacks (e.g. sys_exit_open on arm64) is
            // skipped: status lists the points attached.
            if points.len() > 1 && tracefs_format(cat, name).is_none() {
                continue;
            }
            p.attach(cat, name)?;
            hooks.push(format!("tracepoint/{cat}/{name}"));
        }
        if hooks.is_empty() {
            return Err(anyhow!("none of its tracepoints exists here"));
        }
        Ok(hooks)
    }

    /// A kprobe or kretprobe program (the kind comes from the program's section).
    fn kprobe(&mut self, prog: &str, func: &str) -> Result<String> {
        self.skipped("kprobe")?;
        // aya attaches through the kprobe PMU; without CONFIG_KPROBES it does not exist.
        if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            return Err(anyhow!("this kernel has no kprobes (CONFIG_KPROBES unset)"));
        }
        let p: &mut KProbe = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load()?;
        p.attach(func, 0)?;
        let kind = if prog.contains("kretprobe") { "kretprobe" } else { "kprobe" };
        Ok(format!("{kind}/{func}"))
    }

    fn raw_tp(&mut self, prog: &str, tp: &str) -> Result<String> {
        self.skipped("raw_tracepoint")?;
        let p: &mut RawTracePoint = self.ebpf.program_mut(prog).context("program missing")?.try_into()?;
        p.load()?;
        let link = p.attach(tp)?;
        self.raw_links.push((prog.to_string(), link));
        Ok(format!("raw_tracepoint/{tp}"))
    }

    /// A classic tracepoint program on `points`, once its record layout matches this kernel's.
    fn tracepoint_checked(
        &mut self,
        prog: &str,
        points: &[(&str, &str)],
        layout: &[(&str, usize, usize)],
    ) -> Result<Vec<String>> {
        if !layout.is_empty() {
            let (cat, name) = points.first().context("a tracepoint without points")?;
            let format = tracefs_format(cat, name).with_context(|| format!("tracepoint {cat}/{name} not found"))?;
            tpformat::check(&format, layout).map_err(anyhow::Error::msg)?;
        }
        self.tracepoint(prog, points)
    }
}

impl Attacher for Loader<'_> {
    fn attach(&mut self, hook: &Hook) -> Result<Vec<String>, String> {
        let one = |r: Result<String>| r.map(|h| vec![h]);
        let r = match hook {
            Hook::Fexit { prog, func, arity } => one(self.fexit(prog, func, *arity)),
            Hook::Fentry { prog, func } => one(self.fentry(prog, func)),
            Hook::TpBtf { prog, tp } => one(self.tp_btf(prog, tp)),
            Hook::Tracepoint { prog, points, layout } => self.tracepoint_checked(prog, points, layout),
            Hook::RawTp { prog, tp } => one(self.raw_tp(prog, tp)),
            Hook::Kprobe { prog, func } => one(self.kprobe(prog, func)),
            Hook::FirstOf(alternatives) => {
                let mut why = Vec::new();
                for alt in alternatives {
                    match self.attach(alt) {
                        Ok(h) => return Ok(h),
                        Err(e) => why.push(format!("{}: {e}", family_name(alt))),
                    }
                }
                return Err(why.join("; "));
            }
        };
        r.map_err(|e| reason(&e))
    }

    /// Detaches and unloads a program after a partial attach.
    fn detach(&mut self, prog: &'static str) {
        if let Some(p) = self.ebpf.program_mut(prog) {
            let _ = match p {
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::TracePoint(p) => p.unload(),
                aya::programs::Program::RawTracePoint(p) => p.unload(),
                aya::programs::Program::BtfTracePoint(p) => p.unload(),
                _ => Ok(()),
            };
        }
    }
}

fn family_name(h: &Hook) -> &'static str {
    match h {
        Hook::Fexit { .. } | Hook::Fentry { .. } => "fexit",
        Hook::TpBtf { .. } => "tp_btf",
        Hook::Tracepoint { .. } => "tracepoint",
        Hook::RawTp { .. } => "raw_tracepoint",
        Hook::Kprobe { .. } => "kprobe",
        Hook::FirstOf(_) => "any",
    }
}
