//! The attach ladder as data: per signal, an ordered list of rungs (a mode and the kernel
//! programs it needs), walked by one function. The first rung whose hooks all attach wins;
//! the ones before it say in `status` why they were not used. The walker knows nothing of
//! aya: it attaches through [`Attacher`], so its order, fallbacks and notes are unit-tested
//! with a fake kernel.

use crate::domain::status::{AttachMode, Mode, SignalStatus};

/// One kernel program attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// fexit on `func`; `arity`: the parameter count the program reads the return value
    /// after, checked against the kernel's BTF (None when it does not read it).
    Fexit {
        prog: &'static str,
        func: &'static str,
        arity: Option<usize>,
    },
    Fentry {
        prog: &'static str,
        func: &'static str,
    },
    TpBtf {
        prog: &'static str,
        tp: &'static str,
    },
    /// A classic tracepoint program attached to every one of `points`; `layout` lists the
    /// record fields (name, offset, size) it reads, checked against the format file first.
    Tracepoint {
        prog: &'static str,
        points: &'static [(&'static str, &'static str)],
        layout: &'static [(&'static str, usize, usize)],
    },
    RawTp {
        prog: &'static str,
        tp: &'static str,
    },
    /// A kprobe or kretprobe (the program's section says which).
    Kprobe {
        prog: &'static str,
        func: &'static str,
    },
    /// The first of these that attaches.
    FirstOf(Vec<Hook>),
}

impl Hook {
    pub fn prog(&self) -> Option<&'static str> {
        match self {
            Hook::Fexit { prog, .. }
            | Hook::Fentry { prog, .. }
            | Hook::TpBtf { prog, .. }
            | Hook::Tracepoint { prog, .. }
            | Hook::RawTp { prog, .. }
            | Hook::Kprobe { prog, .. } => Some(prog),
            Hook::FirstOf(_) => None,
        }
    }
}

/// The hook families an attach mode allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Fexit,
    /// tp_btf, classic and raw tracepoints (and what only reuses them).
    Tracepoint,
    Kprobe,
}

/// One way to hook a signal.
#[derive(Debug, Clone)]
pub struct Rung {
    pub mode: Mode,
    pub family: Family,
    /// What `status` calls this rung when it was not used ("fexit", "tracepoint", …).
    pub label: &'static str,
    /// Why this kernel cannot use the rung at all (missing BTF offsets, a shared hook that
    /// did not attach), said in `status`; None when it may be tried.
    pub blocked: Option<String>,
    /// All attach, or the ones attached are detached and the next rung is tried.
    pub hooks: Vec<Hook>,
    /// Extra coverage (the IPv6 twin): attached when possible; when not, the note says so.
    pub optional: Vec<Hook>,
    /// Hooks attached elsewhere that this rung counts on (listed in `status`).
    pub shared: Vec<String>,
    /// A `ROLES` switch the kernel programs check, turned on when this rung is used.
    pub role: Option<u32>,
    /// Sees only part of what the signal covers (the note says which part).
    pub partial: bool,
    pub note: String,
}

impl Rung {
    pub fn new(mode: Mode, family: Family, label: &'static str, hooks: Vec<Hook>, note: impl Into<String>) -> Rung {
        Rung {
            mode,
            family,
            label,
            blocked: None,
            hooks,
            optional: Vec::new(),
            shared: Vec::new(),
            role: None,
            partial: false,
            note: note.into(),
        }
    }

    /// The rung sees only part of the signal: `status` says `exact: false`.
    pub fn partial(mut self) -> Rung {
        self.partial = true;
        self
    }

    pub fn optional(mut self, hooks: Vec<Hook>) -> Rung {
        self.optional = hooks;
        self
    }

    pub fn shared(mut self, hooks: Vec<String>) -> Rung {
        self.shared = hooks;
        self
    }

    pub fn role(mut self, role: u32) -> Rung {
        self.role = Some(role);
        self
    }

    /// Blocks the rung unless `ok`; the first reason given stays.
    pub fn blocked_unless(mut self, ok: bool, why: impl Into<String>) -> Rung {
        if !ok && self.blocked.is_none() {
            self.blocked = Some(why.into());
        }
        self
    }
}

/// Attaches kernel programs: aya on a real kernel, a fake in tests.
pub trait Attacher {
    /// Attaches `hook`; what `status` lists for it (`fexit/inet_hash_connect`), or why not.
    fn attach(&mut self, hook: &Hook) -> Result<Vec<String>, String>;
    /// Detaches a program attached by a rung that then failed as a whole.
    fn detach(&mut self, prog: &'static str);
}

/// Which families may be tried: the attach mode, and what the kernel offers.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub fexit: bool,
    pub tracepoint: bool,
    pub kprobe: bool,
}

