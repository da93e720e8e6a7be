//! `cargo xtask build-ebpf`: installs the eBPF toolchain when missing and
//! builds the kernel programs (release, with BTF) into
//! `<target>/ebpf/bpfel-unknown-none/release/nodeport`, the object the
//! agent embeds.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{ebpf_command, toolchain, util};

pub fn object_path() -> PathBuf {
    ebpf_command::object_path(&util::target_dir())
}

pub fn build() -> Result<PathBuf> {
    toolchain::ensure_ebpf()?;
    let mut cmd = ebpf_command::command(
        &util::workspace_root(),
        &util::target_dir(),
        &toolchain::path_with_cargo_bin(),
    );
    eprintln!(
        "build-ebpf: building nodeport-ebpf for {}",
        ebpf_command::BPF_TARGET
    );
    util::run(&mut cmd).context("building the eBPF programs")?;
    let object = object_path();
    eprintln!("build-ebpf: {}", object.display());
    Ok(object)
}
