//! `bench-control-plane`: the control-plane part of `cargo xtask bench`,
//! run as root by it. It links the agent's library (see `control_plane.rs`)
//! and prints its figures as one JSON document on stdout.
//!
//! ```text
//! bench-control-plane --sizes 1000,10000,50000 --endpoints 10 --work-dir DIR [--quick]
//! ```

mod control_plane;
mod heap;

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;
#[allow(
    dead_code,
    reason = "shared with xtask; this binary uses only part of the helpers"
)]
mod results;
#[allow(
    dead_code,
    reason = "shared with xtask; this binary uses only part of the helpers"
)]
mod stats;
#[allow(
    dead_code,
    reason = "shared with xtask; this binary uses only part of the definitions"
)]
mod synthetic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Endpoint changes timed at `n` Services: enough samples for a p99, fewer
/// where each change recomputes a large state.
fn changes(n: usize) -> usize {
    match n {
        0..=2_000 => 300,
        2_001..=20_000 => 150,
        _ => 60,
    }
}

fn quick_changes(_: usize) -> usize {
    20
}

fn main() -> Result<()> {
    let mut sizes = Vec::new();
    let mut endpoints = 10;
    let mut work_dir: Option<PathBuf> = None;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                let v = args.next().context("--sizes needs a value")?;
                for s in v.split(',') {
                    sizes.push(s.trim().parse().with_context(|| format!("size {s:?}"))?);
                }
            }
            "--endpoints" => {
                endpoints = args
                    .next()
                    .context("--endpoints needs a value")?
                    .parse()
                    .context("--endpoints")?;
            }
            "--work-dir" => {
                work_dir = Some(args.next().context("--work-dir needs a value")?.into());
            }
            "--quick" => quick = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if sizes.is_empty() {
        bail!("--sizes is required");
    }
    let work_dir = work_dir.context("--work-dir is required")?;
    let results = control_plane::run(&control_plane::Config {
        sizes,
        endpoints_per_service: endpoints,
        changes: if quick { quick_changes } else { changes },
        change_budget: Duration::from_secs(if quick { 5 } else { 45 }),
        apply_budget: Duration::from_secs(30),
        work_dir,
    })?;
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}
