//! Rebuild the kernel programs when bpf-linker changes (it is the linker for this target, and
//! cargo does not track linkers on its own).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
