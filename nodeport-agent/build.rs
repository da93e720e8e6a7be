//! Builds the eBPF object (through the same command as `cargo xtask
//! build-ebpf`) and hands its path to the agent, which embeds it.

use std::path::{Path, PathBuf};

#[path = "../xtask/src/ebpf_command.rs"]
mod ebpf_command;

/// The shared target directory: the ancestor of `OUT_DIR` that cargo marked
/// with `CACHEDIR.TAG`.
fn target_dir(out_dir: &Path) -> Option<PathBuf> {
    out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

fn main() {
    println!("cargo:rerun-if-env-changed=NODEPORT_EBPF_OBJECT");
    if let Some(object) = std::env::var_os("NODEPORT_EBPF_OBJECT") {
        println!(
            "cargo:rustc-env=NODEPORT_EBPF_OBJECT={}",
            Path::new(&object).display()
        );
        return;
    }
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target = target_dir(&out_dir).unwrap_or_else(|| workspace.join("target"));
    for dir in [
        "nodeport-ebpf/src",
        "nodeport-ebpf/Cargo.toml",
        "nodeport-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let status = ebpf_command::command(&workspace, &target, &path).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the eBPF programs failed ({s}); run `cargo xtask build-ebpf`, which installs a missing toolchain (nightly + rust-src, bpf-linker with LLVM 22) and shows the full error"
        ),
        Err(e) => panic!(
            "cannot run rustup to build the eBPF programs ({e}); run `cargo xtask build-ebpf`"
        ),
    }
    let object = ebpf_command::object_path(&target);
    println!("cargo:rustc-env=NODEPORT_EBPF_OBJECT={}", object.display());
}
