//! `cargo xtask test`: the whole suite, from a fresh machine: toolchain,
//! eBPF object, agent and test binaries, then every test of the workspace
//! (unit tests, `BPF_PROG_TEST_RUN` datapath tests, end-to-end tests on the
//! namespace cluster).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build_ebpf, toolchain, util};

pub fn require_root(what: &str) -> Result<()> {
    if !toolchain::is_root() {
        bail!(
            "`cargo xtask {what}` loads BPF programs and builds network namespaces: run it as root (e.g. `sudo -E cargo xtask {what}`)"
        );
    }
    Ok(())
}

/// Everything the privileged commands need, built: the eBPF object, the
/// agent and the pod server. Exports their paths for the harness.
pub fn prepare(what: &str) -> Result<()> {
    require_root(what)?;
    toolchain::ensure_tools()?;
    build_ebpf::build()?;
    eprintln!("{what}: building the agent and the test binaries");
    util::run(Command::new("cargo").args([
        "build",
        "--package",
        "nodeport-agent",
        "--package",
        "nodeport-tests",
        "--bins",
    ]))?;
    let debug = util::target_dir().join("debug");
    // SAFETY: set before any thread is started.
    unsafe {
        std::env::set_var("NODEPORT_AGENT_BIN", debug.join("nodeport-agent"));
        std::env::set_var("NODEPORT_PODSERVER_BIN", debug.join("np-podserver"));
    }
    Ok(())
}

pub fn run(extra: &[String]) -> Result<()> {
    prepare("test")?;
    eprintln!("test: running the workspace's tests");
    util::run(
        Command::new("cargo")
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra),
    )
}
