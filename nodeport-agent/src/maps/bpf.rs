//! [`MapWriter`] over the pinned kernel maps, and the readers `inspect`
//! uses. Maps are opened by their pin paths, so the agent and the CLI see
//! exactly the same objects.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{
    Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use nodeport_common::{
    Affinity, AffinityKey, Backend, BackendKey, BackendStats, Config, CtEntry, Device, DeviceKey,
    DeviceTx, FlowKey, Frontend, FrontendKey, NodeAddr, NodeAddrKey, RevNat, ServiceStats,
    ServiceStatsKey, ServiceStatsSlot, Slot, SlotKey, SourceRange, SourceRangeData, SourceRangeKey,
    names, stat,
};

use super::{
    Backends, Frontends, MapError, MapState, MapWriter, NodeAddrs, Slots, SourceRanges, Stopped,
    Table, TableWrite, Write, walk,
};

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

fn open_map<T: TryFrom<Map, Error = aya::maps::MapError>>(
    root: &Path,
    name: &'static str,
) -> Result<T, MapError> {
    let data = MapData::from_pin(root.join(name)).map_err(err(name, "open", root.join(name)))?;
    let map = Map::from_map_data(data).map_err(err(name, "open", name))?;
    T::try_from(map).map_err(err(name, "open", name))
}

fn open<K: aya::Pod, V: aya::Pod>(
    root: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapError> {
    open_map(root, name)
}

/// Whether a delete failed only because the key was absent.
fn absent(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::KeyNotFound)
        || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// Deletes `key` from `map`; a key already gone is no error.
fn remove_present<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: K,
) -> Result<(), MapError> {
    match map.remove(&key) {
        Ok(()) => Ok(()),
        Err(e) if absent(&e) => Ok(()),
        Err(e) => Err(err(name, "delete", key)(e)),
    }
}

/// Counters by service id and by backend id ([`BpfMaps::counter_sums`]).
pub type CounterSums = (BTreeMap<u32, ServiceStats>, BTreeMap<u32, BackendStats>);

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
    config: Array<MapData, Config>,
    device_tx: PerCpuHashMap<MapData, DeviceKey, DeviceTx>,
    source_ranges: LpmTrie<MapData, SourceRangeData, SourceRange>,
    service_stats: PerCpuHashMap<MapData, ServiceStatsKey, ServiceStats>,
    service_stats_cache: PerCpuArray<MapData, ServiceStatsSlot>,
    /// Possible CPUs: the per-CPU maps' values have one copy each.
    cpus: usize,
    /// Whether the kernel takes runs of puts in one `BPF_MAP_UPDATE_BATCH`
    /// (Linux 5.6 and later); cleared the first time it does not.
    batch_puts: bool,
    /// Entries written by batches so far.
    batched: u64,
}

impl BpfMaps {
    /// Opens every map pinned under `root`.
    pub fn open(root: &Path) -> Result<Self, MapError> {
        Ok(Self {
            node_addrs: open(root, names::NODE_ADDRS)?,
            frontends: open(root, names::FRONTENDS)?,
            slots: open(root, names::BACKEND_SLOTS)?,
            backends: open(root, names::BACKENDS)?,
            conntrack: open(root, names::CONNTRACK)?,
            rev_nat: open(root, names::REV_NAT)?,
            devices: open(root, names::DEVICES)?,
            affinity: open(root, names::AFFINITY)?,
            stats: open_map(root, names::STATS)?,
            config: open_map(root, names::CONFIG)?,
            device_tx: open_map(root, names::DEVICE_TX)?,
            source_ranges: open_map(root, names::SOURCE_RANGES)?,
            service_stats: open_map(root, names::SERVICE_STATS)?,
            service_stats_cache: open_map(root, names::SERVICE_STATS_CACHE)?,
            cpus: aya::util::nr_cpus().map_err(|(_, e)| MapError {
                map: "-",
                op: "count cpus",
                key: String::from("-"),
                source: Box::new(e),
            })?,
            batch_puts: true,
            batched: 0,
        })
    }

    /// How many entries [`MapWriter::write_all`] wrote in batches.
    #[must_use]
    pub fn batched_entries(&self) -> u64 {
        self.batched
    }

