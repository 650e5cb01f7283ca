//! What every signal's programs share: kernel reads at BTF offsets (`kernel`), counting and
//! failure events (`count`), the maps (`maps`), the kprobe argument stash (`stash`).

pub mod count;
pub mod kernel;
pub mod maps;
pub mod stash;
