//! From numbers to causes: the verdict engine (`verdict`, reaching the live system only
//! through its `Evidence` trait) and the readiness rules of `conntrace check` (`check`).

pub mod check;
pub mod verdict;
