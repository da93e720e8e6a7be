//! Figures of the control-plane benchmark, as the `bench-control-plane`
//! example prints them (one JSON document) and `cargo xtask bench` reads
//! them.

use serde::{Deserialize, Serialize};

/// Cold programming and single-change latency at one size, through the
/// agent's own pipeline into real pinned maps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneRow {
    /// Services in the cluster state.
    pub services: usize,
    /// Ready endpoints per Service.
    pub endpoints_per_service: usize,
    /// Entries written to the maps by the cold apply.
    pub frontends: usize,
    pub backends: usize,
    pub slots: usize,
    /// Resident set of the process after the cold programming (KiB): what
    /// an agent serving a manifests directory holds at this size.
    #[serde(default)]
    pub rss_kib: u64,
    /// Resident set with the manifests source and its objects dropped
    /// (KiB): what an agent on the Kubernetes source holds (that source
    /// keeps each object's resourceVersion only).
    #[serde(default)]
    pub pipeline_rss_kib: u64,
    /// Bytes allocated and not freed at the same two points (KiB): what
    /// is live, beside what the allocator holds resident.
    #[serde(default)]
    pub heap_kib: u64,
    #[serde(default)]
    pub pipeline_heap_kib: u64,
    /// Map writes (puts) of the cold apply.
    pub map_writes: usize,
    /// Manifests directory → validated objects (`ManifestsSource::scan_changes`).
    pub parse_ms: f64,
    /// Objects → store and desired state (`Pipeline::set_service` / `set_slice`).
    pub compute_ms: f64,
    /// Desired state → written into empty pinned maps (`Pipeline::apply`).
    pub apply_ms: f64,
    /// One endpoint address changed: the changed EndpointSlice reaches the
    /// pipeline → the maps hold the new state (as the agent's loop does).
    pub change_samples: usize,
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
    pub change_max_ms: f64,
    /// Map writes (puts + deletes) of the median change.
    pub change_writes: usize,
}

impl ControlPlaneRow {
    /// Cold programming: parse + compute + apply.
    #[must_use]
    pub fn cold_ms(&self) -> f64 {
        self.parse_ms + self.compute_ms + self.apply_ms
    }
}

/// Everything the control-plane example measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneResults {
    pub rows: Vec<ControlPlaneRow>,
    /// Map capacities the maps were created with (`frontends`, `backends`,
    /// `backend_slots`).
    pub capacities: Vec<(String, u32)>,
    /// Sizes not run, and why (the run's time budget).
    pub skipped: Vec<(usize, String)>,
}
