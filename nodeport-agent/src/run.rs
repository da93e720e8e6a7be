//! `nodeport-agent run`: load and attach the datapath, then keep its maps
//! equal to what the cluster asks for. One loop: scan the source, recompute
//! the desired state when anything changed, and let the reconciler write the
//! difference. A failed write is logged and retried on the next tick; the
//! datapath keeps serving what it has meanwhile.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nodeport_common::{BACKEND_F_LOCAL, DEVICE_F_REDIRECT_TX, Device, DeviceKey};
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::config::{InterfaceAddr, NodePortAddresses};
use crate::desired::{self, Desired};
use crate::loader::{Datapath, MapSizes};
use crate::maps::{MapWriter as _, bpf::BpfMaps};
use crate::reconcile::Reconciler;
use crate::source::{Source, manifests::ManifestsSource};
use crate::store::ClusterState;
use crate::{devices, neighbours, node_addrs};

/// How often the source is scanned and the node's addresses re-read.
const TICK: Duration = Duration::from_millis(200);
/// How often the next hops of remote backends are refreshed.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);

fn node_name(args: &RunArgs) -> Result<String> {
    if let Some(n) = &args.node_name {
        return Ok(n.clone());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname for the default --node-name")?;
    Ok(name.trim().to_string())
}

fn interfaces(args: &RunArgs) -> Result<Vec<String>> {
    if !args.interfaces.is_empty() {
        return Ok(args.interfaces.clone());
    }
    let devs = node_addrs::default_route_devices().context("reading /proc/net/route")?;
    if devs.is_empty() {
        bail!("no default route to pick devices from: pass --interfaces");
    }
    Ok(devs)
}

/// The node's addresses, the primary one being the first address of the
/// first default-route device (or of the first attached device).
fn interface_addrs(primary_dev: &str) -> Result<Vec<InterfaceAddr>> {
    let all = node_addrs::local_ipv4().context("listing the node's addresses")?;
    let primary = all.iter().find(|a| a.iface == primary_dev).map(|a| a.addr);
    Ok(all
        .iter()
        .map(|a| InterfaceAddr {
            addr: a.addr,
            primary: Some(a.addr) == primary,
        })
        .collect())
}

fn remote_backends(desired: &Desired) -> BTreeSet<Ipv4Addr> {
    desired
        .frontends
        .values()
        .flat_map(|f| f.backends.iter())
        .filter(|b| b.flags & BACKEND_F_LOCAL == 0)
        .map(|b| b.addr)
        .collect()
}

pub fn run(args: &RunArgs) -> Result<()> {
    let node = node_name(args)?;
    let Some(dir) = args.manifests.clone() else {
        bail!(
            "the Kubernetes API source is not available in this build; pass --manifests DIR{}",
            args.kubeconfig
                .as_ref()
                .map(|k| format!(" (--kubeconfig {} was given)", k.display()))
                .unwrap_or_default()
        );
    };
    let selection: NodePortAddresses = match &args.nodeport_addresses {
        Some(s) => s
            .parse()
            .with_context(|| format!("--nodeport-addresses {s}"))?,
        None => NodePortAddresses::All,
    };
    let ifaces = interfaces(args)?;
    let primary_dev = node_addrs::default_route_devices()
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or_else(|| ifaces[0].clone());

    let mut datapath = Datapath::load(&args.bpffs, MapSizes::default())?;
    for iface in &ifaces {
        datapath.attach_xdp(iface, args.xdp_mode)?;
        datapath.attach_tc_egress(iface)?;
        info!(iface, "attached XDP ingress and TC egress");
        enable_forwarding(iface);
    }
    let mut maps = BpfMaps::open(datapath.root())?;
    for iface in &ifaces {
        configure_device(&mut maps, iface)?;
    }
    let reconciler = Reconciler::adopt(maps.read_state()?);
    let source = ManifestsSource::new(dir, args.service_node_port_range.clone());
    info!(node = %node, source = %source.describe(), bpffs = %args.bpffs.display(), "agent started");

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_flag(sig, &stop);
    }
    let mut sync = Sync {
        node,
        selection,
        primary_dev,
        source: Box::new(source),
        maps,
        reconciler,
        cluster: ClusterState::default(),
        addrs: Vec::new(),
        dirty: true,
        ready: false,
        remote: BTreeSet::new(),
        last_warm: Instant::now(),
    };
    while !stop.load(Ordering::Relaxed) {
        sync.tick();
        std::thread::sleep(TICK);
    }
    info!(
        "stopping; programs and maps stay pinned and keep serving (`nodeport-agent cleanup` removes them)"
    );
    Ok(())
}

