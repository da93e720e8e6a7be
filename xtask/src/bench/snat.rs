//! The SNAT path: traffic from the client to `node1:nodePort` of Service
//! ports whose only endpoint is the pod on node 2, so node 1 rewrites the
//! source of every flow (nodeport's SNAT to a port of its pool, kube-proxy's
//! MASQUERADE); "direct" reaches the same pod at its own address through
//! node 1 without a Service.
//!
//! Three tests per datapath, in this order, each on a server port of its
//! own (so each meets only the TIME_WAIT sockets it left itself, and on
//! nodeport each draws on a pool of its own: pools are per node address,
//! backend and protocol):
//! - **paced** — the server closes first (TIME_WAIT in the pod), requests
//!   at a fixed rate below what a pool of ports resting 60 s after close
//!   sustains; SYNs the pod's TIME_WAIT sockets refuse are counted.
//! - **unpaced** — the same as fast as the client threads go.
//! - **concurrent** — connections opened one after the other and all kept
//!   open until the first fails (or a maximum): how many one remote backend
//!   holds at once, and the datapath's drops meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodeport_tests::{Cluster, Veths};

use super::counters;
use super::e2e::Mode;
use super::hold::{HoldClients, HoldServer};
use super::stats;
use super::traffic::{self, Close};

/// The datapath counter of SNAT port exhaustion.
pub const SNAT_EXHAUSTED: &str = "drop_snat_exhausted";
/// The datapath counter of SNAT ports taken from closed flows before their
/// rest ended.
pub const SNAT_EARLY_REUSE: &str = "snat_port_early_reuse";

/// Client source ports of the paced and unpaced tests (20,000): more than
/// the paced test uses, so none recurs there, and fewer than the agent's
/// default SNAT pool (33,512 ports), so every client tuple can keep a port
/// of its own.
const CLOSE_CLIENT_PORTS: &str = "20000 39999";
/// Client source ports of the concurrent test (51,000): more than it
/// opens at most.
const HOLD_CLIENT_PORTS: &str = "10000 60999";
/// A connection of the concurrent test fails when its handshake takes
/// longer than this (one SYN retransmission, after 1 s, fits).
const HOLD_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long held connections get to acknowledge their byte.
const HOLD_ACK_WAIT: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The datapaths measured (of the run's modes).
    pub modes: Vec<Mode>,
    /// Concurrent test: connections opened at most.
    pub max_flows: usize,
    /// Concurrent test: the target the figure is read against; the drop
    /// counter is read when this many are held.
    pub target_flows: usize,
    /// Time allowed for opening.
    pub open_budget: Duration,
    /// Paced test: new connections per second, workers, windows.
    pub paced_rate: f64,
    pub paced_workers: usize,
    pub paced_window: Duration,
    pub paced_windows: usize,
}

/// Where the tests send their traffic.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub paced: SocketAddr,
    pub unpaced: SocketAddr,
    pub hold: SocketAddr,
}

/// The rate tests' figures (server closes first, remote backend).
#[derive(Clone, Debug)]
pub struct ServerClose {
    /// Completed connections per second: median over the windows.
    pub per_s: f64,
    /// Connections completed and failed over the whole test.
    pub ok: u64,
    pub errors: u64,
    /// SYNs the pods' TIME_WAIT sockets refused during the test
    /// (`TcpExtPAWSTimewait`).
    pub paws_rejects: u64,
    /// Request latency (connect to the server's close), completed requests.
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// nodeport only: SNAT ports taken before their rest ended.
    pub early_reuse: Option<u64>,
}

