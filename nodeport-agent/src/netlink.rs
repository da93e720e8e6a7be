//! The two netlink questions the agent asks the kernel about a device: its
//! XDP features (generic netlink family `netdev`, `NETDEV_CMD_DEV_GET`)
//! and the mode of the XDP program attached to it (rtnetlink
//! `RTM_GETLINK`, `IFLA_XDP_ATTACHED`). A small request/response client on
//! a raw netlink socket of the agent's own network namespace.

use std::io;

const NETLINK_ROUTE: i32 = 0;
const NETLINK_GENERIC: i32 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const RTM_GETLINK: u16 = 18;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `enum netdev_xdp_act` bits of `NETDEV_A_DEV_XDP_FEATURES`.
pub mod xdp_act {
    /// `XDP_PASS`, `XDP_DROP`, `XDP_TX` are supported.
    pub const BASIC: u64 = 1;
    /// The device's XDP program may redirect.
    pub const REDIRECT: u64 = 1 << 1;
    /// Frames redirected *to* the device are transmitted (for a veth: its
    /// peer has GRO or an XDP program, so it takes XDP frames).
    pub const NDO_XMIT: u64 = 1 << 2;
}

/// How an XDP program is attached to a device (`XDP_ATTACHED_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    None,
    /// Native, in the driver.
    Driver,
    /// Generic, on skbs.
    Skb,
    /// Offloaded to hardware, or several at once.
    Other,
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing the socket this value owns.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open(protocol: i32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Sends one request and returns the payload of its answer (after the
    /// 16-byte message header).
    fn request(&self, msg_type: u16, body: &[u8]) -> io::Result<Vec<u8>> {
        let len = u32::try_from(16 + body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "request too long"))?;
        let mut msg = Vec::with_capacity(len as usize);
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sends an initialised buffer of the given length.
        if unsafe { libc::send(self.0, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 65_536];
        // SAFETY: receives into a writable buffer of the given length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n.cast_unsigned();
        if n < 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short netlink answer",
            ));
        }
        let total = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(n);
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(-errno));
            }
        }
        buf.truncate(total);
        Ok(buf.split_off(16))
    }
}

/// One attribute: type, then payload padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// The attributes in `data`, as (type, payload).
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

fn genl_header(cmd: u8) -> Vec<u8> {
    vec![cmd, 1, 0, 0]
}

/// The generic netlink family id of `name`.
fn family_id(sock: &Socket, name: &str) -> io::Result<u16> {
    let mut body = genl_header(CTRL_CMD_GETFAMILY);
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    body.extend(attr(CTRL_ATTR_FAMILY_NAME, &cname));
    let answer = sock.request(GENL_ID_CTRL, &body)?;
    attrs(answer.get(4..).unwrap_or_default())
        .into_iter()
        .find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, v)| v.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no generic netlink family {name}"),
            )
        })
}

/// The XDP features (`xdp_act` bits) the kernel reports for device
/// `ifindex` (kernel 6.3 and later).
pub fn xdp_features(ifindex: u32) -> io::Result<u64> {
    let sock = Socket::open(NETLINK_GENERIC)?;
    let family = family_id(&sock, "netdev")?;
    let mut body = genl_header(NETDEV_CMD_DEV_GET);
    body.extend(attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()));
    let answer = sock.request(family, &body)?;
    attrs(answer.get(4..).unwrap_or_default())
        .into_iter()
        .find(|(k, _)| *k == NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|(_, v)| {
            v.get(..8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no XDP features in the answer"))
}

/// How an XDP program is attached to device `ifindex`.
pub fn xdp_attached(ifindex: u32) -> io::Result<XdpAttached> {
    let sock = Socket::open(NETLINK_ROUTE)?;
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&ifindex.cast_signed().to_ne_bytes());
    let answer = sock.request(RTM_GETLINK, &body)?;
    let Some(xdp) = attrs(answer.get(16..).unwrap_or_default())
        .into_iter()
        .find(|(k, _)| *k == IFLA_XDP)
        .map(|(_, v)| v)
    else {
        return Ok(XdpAttached::None);
    };
    let mode = attrs(xdp)
        .into_iter()
        .find(|(k, _)| *k == IFLA_XDP_ATTACHED)
        .and_then(|(_, v)| v.first().copied())
        .unwrap_or(0);
    Ok(match mode {
        0 => XdpAttached::None,
        1 => XdpAttached::Driver,
        2 => XdpAttached::Skb,
        _ => XdpAttached::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut data = attr(7, &[1, 2, 3]);
        data.extend(attr(9, &42u32.to_ne_bytes()));
        let parsed = attrs(&data);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], (7, &[1u8, 2, 3][..]));
        assert_eq!(parsed[1].0, 9);
        assert_eq!(parsed[1].1, &42u32.to_ne_bytes()[..]);
        // A truncated attribute ends the list instead of reading past it.
        assert!(attrs(&[200, 0, 1, 0, 5]).is_empty());
    }

    #[test]
    fn loopback_has_no_xdp_program() {
        // Needs no privilege: a query of the test's own namespace.
        assert_eq!(xdp_attached(1).expect("RTM_GETLINK lo"), XdpAttached::None);
    }
}
