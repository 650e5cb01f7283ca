//! Builds the kernel programs (probe-ebpf, target bpfel-unknown-none) so that a plain
//! `cargo build` produces a `conntrace` with them embedded (the aya-template layout).

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "probe-ebpf")
        .ok_or_else(|| anyhow!("probe-ebpf package not found in the workspace"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("probe-ebpf has no directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)")
}