    /// The datapath's run-time settings.
    pub fn config(&self) -> Result<Config, MapError> {
        self.config
            .get(&0, 0)
            .map_err(err(names::CONFIG, "lookup", 0))
    }

    /// Writes the datapath's run-time settings.
    pub fn put_config(&mut self, config: Config) -> Result<(), MapError> {
        self.config
            .set(0, config, 0)
            .map_err(err(names::CONFIG, "update", 0))
    }

    /// Makes sure device `ifindex` has its (per-CPU) transmit counters, so
    /// the tracepoints count its frames.
    pub fn init_device_tx(&mut self, key: DeviceKey) -> Result<(), MapError> {
        if self.device_tx.get(&key, 0).is_ok() {
            return Ok(());
        }
        let values =
            PerCpuValues::try_from(vec![DeviceTx::default(); self.cpus]).map_err(|e| MapError {
                map: names::DEVICE_TX,
                op: "update",
                key: format!("{key:?}"),
                source: Box::new(e),
            })?;
        self.device_tx
            .insert(key, values, 0)
            .map_err(err(names::DEVICE_TX, "update", key))
    }

    /// Every device's transmit counters, summed over CPUs.
    pub fn device_tx(&self) -> Result<Vec<(DeviceKey, DeviceTx)>, MapError> {
        let mut out = Vec::new();
        for item in &self.device_tx {
            let (key, values) = item.map_err(err(names::DEVICE_TX, "iterate", ()))?;
            let mut sum = DeviceTx::default();
            for v in values.iter() {
                sum.sent += v.sent;
                sum.failed += v.failed;
            }
            out.push((key, sum));
        }
        Ok(out)
    }

    /// Every device the datapath was told about.
    pub fn devices(&self) -> Result<Vec<(DeviceKey, Device)>, MapError> {
        self.devices
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(err(names::DEVICES, "iterate", ()))
    }

    /// Records how the datapath transmits on a device it is attached to.
    pub fn put_device(&mut self, key: DeviceKey, value: Device) -> Result<(), MapError> {
        self.devices
            .insert(key, value, 0)
            .map_err(err(names::DEVICES, "update", key))
    }

    /// Deletes the conntrack entries of `flows` (client tuples) and the
    /// reverse-NAT entries that translate their replies.
    fn remove_flows(&mut self, flows: &BTreeSet<FlowKey>) -> Result<(), MapError> {
        if flows.is_empty() {
            return Ok(());
        }
        for key in flows {
            remove_present(&mut self.conntrack, names::CONNTRACK, *key)?;
        }
        for (key, rev) in self.rev_nat()? {
            if flows.contains(&rev.client_flow(key.proto)) {
                remove_present(&mut self.rev_nat, names::REV_NAT, key)?;
            }
        }
        Ok(())
    }

