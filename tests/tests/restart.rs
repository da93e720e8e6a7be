//! Agent restarts lose nothing: under continuous TCP and UDP load (new
//! connections and datagrams all the time, plus long-lived connections
//! carrying data), the agents are killed with SIGKILL and restarted, then
//! upgraded to another binary; not one request fails, and afterwards the
//! maps hold exactly what they held before: same entries, same ids, no
//! duplicates, nothing leaked.
//!
//! The agents read the test API server, the production path: a restarted
//! agent adopts the pinned maps and writes nothing until its watchers have
//! listed everything.
//!
//! Needs root. Run with `cargo xtask test` (builds the agent first).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nodeport_tests::cluster::node_addr;
use nodeport_tests::objects::{Ep, ServiceBuilder, ToYaml as _, to_yaml};
use nodeport_tests::{Agent, AgentOptions, ApiServer, Cluster, ClusterConfig};

const POD_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;
const NODE_PORT: u16 = 31090;
const ECHO_NODE_PORT: u16 = 31091;
/// Long-lived connections per node.
const LONG_LIVED: usize = 3;

/// What the maps of one node hold, as `inspect` shows it, plus the number
/// of slot entries (`bpftool`), which `inspect` does not list.
#[derive(Debug, PartialEq, Eq)]
struct MapSnapshot {
    /// frontend → (service id, backend count, backends by slot)
    frontends: BTreeMap<String, (u64, u64, Vec<String>)>,
    /// backend id → address
    backends: BTreeMap<u64, String>,
    slots: usize,
}

fn inspect(c: &Cluster, node: usize, what: &str) -> serde_json::Value {
    let bpffs = c.node_bpffs(node);
    let out = c.agent_cli(
        node,
        &[
            "inspect",
            what,
            "--bpffs",
            &bpffs.to_string_lossy(),
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "inspect {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("inspect {what} JSON: {e}"))
}

fn slot_entries(c: &Cluster, node: usize) -> usize {
    let pin = c.node_bpffs(node).join("backend_slots");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .unwrap_or_else(|e| panic!("bpftool: {e}"));
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array().expect("an array of entries").len()
}

fn snapshot(c: &Cluster, node: usize) -> MapSnapshot {
    let frontends = inspect(c, node, "services")
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let backends: Vec<String> = r["backends"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            (
                r["frontend"].as_str().expect("frontend").to_owned(),
                (
                    r["service_id"].as_u64().expect("id"),
                    r["backend_count"].as_u64().expect("count"),
                    backends,
                ),
            )
        })
        .collect();
    let backends = inspect(c, node, "backends")
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["backend_id"].as_u64().expect("id"),
                r["address"].as_str().expect("address").to_owned(),
            )
        })
        .collect();
    MapSnapshot {
        frontends,
        backends,
        slots: slot_entries(c, node),
    }
}

/// The maps hold exactly the two Services: three NodePort frontends of four
/// backends each, eight distinct backends, twelve slots.
fn check_exact(s: &MapSnapshot, node: usize) {
    let want: BTreeSet<String> = [
        format!("*:{NODE_PORT}/TCP"),
        format!("*:{NODE_PORT}/UDP"),
        format!("*:{ECHO_NODE_PORT}/TCP"),
    ]
    .into();
    assert_eq!(
        s.frontends.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "node{node}: {s:#?}"
    );
    for (fe, (_, count, backends)) in &s.frontends {
        assert_eq!(*count, 4, "node{node} {fe}: {s:#?}");
        let distinct: BTreeSet<&String> = backends.iter().collect();
        assert_eq!(
            distinct.len(),
            4,
            "node{node} {fe}: every slot resolves, no repeats"
        );
    }
    let addrs: BTreeSet<&String> = s.backends.values().collect();
    assert_eq!(s.backends.len(), 8, "node{node}: no stray backends: {s:#?}");
    assert_eq!(addrs.len(), 8, "node{node}: no duplicate backends: {s:#?}");
    assert_eq!(s.slots, 12, "node{node}: no leaked slots: {s:#?}");
}

/// Counts of the load generator.
#[derive(Default)]
struct Load {
    tcp_ok: AtomicUsize,
    udp_ok: AtomicUsize,
    echo_rounds: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.lock().expect("lock").push(what);
    }
}

