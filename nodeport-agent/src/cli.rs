//! The command line (DESIGN.md section 5). Flag names and defaults are a
//! contract: tests and users depend on them.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::loader::XdpAttachMode;

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/nodeport";

#[derive(Parser, Debug)]
#[command(
    name = "nodeport-agent",
    version,
    about = "eBPF/XDP NodePort datapath agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only obscure the arguments"
)]
pub enum Command {
    /// Load and attach the datapath and keep its maps in sync with the cluster.
    Run(RunArgs),
    /// Print what the pinned maps hold.
    Inspect(InspectArgs),
    /// What the datapath would do with one packet from outside, from the
    /// live maps (nothing is sent): frontend, flow state, backend, NAT,
    /// verdict and counter.
    Explain(ExplainArgs),
    /// Detach the programs and remove every pinned map and link.
    Cleanup {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Where the node's sysctls are (as for `run`).
        #[arg(long, default_value = crate::sysctl::DEFAULT_DIR, value_name = "DIR")]
        sysctl_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// This node's name, matched against endpoints' nodeName.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Read Services, `EndpointSlices` and Nodes from YAML files in DIR
    /// (watched) instead of the Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes API source (else KUBECONFIG or in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Devices to attach to; default: the device(s) of the default route.
    #[arg(long, value_delimiter = ',', value_name = "IF[,IF...]")]
    pub interfaces: Vec<String>,
    /// Node addresses that serve `NodePorts`: CIDRs or `primary`; default all.
    #[arg(long, value_name = "CIDR[,CIDR...]|primary")]
    pub nodeport_addresses: Option<String>,
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
    pub xdp_mode: XdpAttachMode,
    /// bpffs directory every map and link is pinned under.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// cgroup v2 directory whose processes (the node's and its pods') get
    /// socket-level load balancing: their connections to a NodePort on this
    /// node or a ClusterIP go straight to a backend (this is how hairpin
    /// traffic is served). Default: the cgroup v2 root; `none` disables it.
    #[arg(long, value_name = "DIR|none")]
    pub cgroup_root: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// The `NodePort` range, as the API server's --service-node-port-range.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: RangeInclusive<u16>,
    /// Source ports for flows SNATed to backends on other nodes, per node
    /// address, backend and protocol: one or two ranges. Default: every
    /// port from 1024 up outside the NodePort range and the host's
    /// ephemeral range (net.ipv4.ip_local_port_range).
    #[arg(long, value_name = "A-B[,C-D]")]
    pub snat_port_range: Option<String>,
    /// Seconds a closed flow's SNAT port rests before another client may
    /// have it (the backend keeps TIME_WAIT for 60 s).
    #[arg(long, default_value_t = nodeport_common::config::DEFAULT_SNAT_REST_S)]
    pub snat_port_rest_seconds: u32,
    /// Refuse (EADDRINUSE) a bind of an allocated nodePort on a served node
    /// address or the wildcard address by processes of the node's network
    /// namespace, as kube-proxy's held ports do, and keep the NodePort range
    /// out of the host's ephemeral ports (net.ipv4.ip_local_reserved_ports).
    /// Needs socket load balancing's cgroup (--cgroup-root).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub node_port_bind_protection: bool,
    /// Count packets, bytes, new flows and drops per Service port and per
    /// endpoint in the datapath and export them as metrics
    /// (nodeport_service_*, nodeport_backend_*); false: the datapath keeps
    /// no such counters.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub service_counters: bool,
    /// Where the node's sysctls are: a container without a writable
    /// /proc/sys mounts the host's /proc/sys/net elsewhere, e.g. at
    /// /host/proc/sys/net with --sysctl-dir=/host/proc/sys.
    #[arg(long, default_value = crate::sysctl::DEFAULT_DIR, value_name = "DIR")]
    pub sysctl_dir: PathBuf,
    /// Capacity of a map, e.g. conntrack=1048576 (repeatable or
    /// comma-separated): frontends, backend_slots, backends, conntrack,
    /// rev_nat, affinity, fragments. A map already pinned keeps its size
    /// until `nodeport-agent cleanup`.
    #[arg(long, value_name = "MAP=ENTRIES", value_delimiter = ',', value_parser = crate::loader::parse_map_size)]
    pub map_size: Vec<(&'static str, u32)>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[arg(value_enum)]
    pub what: InspectWhat,
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// `tcp` or `udp`.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// The packet's source (the client).
    #[arg(long, value_name = "ADDR:PORT")]
    pub from: std::net::SocketAddrV4,
    /// The packet's destination (a node address's NodePort, an external
    /// or cluster IP and port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: std::net::SocketAddrV4,
    /// A TCP SYN: a new connection even on a tuple conntrack has as closing.
    #[arg(long)]
    pub syn: bool,
    /// The device the packet arrives on (its address is the SNAT source of
    /// external frontends).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InspectWhat {
    Services,
    Backends,
    Conntrack,
    Stats,
    /// How full every map is (entries against max_entries).
    Maps,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// A port range that does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("`{0}` is not a port range A-B")]
    Shape(String),
    #[error("`{value}` is not a port")]
    Port {
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("`{0}` is not a port range: need 1 <= A <= B <= 65535")]
    Order(String),
}

/// Parses `A-B` with `1 <= A <= B <= 65535`.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, PortRangeError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| PortRangeError::Shape(s.to_owned()))?;
    let port = |v: &str| {
        v.trim()
            .parse::<u16>()
            .map_err(|source| PortRangeError::Port {
                value: v.to_owned(),
                source,
            })
    };
    let (a, b) = (port(a)?, port(b)?);
    if a == 0 || a > b {
        return Err(PortRangeError::Order(s.to_owned()));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses_and_rejects() {
        assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("30000").is_err());
        assert!(parse_port_range("1-70000").is_err());
    }

    #[test]
    fn run_defaults_follow_the_contract() {
        let cli =
            Cli::try_parse_from(["nodeport-agent", "run", "--manifests", "/m"]).expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(args.healthz_bind_address.to_string(), "0.0.0.0:10256");
        assert_eq!(args.metrics_bind_address.to_string(), "127.0.0.1:10249");
        assert_eq!(args.service_node_port_range, 30000..=32767);
        assert_eq!(args.xdp_mode, XdpAttachMode::Auto);
    }
}
