//! Header layouts and the parser that turns a frame into the fields the
//! datapath works with. Anything it does not serve (not IPv4, fragments,
//! other protocols) is reported as `None` and passed untouched.

use nodeport_common::{FlowKey, PROTO_TCP, PROTO_UDP};

use crate::{error::Error, packet::Packet};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPV4_MIN_LEN: usize = 20;
pub const TCP_MIN_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const PROTO_ICMP: u8 = 1;

/// Offsets inside the IPv4 header.
pub mod ip {
    pub const TOT_LEN: usize = 2;
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SADDR: usize = 12;
    pub const DADDR: usize = 16;
    /// More-fragments flag and fragment offset, host order.
    pub const MF_AND_OFFSET: u16 = 0x3fff;
}

/// Offsets inside the TCP/UDP headers.
pub mod l4 {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const TCP_SEQ: usize = 4;
    pub const TCP_ACK: usize = 8;
    pub const TCP_DOFF: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CHECK: usize = 16;
    pub const UDP_CHECK: usize = 6;

    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK_FLAG: u8 = 0x10;
}

/// An IPv4 TCP or UDP packet, its fields as they sit in the packet
/// (`_be`: network byte order, read natively).
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Offset of the IPv4 header (after Ethernet).
    pub l3: usize,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    pub proto: u8,
    pub ttl: u8,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    /// Offset of the L4 checksum field.
    pub l4_check: usize,
    /// TCP flags (zero for UDP).
    pub tcp_flags: u8,
    /// IPv4 total length, host order; checked against the frame: the
    /// frame holds at least this many bytes after Ethernet.
    pub ip_len: u16,
    /// TCP header length in bytes (data offset × 4); 8 for UDP.
    pub l4_hdr_len: u16,
}

impl Parsed {
    /// The packet's 5-tuple as it arrived.
    #[inline(always)]
    pub fn flow(&self) -> FlowKey {
        FlowKey {
            saddr_be: self.saddr_be,
            daddr_be: self.daddr_be,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            pad: [0; 3],
        }
    }

    /// A TCP SYN without ACK: a connection is being opened.
    #[inline(always)]
    pub fn opening(&self) -> bool {
        self.tcp_flags & (l4::TCP_SYN | l4::TCP_ACK_FLAG) == l4::TCP_SYN
    }

    /// A TCP FIN or RST: the flow is ending.
    #[inline(always)]
    pub fn closing(&self) -> bool {
        self.tcp_flags & (l4::TCP_FIN | l4::TCP_RST) != 0
    }
}

impl Parsed {
    /// Length of the TCP/UDP segment (header and payload), host order.
    #[inline(always)]
    pub fn l4_len(&self) -> u16 {
        self.ip_len - IPV4_MIN_LEN as u16
    }
}

/// Parses Ethernet, IPv4 and the TCP/UDP ports of a frame of `frame_len`
/// bytes (XDP: the packet window; TC: the whole skb, whose tail may lie
/// outside the linear window). `Ok(None)`: a packet the datapath does not
/// serve.
///
/// IPv4 headers with options are not served (passed untouched, as Katran
/// does): fixed offsets keep every bounds check a constant the verifier can
/// follow, and option-carrying NodePort traffic is vanishingly rare.
#[inline(always)]
pub fn parse(pkt: &Packet, frame_len: usize) -> Result<Option<Parsed>, Error> {
    // One check covers Ethernet and the fixed IPv4 header.
    pkt.ptr_at::<[u8; ETH_LEN + IPV4_MIN_LEN]>(0)?;
    let ethertype = u16::from_be(pkt.read::<u16>(12)?);
    if ethertype != ETH_P_IP {
        return Ok(None);
    }
    let l3 = ETH_LEN;
    let vihl: u8 = pkt.read(l3)?;
    if vihl >> 4 != 4 {
        return Ok(None);
    }
    if vihl & 0x0f != 5 {
        return if vihl & 0x0f < 5 {
            Err(Error::Truncated)
        } else {
            Err(Error::IpOptions)
        };
    }
    let frag = u16::from_be(pkt.read::<u16>(l3 + ip::FRAG_OFF)?);
    if frag & ip::MF_AND_OFFSET != 0 {
        return Err(Error::Fragment);
    }
    let proto: u8 = pkt.read(l3 + ip::PROTO)?;
    let l4 = l3 + IPV4_MIN_LEN;
    let (l4_check, l4_hdr_len) = match proto {
        PROTO_TCP => {
            pkt.ptr_at::<[u8; ETH_LEN + IPV4_MIN_LEN + TCP_MIN_LEN]>(0)?;
            let doff = u16::from(pkt.read::<u8>(l4 + l4::TCP_DOFF)? >> 4) * 4;
            (l4 + l4::TCP_CHECK, doff)
        }
        PROTO_UDP => {
            pkt.ptr_at::<[u8; ETH_LEN + IPV4_MIN_LEN + UDP_LEN]>(0)?;
            (l4 + l4::UDP_CHECK, UDP_LEN as u16)
        }
        _ => return Ok(None),
    };
    // The lengths must agree with each other and with the frame, as the
    // kernel requires before it looks at a packet (ip_rcv_core,
    // tcp_v4_rcv); anything else goes to the stack, which drops it.
    let ip_len = u16::from_be(pkt.read::<u16>(l3 + ip::TOT_LEN)?);
    let min_hdr = if proto == PROTO_TCP {
        TCP_MIN_LEN
    } else {
        UDP_LEN
    };
    if usize::from(ip_len) + ETH_LEN > frame_len
        || usize::from(l4_hdr_len) < min_hdr
        || usize::from(ip_len) < IPV4_MIN_LEN + usize::from(l4_hdr_len)
    {
        return Err(Error::BadLength);
    }
    Ok(Some(Parsed {
        l3,
        l4,
        proto,
        ttl: pkt.read(l3 + ip::TTL)?,
        saddr_be: pkt.read(l3 + ip::SADDR)?,
        daddr_be: pkt.read(l3 + ip::DADDR)?,
        sport_be: pkt.read(l4 + l4::SPORT)?,
        dport_be: pkt.read(l4 + l4::DPORT)?,
        l4_check,
        tcp_flags: if proto == PROTO_TCP {
            pkt.read(l4 + l4::TCP_FLAGS)?
        } else {
            0
        },
        ip_len,
        l4_hdr_len,
    }))
}