    /// Every conntrack entry (read in batches).
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, CtEntry)>, MapError> {
        walk::entries(&self.conntrack, names::CONNTRACK)
    }

    /// Every reverse-NAT entry (read in batches).
    pub fn rev_nat(&self) -> Result<Vec<(FlowKey, RevNat)>, MapError> {
        walk::entries(&self.rev_nat, names::REV_NAT)
    }

    /// Looks one entry up, for `explain`: `Ok(None)` when absent.
    fn lookup<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
        map: &HashMap<MapData, K, V>,
        name: &'static str,
        key: K,
    ) -> Result<Option<V>, MapError> {
        match map.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(err(name, "lookup", key)(e)),
        }
    }

    /// Whether `addr_be` is a node address that serves NodePorts.
    pub fn node_addr(&self, addr_be: u32) -> Result<Option<NodeAddr>, MapError> {
        Self::lookup(&self.node_addrs, names::NODE_ADDRS, NodeAddrKey { addr_be })
    }

    /// The frontend of `key`.
    pub fn frontend(&self, key: FrontendKey) -> Result<Option<Frontend>, MapError> {
        Self::lookup(&self.frontends, names::FRONTENDS, key)
    }

    /// Slot `key`.
    pub fn slot(&self, key: SlotKey) -> Result<Option<Slot>, MapError> {
        Self::lookup(&self.slots, names::BACKEND_SLOTS, key)
    }

    /// Backend `backend_id`.
    pub fn backend(&self, backend_id: u32) -> Result<Option<Backend>, MapError> {
        Self::lookup(&self.backends, names::BACKENDS, BackendKey { backend_id })
    }

    /// The conntrack entry of client flow `key`.
    pub fn conntrack_entry(&self, key: FlowKey) -> Result<Option<CtEntry>, MapError> {
        Self::lookup(&self.conntrack, names::CONNTRACK, key)
    }

    /// The reverse-NAT entry of reply `key`.
    pub fn rev_nat_entry(&self, key: FlowKey) -> Result<Option<RevNat>, MapError> {
        Self::lookup(&self.rev_nat, names::REV_NAT, key)
    }

    /// The ClientIP affinity of `key`.
    pub fn affinity_entry(&self, key: AffinityKey) -> Result<Option<Affinity>, MapError> {
        Self::lookup(&self.affinity, names::AFFINITY, key)
    }

    /// Whether the `loadBalancerSourceRanges` of `service_id` admit
    /// `addr_be` (the datapath's longest-prefix lookup).
    pub fn source_allowed(&self, service_id: u32, addr_be: u32) -> Result<bool, MapError> {
        let key = Key::new(
            nodeport_common::SOURCE_RANGE_SERVICE_BITS + 32,
            SourceRangeData {
                service_id,
                addr_be,
            },
        );
        match self.source_ranges.get(&key, 0) {
            Ok(_) => Ok(true),
            Err(e) if absent(&e) => Ok(false),
            Err(e) => Err(err(names::SOURCE_RANGES, "lookup", (service_id, addr_be))(
                e,
            )),
        }
    }

    /// Every counted (service, backend) key's counters, summed over CPUs:
    /// its `service_stats` entry and the cache slots holding it.
    pub fn counter_entries(&self) -> Result<BTreeMap<ServiceStatsKey, ServiceStats>, MapError> {
        let mut out: BTreeMap<ServiceStatsKey, ServiceStats> = BTreeMap::new();
        for item in &self.service_stats {
            let (key, values) = item.map_err(err(names::SERVICE_STATS, "iterate", ()))?;
            let e = out.entry(key).or_default();
            *e = values.iter().fold(*e, |a, v| a.plus(v));
        }
        for (_, slots) in self.cache_slots()? {
            for slot in slots.iter().filter(|s| s.key.service_id != 0) {
                let e = out.entry(slot.key).or_default();
                *e = e.plus(&slot.stats);
            }
        }
        Ok(out)
    }

    /// Every slot of `svc_stats_cache` that some CPU uses, with its values
    /// (one batched read of the whole array: an endpoint change that frees
    /// an id reads it).
    fn cache_slots(&self) -> Result<Vec<(u32, Vec<ServiceStatsSlot>)>, MapError> {
        let mut slots = walk::per_cpu_array(
            &self.service_stats_cache,
            names::SERVICE_STATS_CACHE,
            self.cpus,
        )?;
        slots.retain(|(_, values)| values.iter().any(|s| s.key.service_id != 0));
        Ok(slots)
    }

    /// Every service frontend's counters (by service id) and every
    /// backend's (by backend id), summed over CPUs and over the
    /// `service_stats` entries and cache slots of each.
    pub fn counter_sums(&self) -> Result<CounterSums, MapError> {
        let mut services: BTreeMap<u32, ServiceStats> = BTreeMap::new();
        let mut backends: BTreeMap<u32, BackendStats> = BTreeMap::new();
        for (key, sum) in self.counter_entries()? {
            let s = services.entry(key.service_id).or_default();
            *s = s.plus(&sum);
            if key.backend_id != 0 {
                let b = backends.entry(key.backend_id).or_default();
                *b = b.plus(&BackendStats::of(&sum));
            }
        }
        Ok((services, backends))
    }

    /// Adds the per-CPU counters of `key` to those of its service's
    /// no-backend entry (made if missing). A packet the datapath counts in
    /// that entry between the read and the write is lost; nothing counted
    /// before is.
    fn fold_into_service(&mut self, key: ServiceStatsKey) -> Result<(), MapError> {
        let moved = match self.service_stats.get(&key, 0) {
            Ok(v) => v,
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(err(names::SERVICE_STATS, "lookup", key)(e)),
        };
        let moved: Vec<ServiceStats> = moved.iter().copied().collect();
        self.add_to_service(key.service_id, &moved)
    }

    /// Adds per-CPU counters `moved` to service `service_id`'s no-backend
    /// `service_stats` entry (made if missing), as [`Self::fold_into_service`].
    fn add_to_service(&mut self, service_id: u32, moved: &[ServiceStats]) -> Result<(), MapError> {
        let into = ServiceStatsKey {
            service_id,
            backend_id: 0,
        };
        let sums: Vec<ServiceStats> = match self.service_stats.get(&into, 0) {
            Ok(base) => base
                .iter()
                .zip(moved.iter())
                .map(|(a, b)| a.plus(b))
                .collect(),
            Err(e) if absent(&e) => moved.to_vec(),
            Err(e) => return Err(err(names::SERVICE_STATS, "lookup", into)(e)),
        };
        let values = PerCpuValues::try_from(sums).map_err(|e| MapError {
            map: names::SERVICE_STATS,
            op: "update",
            key: format!("{into:?}"),
            source: Box::new(e),
        })?;
        self.service_stats.insert(into, values, 0).map_err(err(
            names::SERVICE_STATS,
            "update",
            into,
        ))
    }

    /// Empties the cache slots of keys naming a removed service or backend
    /// on every CPU; what a slot counted for a removed backend of a
    /// service that stays moves to that service's no-backend entry. A slot
    /// index is rewritten whole (all CPUs): a packet another CPU counts in
    /// it between the read and the write is lost; nothing counted before is.
    fn forget_cached(
        &mut self,
        service_ids: &BTreeSet<u32>,
        backend_ids: &BTreeSet<u32>,
    ) -> Result<(), MapError> {
        let gone = |k: &ServiceStatsKey| {
            k.service_id != 0
                && (service_ids.contains(&k.service_id) || backend_ids.contains(&k.backend_id))
        };
        let mut moved: BTreeMap<u32, Vec<ServiceStats>> = BTreeMap::new();
        for (index, values) in self.cache_slots()? {
            if !values.iter().any(|s| gone(&s.key)) {
                continue;
            }
            let cpus = values.len();
            let mut kept = Vec::with_capacity(cpus);
            for (cpu, slot) in values.iter().enumerate() {
                if !gone(&slot.key) {
                    kept.push(*slot);
                    continue;
                }
                if !service_ids.contains(&slot.key.service_id) {
                    let per_cpu = moved
                        .entry(slot.key.service_id)
                        .or_insert_with(|| vec![ServiceStats::default(); cpus]);
                    per_cpu[cpu] = per_cpu[cpu].plus(&slot.stats);
                }
                kept.push(ServiceStatsSlot::default());
            }
            let values = PerCpuValues::try_from(kept).map_err(|e| MapError {
                map: names::SERVICE_STATS_CACHE,
                op: "update",
                key: format!("{index}"),
                source: Box::new(e),
            })?;
            self.service_stats_cache.set(index, values, 0).map_err(err(
                names::SERVICE_STATS_CACHE,
                "update",
                index,
            ))?;
        }
        for (service_id, per_cpu) in moved {
            self.add_to_service(service_id, &per_cpu)?;
        }
        Ok(())
    }

    /// Every service frontend's counters (by service id), summed over CPUs.
    pub fn service_stats(&self) -> Result<BTreeMap<u32, ServiceStats>, MapError> {
        Ok(self.counter_sums()?.0)
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

/// The LPM trie key of a [`SourceRangeKey`].
fn trie_key(k: &SourceRangeKey) -> Key<SourceRangeData> {
    Key::new(
        k.prefix_len,
        SourceRangeData {
            service_id: k.service_id,
            addr_be: k.addr_be,
        },
    )
}

/// The [`SourceRangeKey`] of an LPM trie key.
fn source_range_key(k: &Key<SourceRangeData>) -> SourceRangeKey {
    let data = k.data();
    SourceRangeKey {
        prefix_len: k.prefix_len(),
        service_id: data.service_id,
        addr_be: data.addr_be,
    }
}

/// Carries out one write on `map`.
fn apply<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    write: Write<K, V>,
) -> Result<(), MapError> {
    match write {
        Write::Put(k, v) => map.insert(k, v, 0).map_err(err(name, "update", k)),
        Write::Delete(k) => remove_present(map, name, k),
    }
}

