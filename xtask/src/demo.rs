//! `cargo xtask demo`: a two-node test cluster of network namespaces serving
//! the example manifests, requests through every `NodePort` on every node
//! address with the pod that answered, then what the maps hold (`inspect`
//! and `bpftool map dump pinned`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use nodeport_tests::{Answer, Cluster, ClusterConfig};

use crate::test::{Profile, prepare};
use crate::util;

/// Requests per node address and `NodePort`.
const REQUESTS: usize = 6;

pub fn run(manifests: &Path) -> Result<()> {
    prepare("demo", Profile::Debug)?;
    let files: Vec<_> = std::fs::read_dir(manifests)
        .with_context(|| format!("reading {}", manifests.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    if files.is_empty() {
        bail!("no *.yaml manifests in {}", manifests.display());
    }

    println!(
        "\n== Bringing up a test cluster: a client and two nodes on one L2 segment, one pod per node"
    );
    let cluster = Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: vec![80, 8080],
        pod_udp_ports: vec![80, 8080],
        ..ClusterConfig::default()
    });
    println!("   client  {}", cluster.client_addr());
    for node in cluster.nodes() {
        let pods: Vec<String> = node
            .pods()
            .iter()
            .map(|p| format!("{} {}", p.name, p.addr))
            .collect();
        println!(
            "   {}   {}   pods: {}",
            node.name,
            node.addr,
            pods.join(", ")
        );
    }
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        cluster.manifests().write(&name, &text);
        println!("   manifest {}", f.display());
    }

    println!("\n== Starting one nodeport-agent per node (as a DaemonSet would)");
    let agents = cluster.start_all_agents(cluster.manifests().dir());
    for a in &agents {
        a.wait_ready();
    }
    println!("   agents ready");

    let bpffs = cluster.node_bpffs(1);
    let json = cluster.agent_cli(
        1,
        &[
            "inspect",
            "services",
            "-o",
            "json",
            "--bpffs",
            &bpffs.to_string_lossy(),
        ],
    );
    let services: serde_json::Value =
        serde_json::from_slice(&json.stdout).context("inspect -o json")?;
    let node_ports: Vec<(u16, String)> = services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["frontend"].as_str())
        .filter_map(|f| f.strip_prefix("*:"))
        .filter_map(|f| {
            let (port, proto) = f.split_once('/')?;
            Some((port.parse().ok()?, proto.to_string()))
        })
        .collect();

    let answered_by = send_requests(&cluster, &node_ports);
    show_maps(&cluster);
    let pods = cluster.pods().count();
    drop(agents);
    drop(cluster);
    println!("\n== Done; the test cluster is torn down.");
    if answered_by.len() < pods {
        bail!(
            "only {} of {pods} pods answered: {answered_by:?}",
            answered_by.len()
        );
    }
    Ok(())
}

/// Requests through every NodePort on every node address; which pod answered how often.
fn send_requests(cluster: &Cluster, node_ports: &[(u16, String)]) -> BTreeMap<String, usize> {
    println!("\n== Requests from the client through every NodePort on every node address");
    let mut answered_by: BTreeMap<String, usize> = BTreeMap::new();
    for (port, proto) in node_ports {
        for node in cluster.nodes() {
            for _ in 0..REQUESTS {
                let r = if proto == "UDP" {
                    cluster.client().udp_request(node.addr, *port, None)
                } else {
                    cluster.client().tcp_request(node.addr, *port)
                };
                match r
                    .map_err(|e| e.to_string())
                    .and_then(|l| l.parse::<Answer>())
                {
                    Ok(a) => {
                        println!(
                            "   {proto} {}:{port} ({}) -> answered by {:<11} on port {:<5} (the pod saw the client as {})",
                            node.addr, node.name, a.server, a.local_port, a.peer
                        );
                        *answered_by.entry(a.server).or_default() += 1;
                    }
                    Err(e) => println!(
                        "   {proto} {}:{port} ({}) -> FAILED: {e}",
                        node.addr, node.name
                    ),
                }
            }
        }
    }
    println!("\n   answers per pod: {answered_by:?}");
    answered_by
}

/// What node 1's maps hold: `inspect` and `bpftool map dump pinned`.
fn show_maps(cluster: &Cluster) {
    let bpffs = cluster.node_bpffs(1);
    println!("\n== nodeport-agent inspect services (node1)");
    print!(
        "{}",
        String::from_utf8_lossy(
            &cluster
                .agent_cli(
                    1,
                    &["inspect", "services", "--bpffs", &bpffs.to_string_lossy()]
                )
                .stdout
        )
    );
    println!("\n== nodeport-agent inspect conntrack (node1)");
    print!(
        "{}",
        String::from_utf8_lossy(
            &cluster
                .agent_cli(
                    1,
                    &["inspect", "conntrack", "--bpffs", &bpffs.to_string_lossy()]
                )
                .stdout
        )
    );
    for map in ["frontends", "backends"] {
        let pin = bpffs.join(map);
        println!("\n== bpftool map dump pinned {}", pin.display());
        match Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&pin)
            .output()
        {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("   bpftool: {e}"),
        }
    }
}

/// The default manifests: the examples shipped with the project.
pub fn default_manifests() -> std::path::PathBuf {
    util::workspace_root()
        .join("examples")
        .join("nginx-service")
}
