//! Which Debian kernel package each row of the matrix boots, and installing it (with the
//! host's QEMU, busybox and virtme-ng) when missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::ALL_MODES;
use crate::{is_root, output, run as run_cmd};

/// Installs what the matrix needs on this machine (Debian packages, virtme-ng from PyPI).
pub(super) fn ensure_host() -> Result<()> {
    if !is_root() {
        bail!("vm-test needs root (apt-get, and the tests inside the VM load eBPF)");
    }
    let have = |bin: &str| output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_some();
    let mut pkgs = Vec::new();
    if !have("qemu-system-x86_64") {
        pkgs.push("qemu-system-x86");
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        pkgs.push("busybox-static");
    }
    // The conntrack test needs a netfilter rule that uses conntrack in its namespace.
    if !have("nft") {
        pkgs.push("nftables");
    }
    if !pkgs.is_empty() {
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(Command::new("apt-get").args(["install", "-y", "-q"]).args(&pkgs))?;
    }
    if !have("vng") {
        run_cmd(Command::new("pip").args(["install", "-q", "virtme-ng"]))?;
    }
    Ok(())
}

/// A Debian kernel flavour the matrix boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `-amd64`: the kernel most hosts run.
    Generic,
    /// `-rt-amd64`: PREEMPT_RT (industrial and low-latency hosts).
    Rt,
}

/// One row group of the matrix: a kernel series in one flavour.
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelSpec {
    /// What `--kernel` and the table call it.
    pub(super) name: &'static str,
    /// Debian's version prefix (`6.1` matches `6.1.0-57`, `6.12` matches `6.12.117+deb12`).
    series: &'static str,
    flavour: Flavour,
    /// The modes this kernel runs in under `--mode all` (the RT row is one auto boot: its
    /// hooks are the generic kernel's, and emulating it costs more).
    pub(super) modes: &'static [&'static str],
}

pub(super) const KERNELS: [KernelSpec; 3] = [
    KernelSpec { name: "6.1", series: "6.1", flavour: Flavour::Generic, modes: &ALL_MODES },
    KernelSpec { name: "6.12", series: "6.12", flavour: Flavour::Generic, modes: &ALL_MODES },
    KernelSpec { name: "6.12-rt", series: "6.12", flavour: Flavour::Rt, modes: &["auto"] },
];

/// The kernel release (what `uname -r` and `/boot/vmlinuz-*` say) of a Debian kernel image
/// package name, when it is `spec`'s series and flavour: `linux-image-6.12.117+deb12-amd64`
/// and its `-unsigned` twin give `6.12.117+deb12-amd64`; `-rt-`, `-cloud-`, `-dbg` and
/// meta-packages give None for the generic flavour.
fn release_of(pkg: &str, spec: &KernelSpec) -> Option<String> {
    let rest = pkg.strip_prefix("linux-image-")?;
    let release = rest.strip_suffix("-unsigned").unwrap_or(rest);
    release_matches(release, spec).then(|| release.to_string())
}

/// True when a kernel release (`6.1.0-57-amd64`, `6.12.117+deb12-rt-amd64`) is `spec`'s
/// series and flavour.
fn release_matches(release: &str, spec: &KernelSpec) -> bool {
    let suffix = match spec.flavour {
        Flavour::Generic => "-amd64",
        Flavour::Rt => "-rt-amd64",
    };
    let Some(version) = release.strip_suffix(suffix) else { return false };
    // Every '-'-separated part of the version is numeric-led (`6.1.0`, `57`, `6.12.117+deb12`):
    // that rules out flavours (`rt`, `cloud`) left in front of the generic suffix.
    let numeric = version.split('-').all(|part| part.starts_with(|c: char| c.is_ascii_digit()));
    let in_series = version.strip_prefix(spec.series).is_some_and(|r| r.starts_with('.'));
    numeric && in_series
}

/// Orders kernel versions by their numbers (`6.12.99` before `6.12.117`), not as strings.
fn version_key(release: &str) -> Vec<u64> {
    release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// The newest release among `candidates` that is `spec`'s series and flavour.
fn newest<'a>(candidates: impl Iterator<Item = &'a str>, spec: &KernelSpec) -> Option<String> {
    candidates.filter(|r| release_matches(r, spec)).max_by_key(|r| version_key(r)).map(str::to_string)
}

/// The environment variable that names an exact package for `spec`
/// (`CONNTRACE_VM_KERNEL_6_12=linux-image-6.12.111+deb12-amd64-unsigned`).
fn override_var(spec: &KernelSpec) -> String {
    format!("CONNTRACE_VM_KERNEL_{}", spec.name.replace(['.', '-'], "_").to_uppercase())
}

