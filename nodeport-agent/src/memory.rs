//! The agent's own memory: its resident set, what its cgroup is charged
//! (with the BPF maps it created) and the cgroup's limit (the container's
//! `resources.limits.memory`), so that an agent nearing
//! its limit says so (a warning and the `nodeport_memory_*` metrics) before
//! the kernel's OOM killer ends it.

use std::path::{Path, PathBuf};

/// A warning is logged once the cgroup's charge (the resident set where it
/// cannot be read) exceeds this share of the limit (and again after it fell below it).
pub const WARN_RATIO: f64 = 0.8;

/// A delivery of at least this many objects (a start, a re-list) is
/// followed by [`release_free`] once it is written.
pub const TRIM_AFTER_OBJECTS: usize = 1_000;

/// The allocator the agent's binary runs with (`#[global_allocator]` in
/// `main.rs`; the control-plane benchmark uses it too). jemalloc rather than
/// glibc's malloc: the manifests source decodes on worker threads, each with
/// its own glibc arena, and glibc never returns the free top of such an
/// arena to the kernel, so a large delivery's decoding stayed resident
/// (about 40 MiB at 10k Services) long after its objects were gone.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Returns the allocator's free memory to the kernel at once: after a large
/// delivery the peak of decoding it would otherwise stay in the resident
/// set, and count against the container's limit, until jemalloc's decay
/// returns it (seconds later). Purges every jemalloc arena
/// (`arena.<MALLCTL_ARENAS_ALL>.purge`); in a binary whose global allocator
/// is the system's, trims glibc's heap as well.
pub fn release_free() {
    // SAFETY: the name is a NUL-terminated mallctl of jemalloc's that
    // takes and returns nothing.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set size of this process in bytes (`/proc/self/statm`).
#[must_use]
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// What this process's cgroup holds and may hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// Memory charged to it (`memory.current`, v1 `memory.usage_in_bytes`):
    /// the processes' memory and the BPF maps they created, what the
    /// limit is enforced against.
    pub charged: Option<u64>,
    /// Its limit (`memory.max`, v1 `memory.limit_in_bytes`), if any.
    pub limit: Option<u64>,
}

/// The memory of this process's cgroup (the one `/proc/self/cgroup`
/// names, under `/sys/fs/cgroup`).
#[must_use]
pub fn cgroup() -> Cgroup {
    std::fs::read_to_string("/proc/self/cgroup")
        .map(|cgroups| cgroup_from(&cgroups, Path::new("/sys/fs/cgroup")))
        .unwrap_or_default()
}

/// [`cgroup`] for a `/proc/self/cgroup` text and a cgroup mount point: the
/// first candidate directory that has the figures.
fn cgroup_from(cgroups: &str, root: &Path) -> Cgroup {
    // (directory, file of the charge, file of the limit)
    let mut candidates: Vec<(PathBuf, &str, &str)> = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            for dir in [root.join(rel), root.join("unified").join(rel)] {
                candidates.push((dir, "memory.current", "memory.max"));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push((
                root.join("memory").join(rel),
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
            ));
        }
    }
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
    candidates
        .iter()
        .find(|(dir, charged, limit)| dir.join(charged).exists() || dir.join(limit).exists())
        .map(|(dir, charged, limit)| Cgroup {
            charged: read(dir, charged).and_then(|t| t.trim().parse().ok()),
            limit: read(dir, limit).as_deref().and_then(parse_limit),
        })
        .unwrap_or_default()
}

/// A limit file's value; `max` (or v1's near-2^63 "unlimited") is none.
fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// Remembers whether the warning was given, so it is given once per
/// crossing.
#[derive(Debug, Default)]
pub struct Watch {
    warned: bool,
}

/// One reading: the resident set, the cgroup's charge and its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub resident: u64,
    /// Charged to the cgroup (with the BPF maps), when it can be read.
    pub charged: Option<u64>,
    pub limit: Option<u64>,
}

impl Reading {
    /// How near the limit is: the cgroup's charge (what the limit is
    /// enforced against), or the resident set where the charge cannot be
    /// read, as a share of the limit.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        let used = self.charged.unwrap_or(self.resident);
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        self.limit.map(|l| used as f64 / l as f64)
    }
}

impl Watch {
    /// Reads the figures; logs a warning when the limit comes near.
    pub fn check(&mut self) -> Option<Reading> {
        let cgroup = cgroup();
        let reading = Reading {
            resident: resident_bytes()?,
            charged: cgroup.charged,
            limit: cgroup.limit,
        };
        let near = reading.ratio().is_some_and(|r| r >= WARN_RATIO);
        if near && !self.warned {
            tracing::warn!(
                resident_bytes = reading.resident,
                charged_bytes = reading.charged,
                limit_bytes = reading.limit,
                "the agent's memory is near its cgroup limit; raise resources.limits.memory of the DaemonSet"
            );
        }
        self.warned = near;
        Some(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_found_for_both_cgroup_versions() {
        let dir = std::env::temp_dir().join(format!("nodeport-memory-{}", std::process::id()));
        let v2 = dir.join("kubepods/pod1");
        let v1 = dir.join("memory/kubepods/pod2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v2.join("memory.max"), "268435456\n").unwrap();
        std::fs::write(v2.join("memory.current"), "1000\n").unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "134217728\n").unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "2000\n").unwrap();
        assert_eq!(
            cgroup_from("0::/kubepods/pod1\n", &dir),
            Cgroup {
                charged: Some(1000),
                limit: Some(268_435_456)
            }
        );
        assert_eq!(
            cgroup_from("4:memory:/kubepods/pod2\n1:cpu:/x\n", &dir),
            Cgroup {
                charged: Some(2000),
                limit: Some(134_217_728)
            }
        );
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(
            cgroup_from("0::/kubepods/pod1\n", &dir).limit,
            None,
            "no limit"
        );
        assert_eq!(
            cgroup_from("0::/elsewhere\n", &dir),
            Cgroup::default(),
            "no such cgroup"
        );
        assert_eq!(parse_limit("9223372036854771712"), None, "v1 unlimited");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn the_charge_counts_before_the_resident_set() {
        let r = |resident, charged| Reading {
            resident,
            charged,
            limit: Some(100),
        };
        assert!(r(90, None).ratio().unwrap() >= WARN_RATIO);
        // The BPF maps are charged to the cgroup, not in the resident set.
        assert!(r(10, Some(90)).ratio().unwrap() >= WARN_RATIO);
        assert!(r(90, Some(50)).ratio().unwrap() < WARN_RATIO);
        assert_eq!(
            Reading {
                resident: 1,
                charged: Some(1),
                limit: None
            }
            .ratio(),
            None
        );
    }
}
