//! Facts about the node's network devices that the datapath depends on:
//! their index, driver and MAC address (by ioctl on a socket, so they are
//! the devices of the agent's own network namespace, whatever `/sys`
//! shows).

use std::ffi::CString;
use std::io;

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// `struct ethtool_drvinfo` from `linux/ethtool.h`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The interface index of `iface`.
pub fn ifindex(iface: &str) -> io::Result<u32> {
    let name = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(idx)
}

/// An `ifreq` naming `iface`.
fn ifreq(iface: &str) -> io::Result<libc::ifreq> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src.cast_signed();
    }
    Ok(req)
}

/// Runs one device ioctl on a fresh datagram socket.
fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: a plain datagram socket for the ioctl.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `req` is a live ifreq (and whatever it points to) for the
    // duration of the call.
    let rc = unsafe { libc::ioctl(fd, request, std::ptr::from_mut(req)) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(())
}

/// The MAC address of `iface`.
pub fn mac(iface: &str) -> io::Result<[u8; 6]> {
    let mut req = ifreq(iface)?;
    ioctl(libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: SIOCGIFHWADDR filled in the hardware address.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = d.cast_unsigned();
    }
    Ok(mac)
}

/// The kernel driver behind `iface` (`veth`, `mlx5_core`, ...).
pub fn driver(iface: &str) -> io::Result<String> {
    // SAFETY: all-zero is a valid DrvInfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = ifreq(iface)?;
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    ioctl(SIOCETHTOOL, &mut req)?;
    let end = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_and_a_missing_device_does_not() {
        assert_eq!(ifindex("lo").expect("lo"), 1);
        assert!(ifindex("no-such-dev0").is_err());
    }

    #[test]
    fn loopback_mac_is_all_zero() {
        assert_eq!(mac("lo").expect("lo"), [0; 6]);
        assert!(mac("no-such-dev0").is_err());
    }
}