/// The most entries one batch carries (bounds the copies of keys and
/// values made for it).
const BATCH_MAX: usize = 4096;

/// `BPF_MAP_UPDATE_BATCH` of `<linux/bpf.h>`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub(super) in_batch: u64,
    pub(super) out_batch: u64,
    pub(super) keys: u64,
    pub(super) values: u64,
    pub(super) count: u32,
    pub(super) map_fd: u32,
    pub(super) elem_flags: u64,
    pub(super) flags: u64,
}

/// Puts the run of puts of table `T` that `writes` opens (at most
/// [`BATCH_MAX`]) into `map` in one system call. Returns how many entries
/// went in, and the error that stopped the rest.
fn put_batch<T: Table>(
    map: &HashMap<MapData, T::Key, T::Value>,
    writes: &[TableWrite],
) -> (usize, Option<std::io::Error>)
where
    T::Key: aya::Pod,
    T::Value: aya::Pod,
{
    let (keys, values): (Vec<T::Key>, Vec<T::Value>) = writes
        .iter()
        .take(BATCH_MAX)
        .map_while(|w| match T::unwrap(w) {
            Some(Write::Put(k, v)) => Some((k, v)),
            _ => None,
        })
        .unzip();
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: u32::try_from(fd).unwrap_or(u32::MAX),
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix (the kernel zero-fills
    // the rest); `keys` and `values` hold `count` entries of the map's key
    // and value sizes and outlive the call; the kernel writes back only
    // `attr.count`.
    match unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) } {
        Ok(()) => (keys.len(), None),
        Err(error) => (
            usize::try_from(attr.count).unwrap_or(0).min(keys.len()),
            Some(error),
        ),
    }
}

