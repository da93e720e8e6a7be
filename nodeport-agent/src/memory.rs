//! The agent's own memory: its resident set and the limit of its cgroup
//! (the container's `resources.limits.memory`), so that an agent nearing
//! its limit says so (a warning and the `nodeport_memory_*` metrics) before
//! the kernel's OOM killer ends it.

use std::path::{Path, PathBuf};

/// A warning is logged once the resident set exceeds this share of the
/// limit (and again after it fell below it).
pub const WARN_RATIO: f64 = 0.8;

/// A delivery of at least this many objects (a start, a re-list) is
/// followed by [`release_free`] once it is written.
pub const TRIM_AFTER_OBJECTS: usize = 1_000;

/// Returns the allocator's free memory to the kernel (glibc's
/// `malloc_trim`): after a large delivery the peak of decoding it would
/// otherwise stay in the resident set, and count against the container's
/// limit, until the allocator happens to reuse it.
pub fn release_free() {
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

/// The memory limit of this process's cgroup in bytes, if it has one:
/// `memory.max` (cgroup v2) or `memory.limit_in_bytes` (v1) of the cgroup
/// `/proc/self/cgroup` names, under `/sys/fs/cgroup`.
#[must_use]
pub fn cgroup_limit_bytes() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_from(&cgroups, Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_limit_bytes`] for a `/proc/self/cgroup` text and a cgroup
/// mount point.
fn limit_from(cgroups: &str, root: &Path) -> Option<u64> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(rel).join("memory.max"));
            candidates.push(root.join("unified").join(rel).join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(root.join("memory").join(rel).join("memory.limit_in_bytes"));
        }
    }
    candidates.iter().find_map(|p| parse_limit(&std::fs::read_to_string(p).ok()?))
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

/// One reading: the resident set, the limit and whether it is near.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub resident: u64,
    pub limit: Option<u64>,
}

impl Reading {
    /// The resident set as a share of the limit.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        self.limit.map(|l| self.resident as f64 / l as f64)
    }
}

impl Watch {
    /// Reads the figures; logs a warning when the limit comes near.
    pub fn check(&mut self) -> Option<Reading> {
        let reading = Reading {
            resident: resident_bytes()?,
            limit: cgroup_limit_bytes(),
        };
        let near = reading.ratio().is_some_and(|r| r >= WARN_RATIO);
        if near && !self.warned {
            tracing::warn!(
                resident_bytes = reading.resident,
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
        std::fs::write(v1.join("memory.limit_in_bytes"), "134217728\n").unwrap();
        assert_eq!(limit_from("0::/kubepods/pod1\n", &dir), Some(268_435_456));
        assert_eq!(
            limit_from("4:memory:/kubepods/pod2\n1:cpu:/x\n", &dir),
            Some(134_217_728)
        );
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(limit_from("0::/kubepods/pod1\n", &dir), None, "no limit");
        assert_eq!(parse_limit("9223372036854771712"), None, "v1 unlimited");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        let r = Reading {
            resident: 90,
            limit: Some(100),
        };
        assert!(r.ratio().unwrap() >= WARN_RATIO);
    }
}
