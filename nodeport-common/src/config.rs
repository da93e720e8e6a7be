//! The datapath's run-time settings: the one entry of the `config` array
//! map, written by the agent. Today it holds the SNAT port pool: the source
//! ports a node takes when it SNATs a flow to a backend on another node,
//! and how long a closed flow's port rests before another client may have
//! it.
//!
//! The pool is at most two port ranges, so that it can surround the host's
//! ephemeral range and the NodePort range without overlapping either (the
//! default: 1024-29999 and 61000-65535, 33,512 ports for every node
//! address, backend address:port and protocol).

use core::mem::{offset_of, size_of};

/// An inclusive range of host-order ports; `min > max` or `max == 0` is
/// empty (port 0 is never a port, and an all-zero entry is unwritten).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub const EMPTY: Self = Self { min: 0, max: 0 };

    #[inline(always)]
    #[must_use]
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min, max }
    }

    /// Number of ports in the range.
    #[inline(always)]
    #[must_use]
    pub const fn len(&self) -> u32 {
        if self.is_empty() {
            0
        } else {
            self.max as u32 - self.min as u32 + 1
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.min > self.max || self.max == 0
    }

    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        !self.is_empty() && port >= self.min && port <= self.max
    }
}

/// Number of port ranges the agent can record as added to the host's
/// `net.ipv4.ip_local_reserved_ports` (removed again by `cleanup`).
pub const RESERVED_RANGES: usize = 4;

/// Value of the `config` map (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The SNAT port pool, host order. All-empty (an all-zero entry, before
    /// the agent wrote one): [`DEFAULT_SNAT_RANGES`].
    pub snat_ranges: [PortRange; 2],
    /// Seconds a closed flow's SNAT port rests before another client tuple
    /// may have it (the backend may hold the old connection in TIME_WAIT
    /// for 60 s); zero: [`DEFAULT_SNAT_REST_S`].
    pub snat_rest_s: u32,
    /// Number of valid entries in `reserved`.
    pub reserved_count: u32,
    /// Port ranges the agent added to `net.ipv4.ip_local_reserved_ports`
    /// (so the host never picks a pool port for its own connections);
    /// `cleanup` removes exactly these.
    pub reserved: [PortRange; RESERVED_RANGES],
    /// A random value of this node's agent, marking the frames its XDP
    /// program hands to its TC ingress program, so that a frame arriving
    /// with another node's (stale) handoff metadata is not taken for one.
    pub handoff_token: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// The network namespace (its cookie, `SO_NETNS_COOKIE`) whose sockets
    /// may not bind an allocated nodePort on a served node address or the
    /// wildcard address (they get `EADDRINUSE`, as with kube-proxy's held
    /// ports); zero: no bind is refused.
    pub bind_protect_netns: u64,
}

/// The datapath keeps no per-service and per-backend counters
/// (`service_stats`): for nodes where their cost or their
/// memory is not wanted, and for measuring that cost.
pub const CONFIG_F_NO_SERVICE_COUNTERS: u32 = 1;

/// The default SNAT pool: every port from 1024 up that is neither in the
/// NodePort range (30000-32767) nor in Linux's default ephemeral range
/// (32768-60999).
pub const DEFAULT_SNAT_RANGES: [PortRange; 2] =
    [PortRange::new(1024, 29_999), PortRange::new(61_000, 65_535)];
/// The default rest of a closed flow's SNAT port: Linux's TIME_WAIT.
pub const DEFAULT_SNAT_REST_S: u32 = 60;

impl Config {
    /// The configuration the agent writes by default.
    #[must_use]
    pub const fn new(snat_ranges: [PortRange; 2], snat_rest_s: u32) -> Self {
        Self {
            snat_ranges,
            snat_rest_s,
            reserved_count: 0,
            reserved: [PortRange::EMPTY; RESERVED_RANGES],
            handoff_token: 0,
            flags: 0,
            bind_protect_netns: 0,
        }
    }

    /// The SNAT ranges in effect (the defaults for an unwritten entry).
    #[inline(always)]
    #[must_use]
    pub const fn pool(&self) -> [PortRange; 2] {
        if self.snat_ranges[0].len() + self.snat_ranges[1].len() == 0 {
            DEFAULT_SNAT_RANGES
        } else {
            self.snat_ranges
        }
    }

    /// The rest of a closed flow's port in effect, in nanoseconds.
    #[inline(always)]
    #[must_use]
    pub const fn rest_ns(&self) -> u64 {
        let s = if self.snat_rest_s == 0 {
            DEFAULT_SNAT_REST_S
        } else {
            self.snat_rest_s
        };
        s as u64 * 1_000_000_000
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(DEFAULT_SNAT_RANGES, DEFAULT_SNAT_REST_S)
    }
}