/// The agent's loop state: what it last read and what it last wrote.
struct Sync {
    node: String,
    selection: NodePortAddresses,
    primary_dev: String,
    source: Box<dyn Source>,
    maps: BpfMaps,
    reconciler: Reconciler,
    cluster: ClusterState,
    addrs: Vec<Ipv4Addr>,
    /// Something changed (or the last write failed): recompute and apply.
    dirty: bool,
    ready: bool,
    /// Remote backend addresses whose next hops are kept resolved.
    remote: BTreeSet<Ipv4Addr>,
    last_warm: Instant,
}

impl Sync {
    /// One pass: read the source and the node's addresses, and when
    /// anything changed, write the difference into the maps.
    fn tick(&mut self) {
        match self.source.poll() {
            Ok(Some(state)) => {
                self.cluster = state;
                self.dirty = true;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading the source failed; serving the last known state"),
        }
        match interface_addrs(&self.primary_dev) {
            Ok(a) => {
                let selected = self.selection.select(&a);
                if selected != self.addrs {
                    self.addrs = selected;
                    self.dirty = true;
                }
            }
            Err(e) => warn!(error = %e, "reading node addresses failed"),
        }
        if self.dirty {
            self.apply();
        }
        if self.last_warm.elapsed() >= NEIGHBOUR_REFRESH {
            self.last_warm = Instant::now();
            neighbours::warm(&self.remote);
        }
    }

    fn apply(&mut self) {
        let desired = desired::compute(&self.cluster, &self.node, &self.addrs);
        for c in &desired.conflicts {
            warn!(conflict = ?c, "frontend claimed twice");
        }
        match self.reconciler.apply(&desired, &mut self.maps) {
            Ok(report) => {
                self.dirty = false;
                if !report.is_empty() {
                    info!(
                        puts = report.puts,
                        deletes = report.deletes,
                        purged_flows = report.purged_flows,
                        services = report.changed_services.len(),
                        "datapath updated"
                    );
                }
                let remote = remote_backends(&desired);
                if remote != self.remote {
                    self.remote = remote;
                    neighbours::warm(&self.remote);
                }
                if !self.ready {
                    self.ready = true;
                    info!(
                        frontends = desired.frontends.len(),
                        node_addrs = self.addrs.len(),
                        "datapath ready"
                    );
                }
            }
            Err(e) => error!(error = %e, "writing the datapath maps failed; retrying"),
        }
    }
}

/// Tells the datapath how to transmit on `iface`: veth devices get
/// redirect-to-self instead of `XDP_TX` (see `DEVICE_F_REDIRECT_TX`).
fn configure_device(maps: &mut BpfMaps, iface: &str) -> Result<()> {
    let ifindex = devices::ifindex(iface).with_context(|| format!("device {iface}"))?;
    let driver = devices::driver(iface).unwrap_or_default();
    let flags = if driver == "veth" {
        DEVICE_F_REDIRECT_TX
    } else {
        0
    };
    maps.put_device(DeviceKey { ifindex }, Device { flags })?;
    info!(
        iface,
        ifindex,
        driver,
        redirect_tx = flags != 0,
        "device configured"
    );
    Ok(())
}

/// The datapath forwards packets between the node's devices and its pods
/// (and `bpf_fib_lookup` refuses to answer otherwise): make sure IPv4
/// forwarding is on for a device it serves.
fn enable_forwarding(iface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(&path, "1") {
            Ok(()) => info!(iface, "enabled IPv4 forwarding"),
            Err(e) => {
                warn!(iface, error = %e, "IPv4 forwarding is off and cannot be enabled; NodePorts to other nodes will fail");
            }
        },
        Err(e) => warn!(iface, error = %e, "cannot read the IPv4 forwarding setting"),
    }
}

/// Sets `flag` when `sig` arrives.
fn signal_flag(sig: libc::c_int, flag: &Arc<AtomicBool>) {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }
    let _ = FLAG.set(Arc::clone(flag));
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
}
