//! The nodeport agent: watches Services and `EndpointSlices`, computes what the
//! datapath of this node must hold and writes only the difference into the
//! pinned BPF maps.
//!
//! Pipeline: [`source`] → [`store`] → [`desired`] → [`reconcile`] → [`maps`].

pub mod attached;
pub mod cli;
pub mod config;
pub mod counters;
pub mod desired;
pub mod devices;
pub mod explain;
pub mod figures;
pub mod health;
pub mod http;
pub mod ids;
pub mod inspect;
pub mod k8s;
pub mod loader;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod neighbours;
pub mod netlink;
pub mod node_addrs;
pub mod pipeline;
pub mod pressure;
pub mod reconcile;
pub mod run;
pub mod runtime;
pub mod small_map;
pub mod snat_pool;
pub mod source;
pub mod store;
pub mod sysctl;
pub mod xdp_mode;
