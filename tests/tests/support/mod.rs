//! Shared pieces of the end-to-end tests: manifests built from a few
//! parameters, and client helpers that report the datapath's state when a
//! request fails.

pub mod yaml;
