//! [`MapWriter`] over the pinned kernel maps, and the readers `inspect`
//! uses. Maps are opened by their pin paths, so the agent and the CLI see
//! exactly the same objects.

use std::collections::BTreeSet;
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use nodeport_common::{
    Affinity, AffinityKey, Backend, BackendKey, CtEntry, Device, DeviceKey, FlowKey, Frontend,
    FrontendKey, NodeAddr, NodeAddrKey, RevNat, Slot, SlotKey, names, stat,
};

use super::{MapError, MapState, MapWriter};

fn err(
    map: &'static str,
    op: &'static str,
    key: impl std::fmt::Debug,
) -> impl FnOnce(aya::maps::MapError) -> MapError {
    move |source| MapError {
        map,
        op,
        key: format!("{key:?}"),
        source: Box::new(source),
    }
}

fn open<K: aya::Pod, V: aya::Pod>(
    root: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapError> {
    let data = MapData::from_pin(root.join(name)).map_err(err(name, "open", root.join(name)))?;
    let map = Map::from_map_data(data).map_err(err(name, "open", name))?;
    HashMap::try_from(map).map_err(err(name, "open", name))
}

/// Whether a delete failed only because the key was absent.
fn absent(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::KeyNotFound)
        || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// The pinned maps of one node's datapath.
pub struct BpfMaps {
    node_addrs: HashMap<MapData, NodeAddrKey, NodeAddr>,
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    slots: HashMap<MapData, SlotKey, Slot>,
    backends: HashMap<MapData, BackendKey, Backend>,
    conntrack: HashMap<MapData, FlowKey, CtEntry>,
    rev_nat: HashMap<MapData, FlowKey, RevNat>,
    devices: HashMap<MapData, DeviceKey, Device>,
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    stats: PerCpuArray<MapData, u64>,
}

impl BpfMaps {
    /// Opens every map pinned under `root`.
    pub fn open(root: &Path) -> Result<Self, MapError> {
        let stats_path = root.join(names::STATS);
        let stats = MapData::from_pin(&stats_path)
            .map_err(err(names::STATS, "open", &stats_path))
            .and_then(|d| Map::from_map_data(d).map_err(err(names::STATS, "open", names::STATS)))
            .and_then(|m| {
                PerCpuArray::try_from(m).map_err(err(names::STATS, "open", names::STATS))
            })?;
        Ok(Self {
            node_addrs: open(root, names::NODE_ADDRS)?,
            frontends: open(root, names::FRONTENDS)?,
            slots: open(root, names::BACKEND_SLOTS)?,
            backends: open(root, names::BACKENDS)?,
            conntrack: open(root, names::CONNTRACK)?,
            rev_nat: open(root, names::REV_NAT)?,
            devices: open(root, names::DEVICES)?,
            affinity: open(root, names::AFFINITY)?,
            stats,
        })
    }

    /// Records how the datapath transmits on a device it is attached to.
    pub fn put_device(&mut self, key: DeviceKey, value: Device) -> Result<(), MapError> {
        self.devices
            .insert(key, value, 0)
            .map_err(err(names::DEVICES, "update", key))
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, CtEntry)>, MapError> {
        self.conntrack
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(err(names::CONNTRACK, "iterate", ()))
    }

    /// Every reverse-NAT entry.
    pub fn rev_nat(&self) -> Result<Vec<(FlowKey, RevNat)>, MapError> {
        self.rev_nat
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(err(names::REV_NAT, "iterate", ()))
    }

    /// The counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, MapError> {
        let mut out = Vec::with_capacity(stat::NAMES.len());
        for (i, name) in stat::NAMES.iter().enumerate() {
            let values = self
                .stats
                .get(&(i as u32), 0)
                .map_err(err(names::STATS, "lookup", i))?;
            out.push((*name, values.iter().sum()));
        }
        Ok(out)
    }
}

macro_rules! put_delete {
    ($put:ident, $delete:ident, $field:ident, $name:expr, $k:ty, $v:ty) => {
        fn $put(&mut self, key: $k, value: $v) -> Result<(), MapError> {
            self.$field
                .insert(key, value, 0)
                .map_err(err($name, "update", key))
        }
        fn $delete(&mut self, key: $k) -> Result<(), MapError> {
            match self.$field.remove(&key) {
                Ok(()) => Ok(()),
                Err(e) if absent(&e) => Ok(()),
                Err(e) => Err(err($name, "delete", key)(e)),
            }
        }
    };
}

