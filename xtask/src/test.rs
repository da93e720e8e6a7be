//! `cargo xtask test`: the whole suite, from a fresh machine: toolchain,
//! eBPF object, agent and test binaries, then every test of the workspace
//! (unit tests, `BPF_PROG_TEST_RUN` datapath tests, end-to-end tests on the
//! namespace cluster).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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

/// The cargo profile the agent and the harness binaries are built with.
#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

/// Everything the privileged commands need, built: the eBPF object, the
/// agent, the pod server and the client. Exports their paths for the
/// harness and returns the object's path.
pub fn prepare(what: &str, profile: Profile) -> Result<PathBuf> {
    require_root(what)?;
    toolchain::ensure_tools()?;
    let object = build_ebpf::build()?;
    eprintln!("{what}: building the agent and the test binaries");
    let mut cmd = Command::new("cargo");
    cmd.arg("build");
    if matches!(profile, Profile::Release) {
        cmd.arg("--release");
    }
    util::run(cmd.args([
        "--package",
        "nodeport-agent",
        "--package",
        "nodeport-tests",
        "--bins",
    ]))?;
    let dir = util::target_dir().join(match profile {
        Profile::Debug => "debug",
        Profile::Release => "release",
    });
    // SAFETY: set before any thread is started.
    unsafe {
        std::env::set_var("NODEPORT_AGENT_BIN", dir.join("nodeport-agent"));
        std::env::set_var("NODEPORT_PODSERVER_BIN", dir.join("np-podserver"));
        std::env::set_var("NODEPORT_CLIENT_BIN", dir.join("np-client"));
    }
    Ok(object)
}

pub fn run(extra: &[String]) -> Result<()> {
    prepare("test", Profile::Debug)?;
    eprintln!("test: running the workspace's tests");
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut totals = Totals::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            totals.add(&line);
        }
    }
    let status = child.wait()?;
    // One closing line over every test binary of the run.
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Test counts summed over the `test result:` lines of every test binary.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 61 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add("test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.38s");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed), (66, 2));
    }
}
