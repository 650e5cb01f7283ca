//! Readers of the live machine into domain types: /proc and sysctls (`facts`, `procinfo`),
//! sysctl configuration files (`sysctl_conf`), sock_diag and network namespaces (`netdiag`),
//! listen counters between polls (`listeners`). Parsing is split from reading so it is tested
//! on fixtures.

pub mod diag_filter;
pub mod facts;
pub mod listeners;
pub mod netdiag;
pub mod procinfo;
pub mod sysctl_conf;
pub mod systemd;
