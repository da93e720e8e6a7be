//! Makes sure the machine has what building and testing nodeport needs
//! (DESIGN.md section 8), installing what is missing and saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{run, which};

/// Debian packages of LLVM 22 that bpf-linker links against.
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Tools the tests, the demo and the benchmarks run, by Debian package.
const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    // The benchmarks: kube-proxy's rules in iptables and nftables mode, and
    // TCP throughput.
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("iperf3", "iperf3"),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn apt_install(packages: &[&str]) -> Result<()> {
    static UPDATED: std::sync::Once = std::sync::Once::new();
    if !is_root() {
        bail!(
            "missing Debian packages {}: install them as root (apt-get install {}) or run this command as root",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!(
        "toolchain: installing Debian packages: {}",
        packages.join(" ")
    );
    let mut update_result = Ok(());
    UPDATED.call_once(|| {
        update_result = run(Command::new("apt-get").args(["update", "-q"]));
    });
    update_result.context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {}", packages.join(" ")))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    home.join("bin").join(name)
}

/// The eBPF build's needs: nightly with rust-src, bpf-linker against LLVM 22.
pub fn ensure_ebpf() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .context("running rustup: is rustup installed?")?;
    if !nightly.status.success() {
        bail!(
            "the nightly toolchain is missing; install it with `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&nightly.stderr).trim()
        );
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup component list")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        eprintln!("toolchain: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if which("bpf-linker").is_none() && !cargo_bin("bpf-linker").exists() {
        let missing: Vec<&str> = LLVM_PACKAGES
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if !missing.is_empty() {
            apt_install(&missing)?;
        }
        eprintln!("toolchain: building bpf-linker 0.13 against LLVM 22 (takes a few minutes)");
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))
        .context("cargo install bpf-linker")?;
    }
    Ok(())
}

/// Runtime tools for tests, demo and benchmarks.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOL_PACKAGES
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

/// `PATH` with cargo's bin directory, so a freshly installed bpf-linker is found.
pub fn path_with_cargo_bin() -> String {
    let bin = cargo_bin("");
    let path = std::env::var("PATH").unwrap_or_default();
    if Path::new(&bin).exists() {
        format!("{}:{path}", bin.display())
    } else {
        path
    }
}
