//! The node's own IPv4 addresses and devices, read from the kernel of the
//! agent's network namespace.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::net::Ipv4Addr;

/// One IPv4 address of a local device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub iface: String,
    pub addr: Ipv4Addr,
}

/// Every IPv4 address on every device that is up, loopback excluded.
pub fn local_ipv4() -> std::io::Result<Vec<LocalAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        if ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0 {
            continue;
        }
        // SAFETY: non-null sockaddr from getifaddrs.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        #[allow(
            clippy::cast_ptr_alignment,
            reason = "getifaddrs returns properly aligned sockaddr_in for AF_INET"
        )]
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let iface = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push(LocalAddr { iface, addr });
    }
    // SAFETY: frees the list obtained above exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Devices holding a default route (`/proc/net/route`), in table order.
pub fn default_route_devices() -> std::io::Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/net/route")?;
    Ok(parse_default_routes(&table))
}

fn parse_default_routes(table: &str) -> Vec<String> {
    let mut devs: BTreeMap<usize, String> = BTreeMap::new();
    for (i, line) in table.lines().skip(1).enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000" {
            devs.entry(i).or_insert_with(|| cols[0].to_string());
        }
    }
    let mut out: Vec<String> = Vec::new();
    for d in devs.into_values() {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_device_is_found() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth1\t00000000\t0100C80A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_routes(table), vec!["eth1".to_string()]);
    }

    #[test]
    fn loopback_is_not_a_node_address() {
        let addrs = local_ipv4().expect("getifaddrs");
        assert!(addrs.iter().all(|a| !a.addr.is_loopback()));
    }
}