impl Allowed {
    pub fn family(&self, f: Family) -> bool {
        match f {
            Family::Fexit => self.fexit,
            Family::Tracepoint => self.tracepoint,
            Family::Kprobe => self.kprobe,
        }
    }
}

/// What climbing one signal's ladder gave: the status, and the roles to turn on.
#[derive(Debug, Clone, PartialEq)]
pub struct Climbed {
    pub status: SignalStatus,
    pub roles: Vec<u32>,
}

/// Tries `rungs` in order; the first whose hooks all attach is the signal's status.
pub fn climb(a: &mut dyn Attacher, rungs: &[Rung], allowed: Allowed, mode: AttachMode) -> Climbed {
    let mut why = Vec::new();
    let mut any_allowed = false;
    for r in rungs {
        if !allowed.family(r.family) {
            continue;
        }
        any_allowed = true;
        if let Some(b) = &r.blocked {
            why.push(format!("{}: {b}", r.label));
            continue;
        }
        match attach_all(a, &r.hooks) {
            Ok(attached) => {
                let mut note = r.note.clone();
                // Shared hooks first: they are what the rung is built on.
                let mut hooks: Vec<String> = Vec::new();
                for h in r.shared.iter().chain(&attached) {
                    if !hooks.contains(h) {
                        hooks.push(h.clone());
                    }
                }
                if !r.optional.is_empty() {
                    match attach_all(a, &r.optional) {
                        Ok(h) => hooks.extend(h),
                        Err(e) => note = join(&note, &format!("IPv6 not watched: {e}")),
                    }
                }
                // kprobe programs share one per-CPU recursion guard (bpf_prog_active): a probe
                // firing while another of them runs on that CPU is skipped.
                let exact = r.mode != Mode::Kprobe && !r.partial;
                let note = join(&note, &if why.is_empty() { String::new() } else { format!("not {}", why.join("; ")) });
                let status =
                    SignalStatus { mode: r.mode, exact, hooks, note: (!note.is_empty()).then_some(note), armed: None };
                return Climbed { status, roles: r.role.into_iter().collect() };
            }
            Err(e) => why.push(format!("{}: {e}", r.label)),
        }
    }
    if !any_allowed {
        let labels: Vec<&str> = rungs.iter().map(|r| r.label).collect();
        why.push(format!("only hooked by {}, not allowed in this attach mode", labels.join(" or ")));
    }
    Climbed { status: SignalStatus::unavailable(unavailable_note(&why, mode)), roles: Vec::new() }
}