/// The kernel image for `spec`: the package named by its override variable, else the newest
/// Debian package of its series and flavour (installed when missing), else the newest such
/// image already in /boot when the archive cannot be asked.
pub(super) fn ensure_kernel(spec: &KernelSpec) -> Result<PathBuf> {
    let var = override_var(spec);
    let chosen = match std::env::var(&var) {
        Ok(pkg) => {
            let release = pkg
                .strip_prefix("linux-image-")
                .map(|r| r.strip_suffix("-unsigned").unwrap_or(r).to_string())
                .with_context(|| {
                    format!("{var}={pkg}: expected a package name like linux-image-6.12.117+deb12-amd64")
                })?;
            Some((pkg, release))
        }
        Err(_) => {
            let _ = output(Command::new("apt-get").args(["update", "-q"]));
            let list = output(Command::new("apt-cache").args([
                "search",
                "--names-only",
                &format!("^linux-image-{}\\.", spec.series.replace('.', "\\.")),
            ]))
            .unwrap_or_default();
            let pkgs: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
            let releases: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, spec)).collect();
            newest(releases.iter().map(String::as_str), spec).map(|release| {
                // Prefer the unsigned image (no shim dependencies); either boots the same way.
                let unsigned = format!("linux-image-{release}-unsigned");
                let pkg = if pkgs.contains(&unsigned.as_str()) { unsigned } else { format!("linux-image-{release}") };
                (pkg, release)
            })
        }
    };
    let Some((pkg, release)) = chosen else {
        let installed: Vec<String> = std::fs::read_dir("/boot")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
            .collect();
        let release = newest(installed.iter().map(String::as_str), spec)
            .with_context(|| format!("no Debian package for kernel {} (apt-cache search found none)", spec.name))?;
        println!("xtask: kernel {}: no package list; using the installed {release}", spec.name);
        return Ok(PathBuf::from(format!("/boot/vmlinuz-{release}")));
    };
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    println!(
        "xtask: kernel {}: {pkg}{} (set {var} to choose another package)",
        spec.name,
        if image.exists() { ", installed" } else { "" }
    );
    if !image.exists() {
        run_cmd(Command::new("apt-get").args(["install", "-y", "-q", &pkg]))?;
    }
    if !image.exists() {
        bail!("{pkg} installed no {}", image.display());
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERIC_612: KernelSpec = KERNELS[1];
    const RT_612: KernelSpec = KERNELS[2];
    const GENERIC_61: KernelSpec = KERNELS[0];

    #[test]
    fn picks_the_flavour_asked_for() {
        let pkgs = [
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.12.117+deb12-amd64-dbg",
            "linux-image-6.12.117+deb12-rt-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.99+deb12-amd64-unsigned",
            "linux-image-6.1.0-57-amd64",
            "linux-image-6.1.0-57-rt-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-amd64",
            "linux-image-6.120.1-amd64",
        ];
        let generic: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, &GENERIC_612)).collect();
        assert_eq!(generic, ["6.12.117+deb12-amd64", "6.12.117+deb12-amd64", "6.12.99+deb12-amd64"]);
        let rt: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, &RT_612)).collect();
        assert_eq!(rt, ["6.12.117+deb12-rt-amd64"]);
        let old: Vec<String> = pkgs.iter().filter_map(|p| release_of(p, &GENERIC_61)).collect();
        assert_eq!(old, ["6.1.0-57-amd64"]);
    }

    #[test]
    fn orders_by_version_not_by_string() {
        let r = ["6.12.99+deb12-amd64", "6.12.117+deb12-amd64", "6.12.117+deb12-rt-amd64", "6.12.100+deb12-amd64"];
        assert_eq!(newest(r.iter().copied(), &GENERIC_612).as_deref(), Some("6.12.117+deb12-amd64"));
        let r = ["6.1.0-9-amd64", "6.1.0-57-amd64", "6.1.0-10-amd64"];
        assert_eq!(newest(r.iter().copied(), &GENERIC_61).as_deref(), Some("6.1.0-57-amd64"));
        assert_eq!(newest(["6.12.117+deb12-amd64"].into_iter(), &RT_612), None);
    }

    #[test]
    fn override_variables_are_shell_names() {
        assert_eq!(override_var(&GENERIC_612), "CONNTRACE_VM_KERNEL_6_12");
        assert_eq!(override_var(&RT_612), "CONNTRACE_VM_KERNEL_6_12_RT");
    }
}