/// One `bpf(2)` call of command `cmd` with `attr`, a prefix of `union
/// bpf_attr` (the kernel zero-fills the rest).
///
/// # Safety
///
/// Every pointer in `attr` must point to memory of the size the command
/// reads or writes through it, alive across the call.
pub(super) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: the caller vouches for the pointers in `attr`; its size is
    // passed with it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a batch failed because the kernel has no batch operation for
/// the map (`ENOTSUPP`, 524, from Linux 5.6 on; `EINVAL` before).
pub(super) fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

impl BpfMaps {
    /// Carries out one write of the `source_ranges` trie.
    fn write_source_range(
        &mut self,
        w: Write<SourceRangeKey, SourceRange>,
    ) -> Result<(), MapError> {
        let name = SourceRanges::NAME;
        match w {
            Write::Put(k, v) => self
                .source_ranges
                .insert(&trie_key(&k), v, 0)
                .map_err(err(name, "update", k)),
            Write::Delete(k) => match self.source_ranges.remove(&trie_key(&k)) {
                Ok(()) => Ok(()),
                Err(e) if absent(&e) => Ok(()),
                Err(e) => Err(err(name, "delete", k)(e)),
            },
        }
    }

    /// Puts the run of puts `writes` opens in one batch, where the kernel
    /// takes batches; returns how many went in (0: write them singly).
    fn put_run(&mut self, writes: &[TableWrite]) -> usize {
        if !self.batch_puts || !writes.get(1).is_some_and(TableWrite::is_put) {
            return 0;
        }
        let (done, error) = match writes[0] {
            TableWrite::NodeAddr(Write::Put(..)) => {
                put_batch::<NodeAddrs>(&self.node_addrs, writes)
            }
            TableWrite::Frontend(Write::Put(..)) => put_batch::<Frontends>(&self.frontends, writes),
            TableWrite::Slot(Write::Put(..)) => put_batch::<Slots>(&self.slots, writes),
            TableWrite::Backend(Write::Put(..)) => put_batch::<Backends>(&self.backends, writes),
            _ => return 0,
        };
        match error {
            Some(e) if done == 0 && unsupported(&e) => {
                tracing::info!(error = %e, "the kernel takes no batched map updates; writing entries one by one");
                self.batch_puts = false;
            }
            Some(e) => tracing::debug!(error = %e, done, "batched map update stopped"),
            None => {}
        }
        self.batched += done as u64;
        done
    }
}

