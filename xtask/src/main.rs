//! Project automation: `cargo xtask <command>`.

mod bench;
mod build_ebpf;
mod demo;
mod ebpf_command;
mod test;
mod toolchain;
mod util;

use std::path::PathBuf;

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
    /// Run the whole test suite (as root): unit, datapath and end-to-end tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring up a namespace test cluster serving the example manifests and
    /// show traffic flowing through the `NodePort` (as root).
    Demo {
        /// Manifests directory to serve (default: examples/nginx-service).
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
    /// Measure the datapath, end-to-end traffic and the control plane beside
    /// kube-proxy's iptables and nftables rules (as root); writes BENCHMARKS.md.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::BuildEbpf => build_ebpf::build().map(|_| ()),
        Cmd::Test { args } => test::run(&args),
        Cmd::Demo { manifests } => demo::run(&manifests.unwrap_or_else(demo::default_manifests)),
        Cmd::Bench(args) => bench::run(&args),
    }
}
