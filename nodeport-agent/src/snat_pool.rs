//! The SNAT port pool the datapath takes source ports from when it SNATs a
//! flow to a backend on another node (`nodeport_common::config`), and its
//! place among the host's own ports.
//!
//! The pool must not collide with the host's own connections (a node
//! process talking to a backend pod from the same address and port would
//! share a tuple with an SNATed flow) nor with the NodePort range. By
//! default it is every port from 1024 up outside both the NodePort range
//! and the host's ephemeral range (`net.ipv4.ip_local_port_range`): with
//! the defaults 1024-29999 and 61000-65535, 33,512 ports per node address,
//! backend and protocol. The agent also adds the pool to
//! `net.ipv4.ip_local_reserved_ports`, so the host never picks a pool port
//! for a connection of its own even if its ephemeral range later grows,
//! and records what it added in the `config` map; `cleanup` removes
//! exactly that.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use nodeport_common::{Config, PortRange, config::RESERVED_RANGES};

use crate::sysctl::{SysctlError, Sysctls};

const LOCAL_PORT_RANGE: &str = "net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "net/ipv4/ip_local_reserved_ports";
/// The lowest port the pool uses: below are the privileged ports.
const LOWEST: u16 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("`{0}` is not a port range list A-B[,C-D]")]
    Parse(String),
    #[error("the SNAT port pool has at most two ranges, got {0}")]
    TooManyRanges(usize),
    #[error(
        "the SNAT port pool {pool} overlaps the NodePort range {node_ports}: pass another --snat-port-range"
    )]
    OverlapsNodePorts { pool: String, node_ports: String },
    #[error(
        "no ports are left for SNAT outside the NodePort range {node_ports} and the host's ephemeral range {ephemeral}: pass --snat-port-range"
    )]
    Empty {
        node_ports: String,
        ephemeral: String,
    },
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("{key}: `{value}` is not what the kernel writes there")]
    SysctlValue { key: &'static str, value: String },
}

fn show(r: &RangeInclusive<u16>) -> String {
    format!("{}-{}", r.start(), r.end())
}

/// Parses `A-B[,C-D]` (at most two ranges).
pub fn parse_ranges(s: &str) -> Result<[PortRange; 2], PoolError> {
    let ranges = parse_list(s).ok_or_else(|| PoolError::Parse(s.to_string()))?;
    if ranges.is_empty() {
        return Err(PoolError::Parse(s.to_string()));
    }
    if ranges.len() > 2 {
        return Err(PoolError::TooManyRanges(ranges.len()));
    }
    let mut out = [PortRange::EMPTY; 2];
    for (o, r) in out.iter_mut().zip(ranges) {
        *o = PortRange::new(*r.start(), *r.end());
    }
    Ok(out)
}

/// Parses a kernel port list (`1024-2000,3000`, possibly empty).
fn parse_list(s: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if a == 0 || a > b {
            return None;
        }
        out.push(a..=b);
    }
    Some(out)
}

/// The default pool: the two largest stretches of `1024..=65535` outside
/// `node_ports` and `ephemeral`.
pub fn default_ranges(
    node_ports: &RangeInclusive<u16>,
    ephemeral: &RangeInclusive<u16>,
) -> Result<[PortRange; 2], PoolError> {
    let mut free = vec![LOWEST..=u16::MAX];
    for taken in [node_ports, ephemeral] {
        free = subtract(&free, taken);
    }
    free.sort_by_key(|r| std::cmp::Reverse(u32::from(*r.end()) - u32::from(*r.start())));
    free.truncate(2);
    free.sort_by_key(|r| *r.start());
    if free.is_empty() {
        return Err(PoolError::Empty {
            node_ports: show(node_ports),
            ephemeral: show(ephemeral),
        });
    }
    let mut out = [PortRange::EMPTY; 2];
    for (o, r) in out.iter_mut().zip(free) {
        *o = PortRange::new(*r.start(), *r.end());
    }
    Ok(out)
}

/// `ranges` without the ports of `taken`.
fn subtract(
    ranges: &[RangeInclusive<u16>],
    taken: &RangeInclusive<u16>,
) -> Vec<RangeInclusive<u16>> {
    let mut out = Vec::new();
    for r in ranges {
        if taken.end() < r.start() || taken.start() > r.end() {
            out.push(r.clone());
            continue;
        }
        if taken.start() > r.start() {
            out.push(*r.start()..=taken.start() - 1);
        }
        if taken.end() < r.end() {
            out.push(taken.end() + 1..=*r.end());
        }
    }
    out
}

/// Checks an explicit pool against the NodePort range.
pub fn check(pool: &[PortRange; 2], node_ports: &RangeInclusive<u16>) -> Result<(), PoolError> {
    for r in pool.iter().filter(|r| !r.is_empty()) {
        if r.min <= *node_ports.end() && r.max >= *node_ports.start() {
            return Err(PoolError::OverlapsNodePorts {
                pool: format!("{}-{}", r.min, r.max),
                node_ports: show(node_ports),
            });
        }
    }
    Ok(())
}

/// The host's ephemeral range (`net.ipv4.ip_local_port_range`).
pub fn host_ephemeral_range(sysctls: &Sysctls) -> Result<RangeInclusive<u16>, PoolError> {
    let s = sysctls.read(LOCAL_PORT_RANGE)?;
    let mut words = s.split_whitespace().map(str::parse::<u16>);
    match (words.next(), words.next()) {
        (Some(Ok(a)), Some(Ok(b))) if a <= b => Ok(a..=b),
        _ => Err(PoolError::SysctlValue {
            key: LOCAL_PORT_RANGE,
            value: s.trim().to_string(),
        }),
    }
}