/// Attaches every hook, or none: on a failure the ones attached are detached.
fn attach_all(a: &mut dyn Attacher, hooks: &[Hook]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, h) in hooks.iter().enumerate() {
        match a.attach(h) {
            Ok(d) => out.extend(d),
            Err(e) => {
                for done in &hooks[..i] {
                    if let Some(p) = done.prog() {
                        a.detach(p);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}; {b}"),
    }
}

fn unavailable_note(reasons: &[String], mode: AttachMode) -> String {
    let forced = match mode {
        AttachMode::Auto => "",
        AttachMode::Fexit => "attach mode fexit: no fallback allowed; ",
        AttachMode::Tracepoint => "attach mode tracepoint: fexit not tried; ",
        AttachMode::Kprobe => "attach mode kprobe: no fallback allowed; ",
    };
    format!("{forced}{}", if reasons.is_empty() { "no usable hook".to_string() } else { reasons.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that refuses the programs named in `refuse` and records what happened.
    #[derive(Default)]
    struct FakeKernel {
        refuse: Vec<&'static str>,
        attached: Vec<&'static str>,
        detached: Vec<&'static str>,
    }

    impl Attacher for FakeKernel {
        fn attach(&mut self, hook: &Hook) -> Result<Vec<String>, String> {
            if let Hook::FirstOf(alts) = hook {
                let mut why = Vec::new();
                for h in alts {
                    match self.attach(h) {
                        Ok(d) => return Ok(d),
                        Err(e) => why.push(e),
                    }
                }
                return Err(why.join("; "));
            }
            let prog = hook.prog().unwrap_or("?");
            if self.refuse.contains(&prog) {
                return Err("refused by this kernel (EPERM)".into());
            }
            self.attached.push(prog);
            Ok(vec![format!("hook/{prog}")])
        }
        fn detach(&mut self, prog: &'static str) {
            self.detached.push(prog);
        }
    }

    const ALL: Allowed = Allowed { fexit: true, tracepoint: true, kprobe: true };

    fn ladder() -> Vec<Rung> {
        vec![
            Rung::new(
                Mode::Fexit,
                Family::Fexit,
                "fexit",
                vec![
                    Hook::Fentry { prog: "enter", func: "f" },
                    Hook::Fexit { prog: "exit", func: "f", arity: Some(2) },
                ],
                "",
            )
            .optional(vec![Hook::Fexit { prog: "exit6", func: "f6", arity: Some(2) }]),
            Rung::new(
                Mode::Tracepoint,
                Family::Tracepoint,
                "tracepoint",
                vec![Hook::Tracepoint { prog: "tp", points: &[("syscalls", "sys_exit_f")], layout: &[] }],
                "system calls only",
            )
            .role(3),
            Rung::new(
                Mode::Kprobe,
                Family::Kprobe,
                "kprobe",
                vec![Hook::Kprobe { prog: "kp", func: "f" }],
                "approximate",
            ),
        ]
    }

    #[test]
    fn the_first_rung_that_attaches_wins() {
        let mut k = FakeKernel::default();
        let c = climb(&mut k, &ladder(), ALL, AttachMode::Auto);
        assert_eq!(c.status.mode, Mode::Fexit);
        assert!(c.status.exact);
        assert_eq!(c.status.hooks, ["hook/enter", "hook/exit", "hook/exit6"]);
        assert_eq!(c.status.note, None);
        assert!(c.roles.is_empty());
        assert_eq!(k.attached, ["enter", "exit", "exit6"]);
    }

    #[test]
    fn a_refused_hook_detaches_its_rung_and_the_next_says_why() {
        let mut k = FakeKernel { refuse: vec!["exit"], ..Default::default() };
        let c = climb(&mut k, &ladder(), ALL, AttachMode::Auto);
        assert_eq!(k.detached, ["enter"], "the half-attached rung is taken back");
        assert_eq!(c.status.mode, Mode::Tracepoint);
        assert_eq!(c.status.note.as_deref(), Some("system calls only; not fexit: refused by this kernel (EPERM)"));
        assert_eq!(c.roles, [3]);
    }

    #[test]
    fn a_missing_optional_hook_is_said_not_fatal() {
        let mut k = FakeKernel { refuse: vec!["exit6"], ..Default::default() };
        let c = climb(&mut k, &ladder(), ALL, AttachMode::Auto);
        assert_eq!(c.status.mode, Mode::Fexit);
        assert_eq!(c.status.note.as_deref(), Some("IPv6 not watched: refused by this kernel (EPERM)"));
    }

    #[test]
    fn kprobes_are_approximate_and_blocked_rungs_are_explained() {
        let mut rungs = ladder();
        rungs[1] = rungs[1].clone().blocked_unless(false, "kernel BTF lacks the fd→socket offsets");
        let mut k = FakeKernel { refuse: vec!["enter"], ..Default::default() };
        let c = climb(&mut k, &rungs, ALL, AttachMode::Auto);
        assert_eq!((c.status.mode, c.status.exact), (Mode::Kprobe, false));
        assert_eq!(
            c.status.note.as_deref(),
            Some(
                "approximate; not fexit: refused by this kernel (EPERM); tracepoint: kernel BTF lacks the fd→socket offsets"
            )
        );
    }

    #[test]
    fn a_forced_mode_tries_its_family_only_and_says_so() {
        let mut k = FakeKernel { refuse: vec!["enter"], ..Default::default() };
        let allowed = Allowed { fexit: true, tracepoint: false, kprobe: false };
        let c = climb(&mut k, &ladder(), allowed, AttachMode::Fexit);
        assert_eq!(c.status.mode, Mode::Unavailable);
        assert_eq!(
            c.status.note.as_deref(),
            Some("attach mode fexit: no fallback allowed; fexit: refused by this kernel (EPERM)")
        );
        assert!(!k.attached.contains(&"tp"));
        // A signal with no rung of the allowed family says which family it needs.
        let only_tp = vec![ladder()[1].clone()];
        let c = climb(&mut FakeKernel::default(), &only_tp, allowed, AttachMode::Fexit);
        assert!(c.status.note.unwrap().contains("only hooked by tracepoint, not allowed in this attach mode"));
    }

    #[test]
    fn shared_hooks_are_listed_once() {
        let r = Rung::new(Mode::TpBtf, Family::Tracepoint, "fallback", vec![], "via set_state")
            .shared(vec!["tp_btf/inet_sock_set_state".into(), "tp_btf/inet_sock_set_state".into()]);
        let c = climb(&mut FakeKernel::default(), &[r], ALL, AttachMode::Auto);
        assert_eq!(c.status.hooks, ["tp_btf/inet_sock_set_state"]);
    }
}
