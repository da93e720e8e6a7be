//! Building test frames byte by byte, with checksums computed from scratch,
//! and checking the checksums of frames the programs produced.

use std::net::Ipv4Addr;

use nodeport_common::{PROTO_TCP, PROTO_UDP, checksum};

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// An Ethernet + IPv4 + TCP/UDP frame description.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub ip_id: u16,
    /// Flags and fragment offset word (host order), e.g. 0x4000 = DF.
    pub frag: u16,
    /// IP options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// UDP sent without a checksum (zero).
    pub udp_no_checksum: bool,
    /// The L4 checksum field holds the seed a sender with checksum offload
    /// leaves (the folded pseudo-header sum, `CHECKSUM_PARTIAL`) instead of
    /// the checksum.
    pub partial_checksum: bool,
    pub payload: Vec<u8>,
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

impl Frame {
    pub fn tcp(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Self {
        Self {
            dst_mac: NODE_MAC,
            src_mac: CLIENT_MAC,
            saddr: saddr.into(),
            daddr: daddr.into(),
            proto: PROTO_TCP,
            sport,
            dport,
            ttl: 64,
            ip_id: 0x1234,
            frag: 0x4000,
            ip_options: Vec::new(),
            tcp_flags: TCP_SYN,
            seq: 1000,
            ack: 0,
            udp_no_checksum: false,
            partial_checksum: false,
            payload: Vec::new(),
        }
    }

    pub fn udp(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Self {
        Self {
            proto: PROTO_UDP,
            payload: b"hello".to_vec(),
            ..Self::tcp(saddr, sport, daddr, dport)
        }
    }

    /// The seed of a partial checksum for this frame's addresses, as the
    /// bytes of the checksum field.
    pub fn seed(&self, l4_len: usize) -> [u8; 2] {
        checksum::partial_seed(
            u32::from_ne_bytes(self.saddr.octets()),
            u32::from_ne_bytes(self.daddr.octets()),
            self.proto,
            l4_len as u16,
        )
        .to_ne_bytes()
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == PROTO_TCP {
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&self.ack.to_be_bytes());
            l4.push(5 << 4);
            l4.push(self.tcp_flags);
            l4.extend_from_slice(&64240u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]);
            l4.extend_from_slice(&self.payload);
            if self.partial_checksum {
                let seed = self.seed(l4.len());
                l4[16..18].copy_from_slice(&seed);
            } else {
                let c =
                    checksum::l4_ipv4(self.saddr.octets(), self.daddr.octets(), PROTO_TCP, &l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(&self.payload);
            if self.partial_checksum {
                let seed = self.seed(l4.len());
                l4[6..8].copy_from_slice(&seed);
            } else if !self.udp_no_checksum {
                let mut c =
                    checksum::l4_ipv4(self.saddr.octets(), self.daddr.octets(), PROTO_UDP, &l4);
                if c == 0 {
                    c = 0xffff;
                }
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
        }
        l4
    }

    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let ihl = 20 + self.ip_options.len();
        let mut ip = Vec::with_capacity(ihl);
        ip.push(0x40 | (ihl / 4) as u8);
        ip.push(0);
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.saddr.octets());
        ip.extend_from_slice(&self.daddr.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = checksum::compute(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }
}

/// Asserts that the L4 checksum field of `frame` holds the partial seed for
/// its (rewritten) addresses, and its IPv4 header checksum is right.
pub fn assert_partial_seed(frame: &[u8]) {
    let ip = &frame[14..34];
    assert_eq!(checksum::compute(ip), 0, "IPv4 header checksum wrong");
    let tot = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let src = u32::from_ne_bytes(frame[26..30].try_into().unwrap());
    let dst = u32::from_ne_bytes(frame[30..34].try_into().unwrap());
    let at = if frame[23] == PROTO_TCP { 34 + 16 } else { 34 + 6 };
    let want = checksum::partial_seed(src, dst, frame[23], (tot - 20) as u16).to_ne_bytes();
    assert_eq!(&frame[at..at + 2], &want, "partial checksum seed: {frame:02x?}");
}

/// Asserts that the IPv4 header checksum and the TCP/UDP/ICMP checksum of
/// `frame` are what a from-scratch computation gives.
pub fn assert_checksums(frame: &[u8]) {
    assert!(frame.len() >= 34, "frame too short: {}", frame.len());
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let ip = &frame[14..14 + ihl];
    assert_eq!(
        checksum::compute(ip),
        0,
        "IPv4 header checksum wrong: {frame:02x?}"
    );
    let tot = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let l4 = &frame[14 + ihl..14 + tot];
    let src: [u8; 4] = frame[26..30].try_into().unwrap();
    let dst: [u8; 4] = frame[30..34].try_into().unwrap();
    match frame[23] {
        1 => assert_eq!(checksum::compute(l4), 0, "ICMP checksum wrong"),
        6 => assert_eq!(
            checksum::l4_ipv4(src, dst, 6, l4),
            0,
            "TCP checksum wrong: {frame:02x?}"
        ),
        17 => {
            if l4[6..8] != [0, 0] {
                assert_eq!(checksum::l4_ipv4(src, dst, 17, l4), 0, "UDP checksum wrong");
            }
        }
        p => panic!("unexpected protocol {p}"),
    }
}
