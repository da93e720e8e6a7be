//! Walks over every entry of a pinned hash map with `BPF_MAP_LOOKUP_BATCH`:
//! a few system calls for a map of a million entries, where walking key by
//! key costs two per entry (next key, then lookup). Kernels without batch
//! lookups for a map (before 5.6, the LPM trie) are walked key by key.
//! The flow purges, the SNAT pool figures, the map fill counts and the
//! service counters' per-CPU cache read through here.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{HashMap, IterableMap as _, MapData, PerCpuArray};

use super::MapError;
use super::bpf::{BatchAttr, bpf, unsupported};

/// `BPF_MAP_LOOKUP_BATCH` of `<linux/bpf.h>`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries one batch lookup carries at most.
const CHUNK: usize = 4096;
/// Bytes of keys and values one batch copies at most (per-CPU values grow
/// with the CPUs).
const BATCH_BYTES: usize = 1 << 20;

/// Entries per batch for entries of `entry_bytes` key and value bytes.
pub(super) fn chunk_for(entry_bytes: usize) -> usize {
    (BATCH_BYTES / entry_bytes.max(1)).clamp(64, CHUNK)
}

/// Why a batched walk could not be done, and what to do instead.
pub(super) enum BatchError {
    /// The kernel has no batch lookup for this map: walk key by key from
    /// now on.
    Unsupported,
    /// One hash bucket holds more entries than a batch: walk this one key
    /// by key.
    BucketTooLarge,
    Failed(std::io::Error),
}

impl From<std::io::Error> for BatchError {
    fn from(e: std::io::Error) -> Self {
        if unsupported(&e) {
            Self::Unsupported
        } else if e.raw_os_error() == Some(libc::ENOSPC) {
            Self::BucketTooLarge
        } else {
            Self::Failed(e)
        }
    }
}

/// Looks up every entry of map `fd` in batches of `chunk` into `keys` and
/// `values`, calling `each(n)` after each batch has filled the first `n`
/// entries of both.
///
/// # Safety
///
/// `keys` and `values` must have room for `chunk` keys of `key_size` bytes
/// and `chunk` values of the map's value size (per-CPU maps: one 8-byte
/// aligned value per possible CPU), and stay valid across the call; `each`
/// must not touch them other than to read.
pub(super) unsafe fn lookup_batches(
    fd: u32,
    key_size: usize,
    keys: *mut u8,
    values: *mut u8,
    chunk: usize,
    mut each: impl FnMut(usize),
) -> Result<(), BatchError> {
    // The hash maps' token is a bucket index (4 bytes); a key's room is
    // left for other map types.
    let token_size = key_size.max(8);
    let mut token_in = vec![0u8; token_size];
    let mut token_out = vec![0u8; token_size];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys as u64,
            values: values as u64,
            count: u32::try_from(chunk).unwrap_or(64),
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix; the caller vouches
        // for `keys` and `values`; the tokens have room for one key and
        // are alive across the call.
        let done = match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e.into()),
        };
        each(usize::try_from(attr.count).unwrap_or(0).min(chunk));
        if done {
            return Ok(());
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// A zero-filled value of a plain-data map type.
fn zeroed<T: aya::Pod>() -> T {
    // SAFETY: `Pod` types are plain data for which all-zero bytes are a
    // valid value.
    unsafe { std::mem::zeroed() }
}

/// Every entry of hash map `map` (named `name` in errors), in batches
/// where the kernel has them. Entries that come and go under the walk may
/// be missed or seen, as with any walk of a live map.
pub(super) fn entries<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, MapError> {
    let fd = u32::try_from(map.map().fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX);
    let chunk = chunk_for(size_of::<K>() + size_of::<V>());
    let mut keys: Vec<K> = (0..chunk).map(|_| zeroed()).collect();
    let mut values: Vec<V> = (0..chunk).map(|_| zeroed()).collect();
    let (kp, vp) = (
        keys.as_mut_ptr().cast::<u8>(),
        values.as_mut_ptr().cast::<u8>(),
    );
    let mut out = Vec::new();
    // SAFETY: `keys` and `values` hold `chunk` keys and values of the
    // map's sizes (aya checked them against the map when it was opened);
    // `each` reads the `n <= chunk` entries a batch filled, through the
    // same pointers.
    let batched = unsafe {
        lookup_batches(fd, size_of::<K>(), kp, vp, chunk, |n| {
            let k = std::slice::from_raw_parts(kp.cast::<K>(), n);
            let v = std::slice::from_raw_parts(vp.cast::<V>(), n);
            out.extend(k.iter().copied().zip(v.iter().copied()));
        })
    };
    match batched {
        Ok(()) => Ok(out),
        Err(BatchError::Unsupported | BatchError::BucketTooLarge) => map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| MapError {
                map: name,
                op: "iterate",
                key: String::from("-"),
                source: Box::new(source),
            }),
        Err(BatchError::Failed(source)) => Err(MapError {
            map: name,
            op: "lookup batch",
            key: String::from("-"),
            source: Box::new(source),
        }),
    }
}

/// Every index of per-CPU array `map` (named `name` in errors) with its
/// value on each possible CPU, `cpus` of them, in batches where the kernel
/// has them (one system call for the service counters' cache, where index
/// by index costs one per slot).
pub(super) fn per_cpu_array<V: aya::Pod>(
    map: &PerCpuArray<MapData, V>,
    name: &'static str,
    cpus: usize,
) -> Result<Vec<(u32, Vec<V>)>, MapError> {
    let fd = u32::try_from(map.map().fd().as_fd().as_raw_fd()).unwrap_or(u32::MAX);
    // The kernel copies each CPU's value 8-byte aligned.
    let stride = size_of::<V>().next_multiple_of(8);
    let entry = stride * cpus;
    let chunk = chunk_for(size_of::<u32>() + entry);
    let mut keys = vec![0u32; chunk];
    // u64 words: the value buffer is 8-byte aligned, as the kernel expects.
    let mut values = vec![0u64; chunk * entry / 8];
    let (indexes, vp) = (keys.as_mut_ptr(), values.as_mut_ptr().cast::<u8>());
    let kp = indexes.cast::<u8>();
    let mut out = Vec::new();
    // SAFETY: `keys` has room for `chunk` u32 indexes and `values` for
    // `chunk` per-CPU values of `cpus` strided copies each; `each` reads
    // the `n <= chunk` entries a batch filled, each value with an
    // unaligned read of a `Pod` type inside the buffer.
    let batched = unsafe {
        lookup_batches(fd, size_of::<u32>(), kp, vp, chunk, |n| {
            for i in 0..n {
                let index = indexes.add(i).read();
                let per_cpu = (0..cpus)
                    .map(|c| vp.add(i * entry + c * stride).cast::<V>().read_unaligned())
                    .collect();
                out.push((index, per_cpu));
            }
        })
    };
    match batched {
        Ok(()) => Ok(out),
        Err(BatchError::Unsupported | BatchError::BucketTooLarge) => (0..map.len())
            .map(|index| {
                map.get(&index, 0)
                    .map(|v| (index, v.iter().copied().collect()))
                    .map_err(|source| MapError {
                        map: name,
                        op: "lookup",
                        key: index.to_string(),
                        source: Box::new(source),
                    })
            })
            .collect(),
        Err(BatchError::Failed(source)) => Err(MapError {
            map: name,
            op: "lookup batch",
            key: String::from("-"),
            source: Box::new(source),
        }),
    }
}