/// The ports of `wanted` that `reserved` (a kernel port list) lacks, as
/// ranges.
fn missing(reserved: &[RangeInclusive<u16>], wanted: &[PortRange]) -> Vec<RangeInclusive<u16>> {
    let mut out: Vec<RangeInclusive<u16>> = wanted
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| r.min..=r.max)
        .collect();
    for r in reserved {
        out = subtract(&out, r);
    }
    out
}

fn format_list(ranges: &[RangeInclusive<u16>]) -> String {
    let mut s = String::new();
    for r in ranges {
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{}-{}", r.start(), r.end());
    }
    s
}

fn read_reserved(sysctls: &Sysctls) -> Result<Vec<RangeInclusive<u16>>, PoolError> {
    let s = sysctls.read(RESERVED_PORTS)?;
    parse_list(&s).ok_or_else(|| PoolError::SysctlValue {
        key: RESERVED_PORTS,
        value: s.trim().to_string(),
    })
}

fn write_reserved(sysctls: &Sysctls, ranges: &[RangeInclusive<u16>]) -> Result<(), PoolError> {
    // An empty write leaves the list unchanged; a lone newline clears it.
    let value = format!("{}\n", format_list(ranges));
    Ok(sysctls.write(RESERVED_PORTS, &value)?)
}

/// Adds `ranges` (the pool of `config`, and the NodePort range where binds
/// of nodePorts are refused) to the host's reserved ports and records in
/// `config` what was added (beyond what it recorded before, which is still
/// its own).
pub fn reserve(
    sysctls: &Sysctls,
    config: &mut Config,
    ranges: &[PortRange],
) -> Result<usize, PoolError> {
    let reserved = read_reserved(sysctls)?;
    let add = missing(&reserved, ranges);
    if add.is_empty() {
        return Ok(0);
    }
    let mut all = reserved;
    all.extend(add.iter().cloned());
    write_reserved(sysctls, &all)?;
    let mut recorded: Vec<RangeInclusive<u16>> = config.reserved[..config.reserved_count as usize]
        .iter()
        .map(|r| r.min..=r.max)
        .collect();
    recorded.extend(add.iter().cloned());
    recorded.truncate(RESERVED_RANGES);
    config.reserved = [PortRange::EMPTY; RESERVED_RANGES];
    for (o, r) in config.reserved.iter_mut().zip(&recorded) {
        *o = PortRange::new(*r.start(), *r.end());
    }
    config.reserved_count = recorded.len() as u32;
    Ok(add.len())
}

/// Removes from the host's reserved ports what `config` says the agent
/// added (`cleanup`).
pub fn release(sysctls: &Sysctls, config: &Config) -> Result<(), PoolError> {
    let count = (config.reserved_count as usize).min(RESERVED_RANGES);
    if count == 0 {
        return Ok(());
    }
    let mut left = read_reserved(sysctls)?;
    for r in &config.reserved[..count] {
        left = subtract(&left, &(r.min..=r.max));
    }
    write_reserved(sysctls, &left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_surrounds_the_node_port_and_ephemeral_ranges() {
        let pool = default_ranges(&(30_000..=32_767), &(32_768..=60_999)).unwrap();
        assert_eq!(
            pool,
            [PortRange::new(1024, 29_999), PortRange::new(61_000, 65_535)]
        );
        // A wide ephemeral range leaves the stretch below the NodePorts.
        let pool = default_ranges(&(30_000..=32_767), &(32_768..=65_535)).unwrap();
        assert_eq!(pool, [PortRange::new(1024, 29_999), PortRange::EMPTY]);
        // Nothing left: a clear error that names both ranges.
        let e = default_ranges(&(1024..=2000), &(1024..=65_535)).unwrap_err();
        assert!(e.to_string().contains("1024-65535"), "{e}");
    }

    #[test]
    fn explicit_ranges_parse_and_are_checked() {
        assert_eq!(
            parse_ranges("40000-49999").unwrap(),
            [PortRange::new(40_000, 49_999), PortRange::EMPTY]
        );
        assert_eq!(
            parse_ranges("2000-3000, 5000-6000").unwrap()[1],
            PortRange::new(5000, 6000)
        );
        for bad in ["", "x", "5-1", "0-10", "1-2,3-4,5-6", "70000-70001"] {
            assert!(parse_ranges(bad).is_err(), "{bad}");
        }
        let pool = parse_ranges("31000-31100").unwrap();
        assert!(check(&pool, &(30_000..=32_767)).is_err());
        assert!(check(&parse_ranges("1024-2000").unwrap(), &(30_000..=32_767)).is_ok());
    }

    #[test]
    fn reserving_adds_only_what_is_missing_and_release_removes_only_that() {
        let already = parse_list("1024-1100,60000").unwrap();
        let pool = [PortRange::new(1024, 2000), PortRange::new(61_000, 61_010)];
        let add = missing(&already, &pool);
        assert_eq!(add, vec![1101..=2000, 61_000..=61_010]);
        let mut all = already.clone();
        all.extend(add.iter().cloned());
        let mut left = all;
        for r in &add {
            left = subtract(&left, r);
        }
        assert_eq!(left, already, "release restores the admin's own list");
        assert_eq!(format_list(&add), "1101-2000,61000-61010");
    }
}
