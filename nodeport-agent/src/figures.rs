//! What the datapath's maps say beyond its per-reason packet counters:
//! frames sent back out of each device that the kernel transmitted or
//! dropped (`device_tx`), and how much of the SNAT port pool each remote
//! backend uses (`rev_nat` entries of SNATed flows against the pool size),
//! and how full every map is. Read from the pinned maps by `inspect`, at
//! every metrics scrape and by the agent's pressure check.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nodeport_common::{DEVICE_F_SKB_MODE, PROTO_TCP, PROTO_UDP, SnatPool};
use serde::Serialize;

use crate::maps::MapError;
use crate::maps::bpf::BpfMaps;
use crate::maps::fill::{MapFill, PinnedMaps};

/// Transmit figures of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceFigures {
    pub device: String,
    pub ifindex: u32,
    /// `native` or `generic`.
    pub xdp_mode: &'static str,
    /// Frames the kernel reported transmitted (native mode only; generic
    /// mode reports failures only).
    pub tx_sent: u64,
    pub tx_failed: u64,
}

/// SNAT ports in use towards one backend from one node address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnatBackend {
    pub backend: String,
    pub node_addr: String,
    pub ports_in_use: u64,
}

/// SNAT pool use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnatUsage {
    /// Ports in the pool for every (node address, backend, protocol).
    pub pool_size: u32,
    pub backends: Vec<SnatBackend>,
}

impl SnatUsage {
    /// The share of its pool that `backend` uses (0 to 1).
    #[must_use]
    pub fn ratio(&self, backend: &SnatBackend) -> f64 {
        if self.pool_size == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss, reason = "port counts below 2^16")]
        let r = backend.ports_in_use as f64 / f64::from(self.pool_size);
        r.min(1.0)
    }
}

/// Everything [`read`] gathers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub devices: Vec<DeviceFigures>,
    pub snat: SnatUsage,
    /// Every map but the arrays, in the order of `names::ALL`.
    pub maps: Vec<MapFill>,
}

/// The name of device `ifindex` in this network namespace.
fn device_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "other",
    }
}

/// Reads the figures from the pinned maps.
pub fn read(maps: &BpfMaps, pinned: &PinnedMaps) -> Result<Figures, MapError> {
    let modes: BTreeMap<u32, u32> = maps
        .devices()?
        .into_iter()
        .map(|(k, d)| (k.ifindex, d.flags))
        .collect();
    let devices = maps
        .device_tx()?
        .into_iter()
        .map(|(k, tx)| DeviceFigures {
            device: device_name(k.ifindex),
            ifindex: k.ifindex,
            xdp_mode: if modes
                .get(&k.ifindex)
                .is_some_and(|f| f & DEVICE_F_SKB_MODE != 0)
            {
                "generic"
            } else {
                "native"
            },
            tx_sent: tx.sent,
            tx_failed: tx.failed,
        })
        .collect();
    let pool = SnatPool::of(&maps.config()?);
    let mut in_use: BTreeMap<(Ipv4Addr, u16, u8, Ipv4Addr), u64> = BTreeMap::new();
    for (key, rev) in maps.rev_nat()? {
        // An SNATed flow's reverse entry: the reply to node address:port
        // leaves from the same node address (its NodePort).
        if rev.saddr_be == key.daddr_be && pool.contains(u16::from_be(key.dport_be)) {
            let backend = nodeport_common::addr::from_be(key.saddr_be);
            let node = nodeport_common::addr::from_be(key.daddr_be);
            *in_use
                .entry((backend, u16::from_be(key.sport_be), key.proto, node))
                .or_default() += 1;
        }
    }
    let backends = in_use
        .into_iter()
        .map(|((addr, port, proto, node), n)| SnatBackend {
            backend: format!("{addr}:{port}/{}", proto_name(proto)),
            node_addr: node.to_string(),
            ports_in_use: n,
        })
        .collect();
    Ok(Figures {
        devices,
        snat: SnatUsage {
            pool_size: pool.size(),
            backends,
        },
        maps: pinned.read()?,
    })
}