/// The concurrent test's figures.
#[derive(Clone, Debug)]
pub struct Concurrent {
    /// Connections tried at most.
    pub max: usize,
    /// The target the figure is read against.
    pub target: usize,
    /// Connections open at once when the first failed (or the maximum
    /// was reached).
    pub held: usize,
    /// Why the first failure failed; `None`: the maximum was reached.
    pub first_failure: Option<String>,
    /// Of the held connections, those still established with a byte sent
    /// at the end acknowledged by the pod.
    pub acknowledged: usize,
    /// Connections the pod's kernel established and queued for its server.
    pub accepted: u64,
    /// The drop counter read (nodeport: [`SNAT_EXHAUSTED`]; kube-proxy:
    /// conntrack's `insert_failed` + `drop` + `early_drop` of node 1);
    /// empty where there is none.
    pub drop_counter: &'static str,
    /// Its increase until `target` connections were held (`None`: never
    /// held that many, or no counter) and over the whole test.
    pub drops_at_target: Option<u64>,
    pub drops: Option<u64>,
    /// Seconds spent opening.
    pub open_s: f64,
}

/// One datapath's SNAT-path figures.
#[derive(Clone, Debug)]
pub struct SnatRow {
    pub veths: Veths,
    pub mode: Mode,
    pub services: usize,
    pub paced: ServerClose,
    pub unpaced: ServerClose,
    pub concurrent: Concurrent,
}

/// The drop counter of `mode` on node 1.
fn drop_counter(mode: Mode) -> &'static str {
    match mode {
        Mode::Nodeport => SNAT_EXHAUSTED,
        Mode::Iptables | Mode::Nftables => "conntrack insert_failed + drop + early_drop",
        Mode::Direct => "",
    }
}

fn read_drops(cluster: &Cluster, mode: Mode) -> Option<u64> {
    match mode {
        Mode::Nodeport => counters::datapath_counter(cluster, 1, SNAT_EXHAUSTED),
        Mode::Iptables | Mode::Nftables => counters::conntrack_drops(cluster.node(1).netns()),
        Mode::Direct => None,
    }
}

fn early_reuse(cluster: &Cluster, mode: Mode) -> Option<u64> {
    (mode == Mode::Nodeport)
        .then(|| counters::datapath_counter(cluster, 1, SNAT_EARLY_REUSE))
        .flatten()
}

fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

fn latency(lat: &[Duration]) -> (f64, f64) {
    let us = stats::micros(lat);
    (
        stats::median(&us).unwrap_or(f64::NAN),
        stats::quantile(&us, 0.99).unwrap_or(f64::NAN),
    )
}

/// The paced test.
fn paced(cluster: &Cluster, mode: Mode, to: SocketAddr, config: &Config) -> ServerClose {
    let client = cluster.client_netns();
    client.set_sysctl("net.ipv4.ip_local_port_range", CLOSE_CLIENT_PORTS);
    let paws = counters::pods_paws(cluster);
    let reuse = early_reuse(cluster, mode);
    let r = client.run(|| {
        traffic::paced_requests(
            &[to],
            Close::ServerFirst,
            config.paced_rate,
            config.paced_workers,
            config.paced_window,
            config.paced_windows,
        )
    });
    let (p50, p99) = latency(&r.latencies);
    ServerClose {
        per_s: r.median(),
        ok: r.ok,
        errors: r.errors,
        paws_rejects: counters::pods_paws(cluster).saturating_sub(paws),
        latency_p50_us: p50,
        latency_p99_us: p99,
        early_reuse: delta(reuse, early_reuse(cluster, mode)),
    }
}

/// The unpaced test: as the end-to-end run's "server closes first" column,
/// to the remote backend only.
fn unpaced(cluster: &Cluster, mode: Mode, to: SocketAddr, e2e: &super::e2e::Config) -> ServerClose {
    let client = cluster.client_netns();
    client.set_sysctl("net.ipv4.ip_local_port_range", CLOSE_CLIENT_PORTS);
    let paws = counters::pods_paws(cluster);
    let reuse = early_reuse(cluster, mode);
    let r = client.run(|| {
        traffic::connection_rate(
            &[to],
            Close::ServerFirst,
            e2e.conn_threads,
            e2e.warmup,
            e2e.window,
            e2e.windows,
        )
    });
    ServerClose {
        per_s: r.median(),
        ok: r.ok,
        errors: r.errors,
        paws_rejects: counters::pods_paws(cluster).saturating_sub(paws),
        latency_p50_us: f64::NAN,
        latency_p99_us: f64::NAN,
        early_reuse: delta(reuse, early_reuse(cluster, mode)),
    }
}

