//! Map keys, values and constants shared by the nodeport datapath
//! (`nodeport-ebpf`) and the agent (`nodeport-agent`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, integers rather than
//! booleans, and no `Option` or enums, so that the kernel and user space agree
//! on the bytes and `bpftool map dump` prints field names from BTF. Fields that
//! hold network byte order end in `_be`.
#![no_std]
// Reason: these helpers run in the BPF programs, where every call must be
// inlined (BPF-to-BPF calls cost and constrain the verifier).
#![allow(clippy::inline_always)]

pub mod addr;
pub mod checksum;
pub mod config;
pub mod hash;
pub mod maps;

pub use hash::flow_hash;
pub use config::{CONFIG_F_NO_SERVICE_COUNTERS, Config, PortRange, SnatPool};
pub use maps::*;