/// A SNAT pool as the datapath walks it: ports numbered `0..size` across
/// both ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatPool {
    pub ranges: [PortRange; 2],
}

impl SnatPool {
    #[inline(always)]
    #[must_use]
    pub const fn of(config: &Config) -> Self {
        Self {
            ranges: config.pool(),
        }
    }

    /// Number of ports in the pool.
    #[inline(always)]
    #[must_use]
    pub const fn size(&self) -> u32 {
        self.ranges[0].len() + self.ranges[1].len()
    }

    /// Whether `port` (host order) belongs to the pool.
    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        self.ranges[0].contains(port) || self.ranges[1].contains(port)
    }

    /// The port numbered `index` (taken modulo the pool size).
    #[inline(always)]
    #[must_use]
    pub const fn port_at(&self, index: u32) -> u16 {
        let size = self.size();
        if size == 0 {
            return 0;
        }
        let i = index % size;
        let first = self.ranges[0].len();
        if i < first {
            (self.ranges[0].min as u32 + i) as u16
        } else {
            (self.ranges[1].min as u32 + (i - first)) as u16
        }
    }

    /// The first port the pool offers a client flow from `client_port`
    /// (host order) of `client_addr_be`: the client's own port where the
    /// pool has it, else a fixed image of it, spread by the client address.
    /// The same client tuple thus meets a backend with the same address
    /// and port each time, so the backend's TIME_WAIT of its last
    /// connection sees the client's own, newer timestamps.
    #[inline(always)]
    #[must_use]
    pub const fn preferred(&self, client_addr_be: u32, client_port: u16) -> u16 {
        if self.contains(client_port) {
            return client_port;
        }
        let spread = client_addr_be.wrapping_mul(0x9e37_79b9);
        self.port_at((client_port as u32).wrapping_add(spread >> 16))
    }
}

const _: () = {
    assert!(size_of::<PortRange>() == 4);
    assert!(size_of::<Config>() == 48);
    assert!(offset_of!(Config, handoff_token) == 32);
    assert!(offset_of!(Config, flags) == 36);
    assert!(offset_of!(Config, bind_protect_netns) == 40);
    assert!(offset_of!(Config, snat_rest_s) == 8);
    assert!(offset_of!(Config, reserved_count) == 12);
    assert!(offset_of!(Config, reserved) == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers only, no implicit padding.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortRange {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn default_pool_avoids_node_ports_and_ephemeral_ports() {
        let pool = SnatPool::of(&Config::default());
        assert_eq!(pool.size(), 28_976 + 4_536);
        for i in 0..pool.size() {
            let p = pool.port_at(i);
            assert!(p >= 1024, "{p}");
            assert!(!(30_000..=60_999).contains(&p), "{p}");
            assert!(pool.contains(p));
        }
        assert_eq!(pool.port_at(0), 1024);
        assert_eq!(pool.port_at(28_976), 61_000);
        assert_eq!(pool.port_at(pool.size()), 1024, "indices wrap");
    }

    #[test]
    fn an_unwritten_entry_means_the_defaults() {
        // An array map's entry is all zero until the agent writes it.
        let unwritten = Config::new([PortRange::EMPTY; 2], 0);
        assert_eq!(SnatPool::of(&unwritten).size(), 33_512);
        assert_eq!(unwritten.rest_ns(), 60_000_000_000);
        let one = Config::new([PortRange::new(5000, 5009), PortRange::EMPTY], 5);
        assert_eq!(SnatPool::of(&one).size(), 10);
        assert_eq!(SnatPool::of(&one).port_at(12), 5002);
        assert_eq!(one.rest_ns(), 5_000_000_000);
    }

    #[test]
    fn preferred_port_keeps_pool_ports_and_maps_others_one_to_one() {
        let pool = SnatPool::of(&Config::default());
        let client = u32::from_ne_bytes([10, 200, 0, 2]);
        assert_eq!(pool.preferred(client, 61_234), 61_234);
        assert_eq!(pool.preferred(client, 2_000), 2_000);
        // Linux's ephemeral range (28,232 ports) maps to distinct pool ports.
        let mut seen = std::collections::BTreeSet::new();
        for port in 32_768..=60_999u16 {
            let p = pool.preferred(client, port);
            assert!(pool.contains(p));
            assert!(seen.insert(p), "{port} → {p} taken twice");
        }
    }
}