impl MapWriter for BpfMaps {
    put_delete!(
        put_node_addr,
        delete_node_addr,
        node_addrs,
        names::NODE_ADDRS,
        NodeAddrKey,
        NodeAddr
    );
    put_delete!(
        put_frontend,
        delete_frontend,
        frontends,
        names::FRONTENDS,
        FrontendKey,
        Frontend
    );
    put_delete!(
        put_slot,
        delete_slot,
        slots,
        names::BACKEND_SLOTS,
        SlotKey,
        Slot
    );
    put_delete!(
        put_backend,
        delete_backend,
        backends,
        names::BACKENDS,
        BackendKey,
        Backend
    );

    fn purge_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize, MapError> {
        if backend_ids.is_empty() {
            return Ok(0);
        }
        // Backend addresses of the purged ids are gone from the backends map
        // by now; find the flows by id in conntrack, and their reverse
        // entries by the reply tuple they translate to.
        // TCP connections keep their backend until they end, as with
        // kube-proxy's conntrack (the datapath keeps the backend's address in
        // the entry); everything else goes at once.
        let doomed: Vec<(FlowKey, CtEntry)> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, e)| {
                k.proto != nodeport_common::PROTO_TCP && backend_ids.contains(&e.backend_id)
            })
            .collect();
        // (client addr, client port, frontend addr, frontend port, proto)
        let flows: BTreeSet<(u32, u16, u32, u16, u8)> = doomed
            .iter()
            .map(|(k, _)| (k.saddr_be, k.sport_be, k.daddr_be, k.dport_be, k.proto))
            .collect();
        for (key, _) in &doomed {
            match self.conntrack.remove(key) {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(e) => return Err(err(names::CONNTRACK, "delete", key)(e)),
            }
        }
        // A reverse entry belongs to a purged flow when it turns a reply into
        // exactly that flow's frontend → client packet.
        for (key, rev) in self.rev_nat()? {
            if flows.contains(&(
                rev.daddr_be,
                rev.dport_be,
                rev.saddr_be,
                rev.sport_be,
                key.proto,
            )) {
                match self.rev_nat.remove(&key) {
                    Ok(()) => {}
                    Err(e) if absent(&e) => {}
                    Err(e) => return Err(err(names::REV_NAT, "delete", key)(e)),
                }
            }
        }
        // ClientIP affinity to a purged backend ends with it.
        let stuck: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, a)| backend_ids.contains(&a.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in stuck {
            match self.affinity.remove(&key) {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(e) => return Err(err(names::AFFINITY, "delete", key)(e)),
            }
        }
        Ok(doomed.len())
    }

    fn purge_udp_flows(
        &mut self,
        service_backends: &BTreeSet<(u32, u32)>,
    ) -> Result<usize, MapError> {
        if service_backends.is_empty() {
            return Ok(0);
        }
        let doomed: Vec<FlowKey> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, e)| {
                k.proto == nodeport_common::PROTO_UDP
                    && service_backends.contains(&(e.service_id, e.backend_id))
            })
            .map(|(k, _)| k)
            .collect();
        for key in &doomed {
            match self.conntrack.remove(key) {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(e) => return Err(err(names::CONNTRACK, "delete", key)(e)),
            }
        }
        // Their reverse entries (found by the frontend → client tuple they
        // restore) go with them.
        let flows: BTreeSet<(u32, u16, u32, u16)> = doomed
            .iter()
            .map(|k| (k.saddr_be, k.sport_be, k.daddr_be, k.dport_be))
            .collect();
        for (key, rev) in self.rev_nat()? {
            if key.proto == nodeport_common::PROTO_UDP
                && flows.contains(&(rev.daddr_be, rev.dport_be, rev.saddr_be, rev.sport_be))
            {
                match self.rev_nat.remove(&key) {
                    Ok(()) => {}
                    Err(e) if absent(&e) => {}
                    Err(e) => return Err(err(names::REV_NAT, "delete", key)(e)),
                }
            }
        }
        Ok(doomed.len())
    }

    fn read_state(&self) -> Result<MapState, MapError> {
        Ok(MapState {
            node_addrs: self
                .node_addrs
                .iter()
                .collect::<Result<_, _>>()
                .map_err(err(names::NODE_ADDRS, "iterate", ()))?,
            frontends: self
                .frontends
                .iter()
                .collect::<Result<_, _>>()
                .map_err(err(names::FRONTENDS, "iterate", ()))?,
            slots: self.slots.iter().collect::<Result<_, _>>().map_err(err(
                names::BACKEND_SLOTS,
                "iterate",
                (),
            ))?,
            backends: self.backends.iter().collect::<Result<_, _>>().map_err(err(
                names::BACKENDS,
                "iterate",
                (),
            ))?,
        })
    }
}
