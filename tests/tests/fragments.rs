//! End-to-end tests of what arrives in pieces: UDP datagrams larger than
//! the path's MTU (fragmented by the client's stack, and the pod's answer
//! fragmented by the pod's) through a NodePort to a local and to a remote
//! backend. Real traffic on the namespace test cluster, kernel defaults on
//! every veth.
//!
//! Needs root. Run with `cargo xtask test`.

use std::time::Duration;

use nodeport_tests::cluster::{CLIENT_ADDR, node_addr, pod_name};
use nodeport_tests::objects::{ServiceBuilder, to_yaml};
use nodeport_tests::{Answer, Cluster, ClusterConfig, Veths, eventually};

const POD_PORT: u16 = 8080;
const LOCAL_NODE_PORT: u16 = 31_700;
const REMOTE_NODE_PORT: u16 = 31_701;
/// Larger than two 1,500-byte frames: three fragments each way.
const DATAGRAM: usize = 3_000;

fn cluster() -> Cluster {
    Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 1,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![POD_PORT],
        veths: Veths::KernelDefaults,
        ..ClusterConfig::default()
    })
}

/// Through node 1: a Service whose one endpoint is on node 1 (local) and
/// one whose endpoint is on node 2 (remote, SNAT). Each answers fragmented
/// datagrams both ways; the datapath's fragment counters show the
/// fragments were translated by it, not left to the stack.
#[test]
fn fragmented_datagrams_are_served_by_local_and_remote_backends() {
    let c = cluster();
    let local = ServiceBuilder::new("default", "frag-local", "NodePort").udp(
        "udp",
        80,
        POD_PORT,
        LOCAL_NODE_PORT,
    );
    let remote = ServiceBuilder::new("default", "frag-remote", "NodePort").udp(
        "udp",
        80,
        POD_PORT,
        REMOTE_NODE_PORT,
    );
    c.manifests().write(
        "fragments.yaml",
        &to_yaml(&[
            &local,
            &local.slice("x1").pods(&[(1, 1, true)]),
            &remote,
            &remote.slice("x1").pods(&[(2, 1, true)]),
        ]),
    );
    let agent1 = c.start_agent(1, c.manifests().dir());
    let agent2 = c.start_agent(2, c.manifests().dir());
    agent1.wait_ready();
    agent2.wait_ready();
    let node = node_addr(1);
    let cases = [
        (
            LOCAL_NODE_PORT,
            pod_name(1, 1),
            CLIENT_ADDR,
            "local backend",
        ),
        (REMOTE_NODE_PORT, pod_name(2, 1), node, "remote backend"),
    ];
    for (port, pod, peer, what) in &cases {
        eventually(Duration::from_secs(5), || {
            c.client().udp_request(node, *port, None).ok()
        })
        .unwrap_or_else(|| panic!("the NodePort of the {what} answers a small datagram"));
        let before = agent1.metric("nodeport_datapath_packets_total{reason=\"fragment_followed\"}");
        for round in 0..5 {
            let a = Answer::expect(
                c.client().udp_echo(node, *port, DATAGRAM),
                &format!("{DATAGRAM}-byte datagram {round} to the {what}"),
            );
            assert_eq!(&a.server, pod, "the {what} answers: {a:?}");
            assert_eq!(
                a.peer.ip(),
                *peer,
                "the {what} sees the expected source: {a:?}"
            );
        }
        let after = agent1.metric("nodeport_datapath_packets_total{reason=\"fragment_followed\"}");
        assert!(
            after.unwrap_or(0.0) >= before.unwrap_or(0.0) + 10.0,
            "the {what}: the later fragments (two per datagram each way) followed their first \
             through the datapath: {before:?} → {after:?}"
        );
    }
}