impl MapWriter for BpfMaps {
    fn write(&mut self, write: &TableWrite) -> Result<(), MapError> {
        match *write {
            TableWrite::NodeAddr(w) => apply(&mut self.node_addrs, NodeAddrs::NAME, w),
            TableWrite::Frontend(w) => apply(&mut self.frontends, Frontends::NAME, w),
            TableWrite::Slot(w) => apply(&mut self.slots, Slots::NAME, w),
            TableWrite::Backend(w) => apply(&mut self.backends, Backends::NAME, w),
            TableWrite::SourceRange(w) => self.write_source_range(w),
        }
    }

    fn write_all(&mut self, writes: &[TableWrite]) -> Result<(), Stopped> {
        let mut written = 0;
        while written < writes.len() {
            let batched = self.put_run(&writes[written..]);
            if batched > 0 {
                written += batched;
                continue;
            }
            // One at a time: a delete, a lone put, or the entry a batch
            // stopped at (whose own error is then the one reported).
            let write = &writes[written];
            self.write(write)
                .map_err(|error| Stopped { written, error })?;
            written += 1;
        }
        Ok(())
    }

    fn purge_flows(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize, MapError> {
        if backend_ids.is_empty() {
            return Ok(0);
        }
        // TCP connections keep their backend until they end, as with
        // kube-proxy's conntrack (the datapath keeps the backend's address in
        // the entry); everything else goes at once.
        let doomed: BTreeSet<FlowKey> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, e)| {
                k.proto != nodeport_common::PROTO_TCP && backend_ids.contains(&e.backend_id)
            })
            .map(|(k, _)| k)
            .collect();
        self.remove_flows(&doomed)?;
        // ClientIP affinity to a purged backend ends with it.
        let stuck: Vec<AffinityKey> = walk::entries(&self.affinity, names::AFFINITY)?
            .into_iter()
            .filter(|(_, a)| backend_ids.contains(&a.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in stuck {
            remove_present(&mut self.affinity, names::AFFINITY, key)?;
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
        let doomed: BTreeSet<FlowKey> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, e)| {
                k.proto == nodeport_common::PROTO_UDP
                    && service_backends.contains(&(e.service_id, e.backend_id))
            })
            .map(|(k, _)| k)
            .collect();
        self.remove_flows(&doomed)?;
        Ok(doomed.len())
    }

    fn read_state(&self) -> Result<MapState, MapError> {
        Ok(MapState {
            node_addrs: walk::entries(&self.node_addrs, names::NODE_ADDRS)?
                .into_iter()
                .collect(),
            frontends: walk::entries(&self.frontends, names::FRONTENDS)?
                .into_iter()
                .collect(),
            slots: walk::entries(&self.slots, names::BACKEND_SLOTS)?
                .into_iter()
                .collect(),
            backends: walk::entries(&self.backends, names::BACKENDS)?
                .into_iter()
                .collect(),
            source_ranges: self
                .source_ranges
                .iter()
                .map(|item| item.map(|(k, v)| (source_range_key(&k), v)))
                .collect::<Result<_, _>>()
                .map_err(err(names::SOURCE_RANGES, "iterate", ()))?,
        })
    }

    fn forget_counters(
        &mut self,
        service_ids: &BTreeSet<u32>,
        backend_ids: &BTreeSet<u32>,
    ) -> Result<(), MapError> {
        self.forget_cached(service_ids, backend_ids)?;
        let gone: Vec<ServiceStatsKey> = self
            .service_stats
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(err(names::SERVICE_STATS, "iterate", ()))?
            .into_iter()
            .filter(|k| service_ids.contains(&k.service_id) || backend_ids.contains(&k.backend_id))
            .collect();
        for key in gone {
            if key.backend_id != 0 && !service_ids.contains(&key.service_id) {
                // The service stays: what it counted towards the backend
                // moves to its no-backend entry, so its sums never go back.
                self.fold_into_service(key)?;
            }
            match self.service_stats.remove(&key) {
                Err(e) if !absent(&e) => return Err(err(names::SERVICE_STATS, "delete", key)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    fn counter_ids(&self) -> Result<(BTreeSet<u32>, BTreeSet<u32>), MapError> {
        let keys: Vec<ServiceStatsKey> = self.counter_entries()?.into_keys().collect();
        let services = keys.iter().map(|k| k.service_id).collect();
        let backends = keys
            .iter()
            .map(|k| k.backend_id)
            .filter(|&b| b != 0)
            .collect();
        Ok((services, backends))
    }
}
