#![no_std]
// This file exists so that probe-user can name this package as a build-dependency (cargo then
// rebuilds probe-user when the kernel programs change); the programs are in main.rs.