/// Opens a connection to `addr` from the client namespace and reads the
/// echo server's greeting.
fn open_long_lived(c: &Cluster, addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = c
        .client_netns()
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .unwrap_or_else(|e| panic!("greeting from {addr}: {e}"));
    assert!(!greeting.is_empty(), "greeting from {addr}");
    (stream, reader)
}

fn start_agents<'c>(c: &'c Cluster, options: &AgentOptions) -> (Vec<Agent<'c>>, Instant) {
    let agents: Vec<Agent<'c>> = (1..=2).map(|i| c.start_agent_with(i, options)).collect();
    for a in &agents {
        a.wait_ready();
    }
    (agents, Instant::now())
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn kill_restart_and_upgrade_under_load_lose_nothing() {
    let c = Cluster::with_config(ClusterConfig {
        nodes: 2,
        pods_per_node: 2,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![POD_PORT],
        pod_tcp_echo_ports: vec![ECHO_PORT],
        ..ClusterConfig::default()
    });
    let api = ApiServer::for_cluster(&c);
    let all = [(1, 1, true), (1, 2, true), (2, 1, true), (2, 2, true)];
    let svc = ServiceBuilder::node_port("svc").ports(&[
        ("tcp", "TCP", 80, POD_PORT, NODE_PORT),
        ("udp", "UDP", 80, POD_PORT, NODE_PORT),
    ]);
    api.apply_yaml(&to_yaml(&[&svc, &svc.slice("x1").pods(&all)]));
    let echo = ServiceBuilder::node_port("echo").tcp("tcp", 9000, ECHO_PORT, ECHO_NODE_PORT);
    api.apply_yaml(&to_yaml(&[&echo, &echo.slice("x1").pods(&all)]));
    let kube = AgentOptions::kube(api.kubeconfig());
    let (agents, _) = start_agents(&c, &kube);
    let before: Vec<MapSnapshot> = (1..=2).map(|n| snapshot(&c, n)).collect();
    for (i, s) in before.iter().enumerate() {
        check_exact(s, i + 1);
    }

    let load = Load::default();
    let stop = AtomicBool::new(false);
    let mut long_lived = Vec::new();
    for node in [1, 2] {
        for _ in 0..LONG_LIVED {
            long_lived.push((
                node,
                open_long_lived(&c, SocketAddr::new(node_addr(node).into(), ECHO_NODE_PORT)),
            ));
        }
    }

    let (restart_took, upgrade_took, agents) = std::thread::scope(|s| {
        // New TCP connections and UDP datagrams, alternating nodes.
        for proto in ["tcp", "udp"] {
            let (c, load, stop) = (&c, &load, &stop);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let node = 1 + i % 2;
                    i += 1;
                    let r = if proto == "tcp" {
                        c.client().tcp_request(node_addr(node), NODE_PORT)
                    } else {
                        c.client().udp_request(node_addr(node), NODE_PORT, None)
                    };
                    match r {
                        Ok(_) if proto == "tcp" => load.tcp_ok.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => load.udp_ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            load.fail(format!("{proto} via node{node}: {e}"));
                            0
                        }
                    };
                    // Paced: each request is a new flow, and SNAT ports of
                    // remote backends (61000-65535 per backend) are freed
                    // only when a flow closes (TCP) or ages out of the LRU
                    // (UDP); an unpaced loop would exhaust them on its own.
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        // Established connections carry a message every 20 ms.
        for (node, (mut stream, mut reader)) in long_lived {
            let (load, stop) = (&load, &stop);
            s.spawn(move || {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let msg = format!("round {round} via node{node}\n");
                    let mut back = vec![0u8; msg.len()];
                    let r = stream
                        .write_all(msg.as_bytes())
                        .and_then(|()| reader.read_exact(&mut back));
                    match r {
                        Ok(()) if back == msg.as_bytes() => {
                            load.echo_rounds.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => load.fail(format!("echo via node{node}: garbled")),
                        Err(e) => {
                            load.fail(format!("established connection via node{node}: {e}"));
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }

        std::thread::sleep(Duration::from_secs(1));
        // A crash: SIGKILL, then a new agent on the same pinned state.
        let killed = Instant::now();
        for a in agents {
            a.kill();
        }
        std::thread::sleep(Duration::from_millis(300));
        let (agents, ready) = start_agents(&c, &kube);
        let restart_took = ready - killed;
        std::thread::sleep(Duration::from_secs(1));

        // An upgrade: another binary takes over after a graceful stop.
        let upgraded = c.temp_dir().join("nodeport-agent-upgraded");
        std::fs::copy(nodeport_tests::agent::agent_binary(), &upgraded).expect("copy the agent");
        let stopped = Instant::now();
        for a in agents {
            a.stop();
        }
        let (agents, ready) = start_agents(&c, &kube.clone().binary(&upgraded));
        let upgrade_took = ready - stopped;
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (restart_took, upgrade_took, agents)
    });

    let failures = load.failures.lock().expect("lock");
    let (tcp, udp, echo) = (
        load.tcp_ok.load(Ordering::Relaxed),
        load.udp_ok.load(Ordering::Relaxed),
        load.echo_rounds.load(Ordering::Relaxed),
    );
    eprintln!(
        "kill -9 to ready: {restart_took:?}; stop to upgraded ready: {upgrade_took:?}; \
         {tcp} TCP connections, {udp} UDP requests, {echo} echo rounds on {} established connections, {} failed",
        2 * LONG_LIVED,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {failures:#?}\ndatapath counters:\n{}",
        [1, 2]
            .map(|n| format!("node{n}: {}", inspect(&c, n, "stats")))
            .join("\n")
    );
    // Counts over the whole run, not rates: the load ran, and every
    // established connection carried data (each round trips or fails above).
    assert!(tcp > 0 && udp > 0, "the load ran: {tcp} TCP, {udp} UDP");
    assert!(
        echo >= 2 * LONG_LIVED,
        "established connections carried data: {echo} rounds"
    );

    // The maps are exactly as before: same entries, same ids.
    for node in [1, 2] {
        let after = snapshot(&c, node);
        check_exact(&after, node);
        assert_eq!(
            after,
            before[node - 1],
            "node{node}: maps unchanged by the restarts"
        );
    }
    for a in &agents {
        assert!(a.log().contains("datapath ready"));
        assert!(
            !a.log().contains("datapath updated"),
            "an adopting agent writes nothing when nothing changed:\n{}",
            a.log()
        );
    }
}

/// An agent restarted while the API server is away has nothing to sync
/// from: it adopts the datapath, writes nothing and reports unhealthy,
/// while the datapath keeps serving; once the API server returns it syncs.
#[test]
fn restart_while_the_api_server_is_away_keeps_serving() {
    let c = Cluster::with_config(ClusterConfig {
        nodes: 1,
        pods_per_node: 2,
        pod_tcp_ports: vec![POD_PORT],
        pod_udp_ports: vec![POD_PORT],
        pod_tcp_echo_ports: vec![],
        ..ClusterConfig::default()
    });
    let api = ApiServer::for_cluster(&c);
    let svc = ServiceBuilder::node_port("svc").ports(&[
        ("tcp", "TCP", 80, POD_PORT, NODE_PORT),
        ("udp", "UDP", 80, POD_PORT, NODE_PORT),
    ]);
    let slice = |eps: &[Ep]| svc.slice("x1").pods(eps);
    api.apply_yaml(&to_yaml(&[&svc, &slice(&[(1, 1, true), (1, 2, true)])]));
    let kube = AgentOptions::kube(api.kubeconfig());
    let agent = c.start_agent_with(1, &kube);
    agent.wait_ready();
    let before = snapshot(&c, 1);

    api.stop();
    agent.kill();
    let agent = c.start_agent_with(1, &kube);
    agent.wait_for_log("waiting for the initial lists", Duration::from_secs(10));
    let served = |c: &Cluster| {
        for _ in 0..20 {
            c.client()
                .tcp_request(node_addr(1), NODE_PORT)
                .expect("TCP while the agent waits");
            c.client()
                .udp_request(node_addr(1), NODE_PORT, None)
                .expect("UDP while the agent waits");
        }
    };
    served(&c);
    let healthz = nodeport_tests::http::get(agent.netns(), agent.healthz_addr(), "/healthz")
        .expect("healthz answers");
    assert_eq!(healthz.status, 503, "not synced: {healthz:?}");
    assert_eq!(
        snapshot(&c, 1),
        before,
        "nothing written without a complete state"
    );

    // Meanwhile one endpoint went away; the API server returns.
    api.apply_yaml(&slice(&[(1, 2, true)]).yaml());
    api.resume();
    agent.wait_ready();
    served(&c);
    let after = snapshot(&c, 1);
    assert_eq!(after.backends.len(), 1, "{after:#?}");
    assert_eq!(after.slots, 2, "{after:#?}");
}