/// The concurrent test.
fn concurrent(
    cluster: &Cluster,
    server: &HoldServer,
    mode: Mode,
    to: SocketAddr,
    config: &Config,
) -> Concurrent {
    let client = cluster.client_netns();
    client.set_sysctl("net.ipv4.ip_local_port_range", HOLD_CLIENT_PORTS);
    server.release();
    let queued_before = server.queued();
    let before = read_drops(cluster, mode);
    let deadline = Instant::now() + config.open_budget;
    let mut held = HoldClients::new(client, to);
    let target = config.target_flows.min(config.max_flows);
    let opened = held.open_more(target, HOLD_CONNECT_TIMEOUT, deadline);
    let at_target = (held.held() >= target)
        .then(|| delta(before, read_drops(cluster, mode)))
        .flatten();
    let opened =
        opened.and_then(|()| held.open_more(config.max_flows, HOLD_CONNECT_TIMEOUT, deadline));
    if let Err(e) = &opened {
        held.first_failure
            .get_or_insert_with(|| format!("the client failed: {e:#}"));
    }
    let acknowledged = held.acknowledged(HOLD_ACK_WAIT).unwrap_or_else(|e| {
        eprintln!("bench:   acknowledgements not read: {e:#}");
        0
    });
    let drops = delta(before, read_drops(cluster, mode));
    let out = Concurrent {
        max: config.max_flows,
        target,
        held: held.held(),
        first_failure: held.first_failure.clone(),
        acknowledged,
        accepted: server.queued().saturating_sub(queued_before),
        drop_counter: drop_counter(mode),
        drops_at_target: at_target,
        drops,
        open_s: held.opening.as_secs_f64(),
    };
    if let Err(e) = held.reset_all() {
        eprintln!("bench:   resetting the held connections: {e:#}");
    }
    drop(held);
    // Let the resets reach the pod before its ends are closed.
    std::thread::sleep(Duration::from_millis(200));
    server.release();
    out
}

/// What the tests of one cluster share.
pub struct Bench<'a> {
    pub cluster: &'a Cluster,
    pub hold: &'a HoldServer,
    pub veths: Veths,
    pub services: usize,
    pub config: &'a Config,
    /// The unpaced test takes its threads, warm-up and windows from here.
    pub e2e: &'a super::e2e::Config,
}

/// The three tests for one datapath, whose Services (or, for "direct",
/// routes) are in place.
pub fn measure(b: &Bench, mode: Mode, targets: Targets) -> SnatRow {
    let (cluster, config) = (b.cluster, b.config);
    eprintln!(
        "bench:   {}: remote backend, server closing first, paced at {:.0}/s",
        mode.label(),
        config.paced_rate
    );
    let paced = paced(cluster, mode, targets.paced, config);
    eprintln!(
        "bench:   {}: remote backend, server closing first, unpaced",
        mode.label()
    );
    let unpaced = unpaced(cluster, mode, targets.unpaced, b.e2e);
    eprintln!(
        "bench:   {}: remote backend, up to {} connections at once",
        mode.label(),
        config.max_flows
    );
    let concurrent = concurrent(cluster, b.hold, mode, targets.hold, config);
    eprintln!(
        "bench:   {}: paced {:.0} conn/s ({} ok, {} failed, {} SYNs refused by TIME_WAIT); unpaced {:.0} conn/s ({} refused); {} held at once ({} acknowledged at the end; {}), drops {:?}",
        mode.label(),
        paced.per_s,
        paced.ok,
        paced.errors,
        paced.paws_rejects,
        unpaced.per_s,
        unpaced.paws_rejects,
        concurrent.held,
        concurrent.acknowledged,
        concurrent
            .first_failure
            .as_deref()
            .unwrap_or("no failure up to the maximum"),
        concurrent.drops
    );
    SnatRow {
        veths: b.veths,
        mode,
        services: b.services,
        paced,
        unpaced,
        concurrent,
    }
}
