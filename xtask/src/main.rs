//! Project automation: `cargo xtask <command>`.

mod build_ebpf;
mod ebpf_command;
mod toolchain;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "nodeport project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (installs the toolchain it needs when missing).
    BuildEbpf,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::BuildEbpf => build_ebpf::build().map(|_| ()),
    }
}
