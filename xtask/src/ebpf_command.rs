//! The one command line that builds the eBPF object, shared by
//! `cargo xtask build-ebpf` and the agent's build script (which includes
//! this file), so both produce and find the same artifact.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The eBPF target triple.
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Where the object lands for a given shared target directory.
pub fn object_path(target_dir: &Path) -> PathBuf {
    target_dir
        .join("ebpf")
        .join(BPF_TARGET)
        .join("release")
        .join("nodeport")
}

/// `rustup run nightly cargo build --release -Z build-std=core ...` for the
/// `nodeport-ebpf` crate under `workspace`, into `<target_dir>/ebpf`.
pub fn command(workspace: &Path, target_dir: &Path, path_env: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace.join("nodeport-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "-Z",
            "build-std=core",
        ])
        .args(["--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(target_dir.join("ebpf"))
        .env("PATH", path_env)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    // The outer cargo's settings must not leak into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(key);
    }
    cmd
}
