//! Pure data shared by every layer: signals and attach status, counters and events,
//! sockets, destinations and limits, listener deltas. No I/O; imports nothing above it.

pub mod errno;
pub mod listen;
pub mod model;
pub mod net;
pub mod status;
pub mod time;
