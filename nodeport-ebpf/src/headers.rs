//! Header layouts and the parser that turns a frame into the fields the
//! datapath works with. Anything it does not serve (not IPv4, other
//! protocols) is reported as `None` and passed untouched. An IPv4 header
//! with options is parsed by the copy of the program for its length
//! (`options`). A fragment is parsed as what it is: the first one with its
//! ports, a later one without (see `frag`).

use nodeport_common::{FlowKey, PROTO_TCP, PROTO_UDP};

use crate::{error::Error, packet::Packet};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPV4_MIN_LEN: usize = 20;
/// The longest IPv4 header: IHL 15, 40 bytes of options.
pub const IPV4_MAX_LEN: usize = 60;
pub const TCP_MIN_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const PROTO_ICMP: u8 = 1;

/// Offsets inside the IPv4 header.
pub mod ip {
    pub const TOT_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SADDR: usize = 12;
    pub const DADDR: usize = 16;
    /// More-fragments flag and fragment offset, host order.
    pub const MF_AND_OFFSET: u16 = 0x3fff;
    /// The fragment offset alone, host order.
    pub const OFFSET: u16 = 0x1fff;
}

/// Where a packet stands in fragmentation ([`Parsed::frag`]).
pub mod frag {
    /// A whole datagram.
    pub const NONE: u8 = 0;
    /// The first fragment: it carries the L4 header (ports, checksum).
    pub const FIRST: u8 = 1;
    /// A later fragment: no L4 header; its ports come from the first.
    pub const LATER: u8 = 2;
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
/// (`_be`: network byte order, read natively). For a later fragment the
/// ports are zero until `frag::follow` fills them from the first fragment,
/// and `l4`, `l4_check` and `l4_hdr_len` name no header.
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
    /// IPv4 identification, as in the packet.
    pub id_be: u16,
    /// `frag::NONE`, `frag::FIRST` or `frag::LATER`.
    pub frag: u8,
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
    /// Length of the TCP/UDP segment (header and payload) in this packet,
    /// host order (of a fragment: the part it carries).
    #[inline(always)]
    pub fn l4_len(&self) -> u16 {
        self.ip_len - (self.l4 - self.l3) as u16
    }

    /// A fragment of a datagram (first or later).
    #[inline(always)]
    pub fn fragment(&self) -> bool {
        self.frag != frag::NONE
    }

    /// The packet carries an L4 header (it is not a later fragment).
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.frag != frag::LATER
    }
}

/// Parses Ethernet, IPv4 and the TCP/UDP ports of a frame of `frame_len`
/// bytes (XDP: the packet window; TC: the whole skb, whose tail may lie
/// outside the linear window). `Ok(None)`: a packet the datapath does not
/// serve.
///
/// `IP_HDR` is the IPv4 header length this copy of the program serves:
/// every offset behind it is a constant the verifier can follow. (A
/// variable L4 offset, tried, makes the verifier's state search over the
/// whole program exceed its limit.) A TCP or UDP packet whose header has
/// another length is `Error::IpOptions`: the programs' entry points hand
/// it to the copy for its length (`options`).
#[inline(always)]
pub fn parse<const IP_HDR: usize>(pkt: &Packet, frame_len: usize) -> Result<Option<Parsed>, Error> {
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
    let proto: u8 = pkt.read(l3 + ip::PROTO)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < IPV4_MIN_LEN {
        return Err(Error::Truncated);
    }
    if ihl != IP_HDR {
        return Err(Error::IpOptions);
    }
    let ihl = IP_HDR;
    let l4 = l3 + ihl;
    let frag_field = u16::from_be(pkt.read::<u16>(l3 + ip::FRAG_OFF)?);
    let frag = if frag_field & ip::MF_AND_OFFSET == 0 {
        frag::NONE
    } else if frag_field & ip::OFFSET == 0 {
        frag::FIRST
    } else {
        frag::LATER
    };
    let ip_len = u16::from_be(pkt.read::<u16>(l3 + ip::TOT_LEN)?);
    if usize::from(ip_len) + ETH_LEN > frame_len || usize::from(ip_len) < ihl {
        return Err(Error::BadLength);
    }
    let (l4_check, l4_hdr_len, sport_be, dport_be, tcp_flags) = if frag == frag::LATER {
        (l4, 0, 0, 0, 0)
    } else {
        // Each header is read whole through one checked pointer: with a
        // variable offset, the verifier follows a bounds check only to
        // accesses through the pointer that was checked.
        let ports: [u8; 4] = pkt.read(l4)?;
        let (l4_check, l4_hdr_len, min_hdr, tcp_flags) = if proto == PROTO_TCP {
            let tcp: [u8; TCP_MIN_LEN] = pkt.read(l4)?;
            let doff = u16::from(tcp[l4::TCP_DOFF] >> 4) * 4;
            (l4 + l4::TCP_CHECK, doff, TCP_MIN_LEN, tcp[l4::TCP_FLAGS])
        } else {
            pkt.read::<[u8; UDP_LEN]>(l4)?;
            (l4 + l4::UDP_CHECK, UDP_LEN as u16, UDP_LEN, 0)
        };
        // The lengths must agree with each other and with the frame, as
        // the kernel requires before it looks at a packet (ip_rcv_core,
        // tcp_v4_rcv); anything else goes to the stack, which drops it.
        if usize::from(l4_hdr_len) < min_hdr || usize::from(ip_len) < ihl + usize::from(l4_hdr_len)
        {
            return Err(Error::BadLength);
        }
        (
            l4_check,
            l4_hdr_len,
            u16::from_ne_bytes([ports[l4::SPORT], ports[l4::SPORT + 1]]),
            u16::from_ne_bytes([ports[l4::DPORT], ports[l4::DPORT + 1]]),
            tcp_flags,
        )
    };
    Ok(Some(Parsed {
        l3,
        l4,
        proto,
        ttl: pkt.read(l3 + ip::TTL)?,
        saddr_be: pkt.read(l3 + ip::SADDR)?,
        daddr_be: pkt.read(l3 + ip::DADDR)?,
        sport_be,
        dport_be,
        l4_check,
        tcp_flags,
        ip_len,
        l4_hdr_len,
        id_be: pkt.read(l3 + ip::ID)?,
        frag,
    }))
}
