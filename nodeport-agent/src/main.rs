//! `nodeport-agent`: the binary's edge. Errors become one readable report
//! here (anyhow); everything below uses typed errors.

use anyhow::Result;
use clap::Parser as _;
use nodeport_agent::{cli, inspect, loader, run};

#[global_allocator]
static ALLOCATOR: nodeport_agent::memory::Allocator = nodeport_agent::memory::Allocator;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube's client logs every failed connection attempt as an
                // error; the source reports an outage once, as a warning.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => Ok(run::run(&args)?),
        cli::Command::Inspect(args) => Ok(inspect::inspect(&args)?),
        cli::Command::Explain(args) => Ok(nodeport_agent::explain::run(&args)?),
        cli::Command::Cleanup { bpffs, sysctl_dir } => {
            // The ports this node's agent reserved from the host's
            // ephemeral use (SNAT pool, NodePort range) are released with
            // the datapath.
            if let Ok(maps) = nodeport_agent::maps::bpf::BpfMaps::open(&bpffs)
                && let Ok(config) = maps.config()
                && let Err(e) = nodeport_agent::snat_pool::release(
                    &nodeport_agent::sysctl::Sysctls::new(&sysctl_dir),
                    &config,
                )
            {
                eprintln!("releasing the reserved ports: {e}");
            }
            let removed = loader::cleanup(&bpffs)?;
            for p in &removed {
                println!("removed {}", p.display());
            }
            println!("cleaned up {} ({} pins)", bpffs.display(), removed.len());
            Ok(())
        }
    }
}
