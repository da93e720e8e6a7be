//! How full each pinned map is: its entries against its `max_entries`.
//! Counted with `BPF_MAP_LOOKUP_BATCH` (a few system calls for a map of a
//! million entries), or key by key where the kernel has no batch
//! operation for the map (the source-range trie, kernels before 5.6).
//! Arrays (program arrays included) are left out: every index of an array
//! always exists.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use aya::maps::{MapData, MapType};
use nodeport_common::names;
use serde::Serialize;

use super::MapError;
use super::bpf::bpf;
use super::walk::{BatchError, chunk_for, lookup_batches};

/// One map's fill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u32,
}

impl MapFill {
    /// Entries as a share of the capacity (0 to 1).
    #[must_use]
    pub fn ratio(&self) -> f64 {
        if self.max_entries == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss, reason = "entry counts far below 2^52")]
        let r = self.entries as f64 / f64::from(self.max_entries);
        r.min(1.0)
    }
}

/// One pinned map, opened once.
struct Pinned {
    name: &'static str,
    data: MapData,
    key_size: usize,
    /// Bytes of one entry's value in a batch buffer (per-CPU maps: one
    /// 8-byte-aligned value per possible CPU).
    value_size: usize,
    max_entries: u32,
    /// Cleared the first time the kernel refuses a batch for this map.
    batch: AtomicBool,
}

/// The pinned maps whose fill can be counted.
pub struct PinnedMaps {
    maps: Vec<Pinned>,
}

fn err(
    map: &'static str,
    op: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> MapError {
    MapError {
        map,
        op,
        key: String::from("-"),
        source: Box::new(source),
    }
}

/// `BPF_MAP_GET_NEXT_KEY` of `<linux/bpf.h>`.
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The key members of `union bpf_attr` for `BPF_MAP_GET_NEXT_KEY`.
#[repr(C)]
#[derive(Default)]
struct NextKeyAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    next_key: u64,
}

impl PinnedMaps {
    /// Opens every map pinned under `root` that is not an array.
    pub fn open(root: &Path) -> Result<Self, MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("-", "count cpus", e))?;
        let mut maps = Vec::new();
        for name in names::ALL {
            let data = MapData::from_pin(root.join(name)).map_err(|e| err(name, "open", e))?;
            let info = data.info().map_err(|e| err(name, "info", e))?;
            let per_cpu = match info.map_type().map_err(|e| err(name, "info", e))? {
                MapType::Array | MapType::PerCpuArray | MapType::ProgramArray => continue,
                MapType::PerCpuHash | MapType::LruPerCpuHash => true,
                _ => false,
            };
            let value = info.value_size() as usize;
            maps.push(Pinned {
                name,
                data,
                key_size: info.key_size() as usize,
                value_size: if per_cpu {
                    value.next_multiple_of(8) * cpus
                } else {
                    value
                },
                max_entries: info.max_entries(),
                batch: AtomicBool::new(true),
            });
        }
        Ok(Self { maps })
    }

    /// Counts the entries of every map.
    pub fn read(&self) -> Result<Vec<MapFill>, MapError> {
        self.maps
            .iter()
            .map(|m| {
                Ok(MapFill {
                    map: m.name,
                    entries: m.count()?,
                    max_entries: m.max_entries,
                })
            })
            .collect()
    }
}

impl Pinned {
    fn fd(&self) -> u32 {
        u32::try_from(self.data.fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX)
    }

    fn count(&self) -> Result<u64, MapError> {
        if self.batch.load(Ordering::Relaxed) {
            match self.count_batched() {
                Ok(n) => return Ok(n),
                Err(BatchError::Unsupported) => self.batch.store(false, Ordering::Relaxed),
                // A bucket holds more entries than one batch: count this
                // walk key by key.
                Err(BatchError::BucketTooLarge) => {}
                Err(BatchError::Failed(e)) => return Err(err(self.name, "lookup batch", e)),
            }
        }
        self.count_keys()
            .map_err(|e| err(self.name, "get next key", e))
    }

    /// Counts in batches.
    fn count_batched(&self) -> Result<u64, BatchError> {
        let chunk = chunk_for(self.key_size + self.value_size);
        let mut keys = vec![0u8; self.key_size * chunk];
        let mut values = vec![0u8; self.value_size * chunk];
        let mut total = 0u64;
        // SAFETY: `keys` and `values` have room for `chunk` entries of the
        // map's key and (per-CPU) value sizes and outlive the call.
        unsafe {
            lookup_batches(
                self.fd(),
                self.key_size,
                keys.as_mut_ptr(),
                values.as_mut_ptr(),
                chunk,
                |n| total += n as u64,
            )
        }?;
        Ok(total)
    }

    /// Counts key by key. A key deleted under the walk makes the kernel
    /// start over from the first key, so the walk stops at twice the
    /// capacity and reports the capacity.
    fn count_keys(&self) -> std::io::Result<u64> {
        let bound = 2 * u64::from(self.max_entries);
        let mut key = vec![0u8; self.key_size];
        let mut next = vec![0u8; self.key_size];
        let mut total = 0u64;
        let mut first = true;
        loop {
            let mut attr = NextKeyAttr {
                map_fd: self.fd(),
                key: if first { 0 } else { key.as_ptr() as u64 },
                next_key: next.as_mut_ptr() as u64,
                ..NextKeyAttr::default()
            };
            // SAFETY: `attr` is a valid `bpf_attr` prefix; `key` and `next`
            // hold one key each and are alive across the call.
            match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
                Err(e) => return Err(e),
            }
            total += 1;
            if total >= bound {
                return Ok(u64::from(self.max_entries));
            }
            std::mem::swap(&mut key, &mut next);
            first = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_a_share_of_the_capacity() {
        let fill = |entries, max_entries| MapFill {
            map: names::CONNTRACK,
            entries,
            max_entries,
        };
        assert!((fill(0, 100).ratio() - 0.0).abs() < f64::EPSILON);
        assert!((fill(91, 100).ratio() - 0.91).abs() < 1e-9);
        // An LRU map may briefly count more than it holds while it evicts.
        assert!((fill(120, 100).ratio() - 1.0).abs() < f64::EPSILON);
        assert!((fill(5, 0).ratio() - 0.0).abs() < f64::EPSILON);
    }
}
