//! A testkit for the datapath's programs under `BPF_PROG_TEST_RUN`, for the
//! table-driven tests of the agent's datapath and for xtask's per-packet cost
//! benchmark alike:
//!
//! - [`Frame`]: Ethernet + IPv4 + TCP/UDP frames built byte by byte (flags,
//!   IP and TCP options, full or partial checksums), every one parsed back
//!   and checked by an independent parser ([`etherparse`]).
//! - [`assert_checksums`] and [`assert_partial_seed`]: the same parser's
//!   verdict on the IPv4 header and L4 checksums of a frame a program wrote.
//! - [`PrivateNetns`]: the calling thread in a network namespace of its own
//!   with the small topology the programs' FIB lookups see, left on drop;
//!   [`on_own_thread`] gives a test or a benchmark such a thread.
//! - [`Datapath`]: the object loaded (its maps private, unpinned) with its
//!   maps at hand, seeding helpers, runs of a program on a frame (verdict,
//!   output bytes, the kernel's duration) and the program's counters.
//!
//! The eBPF object comes in as bytes: this crate does not build it (the
//! agent's build script does, with the eBPF toolchain).

use std::error::Error as StdError;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::{Program, TestRun as _, TestRunOptions};
use aya::{Ebpf, EbpfLoader, Pod};
use etherparse::checksum::Sum16BitWords;
use etherparse::{
    EtherType, Ethernet2HeaderSlice, Icmpv4Slice, IpNumber, Ipv4Slice, TcpSlice, UdpSlice,
};
use nodeport_common::{
    Backend, BackendKey, BackendStats, Config, CtEntry, Device, DeviceKey, FlowKey, Frontend,
    FrontendKey, NODE_ADDR_F_NODEPORT, NodeAddr, NodeAddrKey, PROTO_TCP, PROTO_UDP, PortRange,
    RevNat, ServiceStats, ServiceStatsKey, ServiceStatsSlot, Slot, SlotKey, checksum, names,
    programs, stat,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The device of [`PrivateNetns`]'s topology the programs run on.
pub const DEVICE: &str = "np0";
/// The node: `np0`'s address and MAC.
pub const NODE: [u8; 4] = [10, 200, 0, 11];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
/// A client on the node's LAN, with a neighbour entry.
pub const CLIENT: [u8; 4] = [10, 200, 0, 2];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Another node, with a neighbour entry; it routes pod CIDR 10.244.2.0/24.
pub const OTHER_NODE: [u8; 4] = [10, 200, 0, 12];
pub const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];

/// The topology of [`PrivateNetns`] (addresses and MACs as the constants
/// above say).
const TOPOLOGY: &str = "ip link set lo up \
    && ip link add np0 address 02:00:00:00:00:11 type veth peer name np1 \
    && ip link set np1 up \
    && ip link set np0 up \
    && ip addr add 10.200.0.11/24 dev np0 \
    && ip neigh add 10.200.0.12 lladdr 02:00:00:00:00:12 dev np0 nud permanent \
    && ip neigh add 10.200.0.2 lladdr 02:00:00:00:00:02 dev np0 nud permanent \
    && ip route add 10.244.2.0/24 via 10.200.0.12 \
    && echo 1 > /proc/sys/net/ipv4/ip_forward";

/// What went wrong, with the step it went wrong in.
pub struct Error {
    what: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    fn msg(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    fn wrap(what: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// The step and every cause, on one line (what `expect` shows).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        let mut cause = self.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: StdError + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::wrap(what(), e))
    }
}

/// An address as the maps hold it: network order, read natively.
#[must_use]
pub fn be(addr: impl Into<Ipv4Addr>) -> u32 {
    u32::from_ne_bytes(addr.into().octets())
}

/// The key of a NodePort frontend (any node address).
#[must_use]
pub fn node_port(port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr_be: 0,
        port_be: port.to_be(),
        proto,
        pad: 0,
    }
}

/// A backend at `addr:port`.
#[must_use]
pub fn backend(addr: impl Into<Ipv4Addr>, port: u16, flags: u8) -> Backend {
    Backend {
        addr_be: be(addr),
        port_be: port.to_be(),
        flags,
        pad: 0,
    }
}

/// The key of a flow (conntrack) or of a reply (reverse NAT).
#[must_use]
pub fn flow(
    saddr: impl Into<Ipv4Addr>,
    sport: u16,
    daddr: impl Into<Ipv4Addr>,
    dport: u16,
    proto: u8,
) -> FlowKey {
    FlowKey {
        saddr_be: be(saddr),
        daddr_be: be(daddr),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        pad: [0; 3],
    }
}

/// An Ethernet + IPv4 + TCP/UDP frame description; [`Frame::bytes`] builds
/// it.
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
    pub window: u16,
    /// TCP options (a multiple of 4 bytes).
    pub tcp_options: Vec<u8>,
    /// UDP sent without a checksum (zero).
    pub udp_no_checksum: bool,
    /// The L4 checksum field holds the seed a sender with checksum offload
    /// leaves (the folded pseudo-header sum, `CHECKSUM_PARTIAL`) instead of
    /// the checksum.
    pub partial_checksum: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A SYN from `saddr` (the client's MAC) to `daddr` (the node's MAC).
    pub fn tcp(
        saddr: impl Into<Ipv4Addr>,
        sport: u16,
        daddr: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Self {
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
            window: 64240,
            tcp_options: Vec::new(),
            udp_no_checksum: false,
            partial_checksum: false,
            payload: Vec::new(),
        }
    }

    /// A datagram carrying "hello", otherwise as [`Frame::tcp`].
    pub fn udp(
        saddr: impl Into<Ipv4Addr>,
        sport: u16,
        daddr: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Self {
        Self {
            proto: PROTO_UDP,
            payload: b"hello".to_vec(),
            ..Self::tcp(saddr, sport, daddr, dport)
        }
    }

    /// The seed of a partial checksum for this frame's addresses, as the
    /// bytes of the checksum field.
    #[must_use]
    pub fn seed(&self, l4_len: usize) -> [u8; 2] {
        checksum::partial_seed(be(self.saddr), be(self.daddr), self.proto, l4_len as u16)
            .to_ne_bytes()
    }

    /// The TCP/UDP segment.
    #[must_use]
    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        let at = if self.proto == PROTO_TCP {
            assert!(
                self.tcp_options.len().is_multiple_of(4) && self.tcp_options.len() <= 40,
                "TCP options are whole 32-bit words, at most 10"
            );
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&self.ack.to_be_bytes());
            l4.push((((20 + self.tcp_options.len()) / 4) << 4) as u8);
            l4.push(self.tcp_flags);
            l4.extend_from_slice(&self.window.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]);
            l4.extend_from_slice(&self.tcp_options);
            16
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            6
        };
        l4.extend_from_slice(&self.payload);
        if self.partial_checksum {
            let seed = self.seed(l4.len());
            l4[at..at + 2].copy_from_slice(&seed);
        } else if self.proto == PROTO_TCP || !self.udp_no_checksum {
            let c = checksum::l4_ipv4(self.saddr.octets(), self.daddr.octets(), self.proto, &l4);
            // UDP sends a computed zero as all ones (RFC 768).
            let c = if c == 0 && self.proto == PROTO_UDP {
                0xffff
            } else {
                c
            };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        l4
    }

    /// The frame's bytes, checked against the description by an independent
    /// parser (panics if they disagree).
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        assert!(
            self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40,
            "IP options are whole 32-bit words, at most 10"
        );
        let l4 = self.l4_bytes();
        let ihl = 20 + self.ip_options.len();
        let ip = self.ipv4_header(ihl + l4.len(), self.frag);

        let mut f = Vec::with_capacity(14 + ip.len() + l4.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        if let Err(e) = self.check(&f) {
            panic!("the frame built does not parse back as {self:?}: {e}\n{f:02x?}");
        }
        f
    }

    /// The frame's datagram split into IPv4 fragments of at most `chunk`
    /// bytes of it each (a multiple of 8), in order; the IP options are
    /// copied into every fragment (as the kernel copies the ones that say
    /// so). Each fragment's IPv4 header checksum is checked.
    #[must_use]
    pub fn fragments(&self, chunk: usize) -> Vec<Vec<u8>> {
        assert!(
            chunk.is_multiple_of(8) && chunk > 0,
            "fragments hold multiples of 8 bytes"
        );
        let datagram = self.l4_bytes();
        let ihl = 20 + self.ip_options.len();
        let pieces: Vec<&[u8]> = datagram.chunks(chunk).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let more = if i + 1 < pieces.len() { 0x2000 } else { 0 };
                let word = more | ((i * chunk / 8) as u16);
                let mut f = Vec::with_capacity(14 + ihl + piece.len());
                f.extend_from_slice(&self.dst_mac);
                f.extend_from_slice(&self.src_mac);
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.extend_from_slice(&self.ipv4_header(ihl + piece.len(), word));
                f.extend_from_slice(piece);
                assert_ipv4_header_checksum(&f);
                f
            })
            .collect()
    }

    /// The IPv4 header for `tot_len` bytes with flags and offset `frag`.
    fn ipv4_header(&self, tot_len: usize, frag: u16) -> Vec<u8> {
        let ihl = 20 + self.ip_options.len();
        let mut ip = Vec::with_capacity(ihl);
        ip.push(0x40 | (ihl / 4) as u8);
        ip.push(0);
        ip.extend_from_slice(&(tot_len as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.saddr.octets());
        ip.extend_from_slice(&self.daddr.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = checksum::compute(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip
    }

    /// Parses `frame` with etherparse and compares every field and checksum
    /// with the description.
    fn check(&self, frame: &[u8]) -> Result<(), String> {
        let parsed = parse(frame)?;
        let eth = &parsed.eth;
        same(
            "MACs",
            (eth.destination(), eth.source()),
            (self.dst_mac, self.src_mac),
        )?;
        let h = parsed.ip.header();
        same(
            "IPv4 header",
            (
                h.identification(),
                h.dont_fragment(),
                h.more_fragments(),
                h.fragments_offset().value(),
                h.ttl(),
                h.protocol().0,
                h.source_addr(),
                h.destination_addr(),
                h.options(),
            ),
            (
                self.ip_id,
                self.frag & 0x4000 != 0,
                self.frag & 0x2000 != 0,
                self.frag & 0x1fff,
                self.ttl,
                self.proto,
                self.saddr,
                self.daddr,
                &self.ip_options[..],
            ),
        )?;
        let l4 = parsed.ip.payload().payload;
        let field = match &parsed.l4 {
            L4::Tcp(t) => {
                let flags = [
                    t.fin(),
                    t.syn(),
                    t.rst(),
                    t.psh(),
                    t.ack(),
                    t.urg(),
                    t.ece(),
                    t.cwr(),
                ]
                .iter()
                .enumerate()
                .fold(0u8, |acc, (bit, set)| acc | (u8::from(*set) << bit));
                same(
                    "TCP header",
                    (
                        t.source_port(),
                        t.destination_port(),
                        t.sequence_number(),
                        t.acknowledgment_number(),
                        flags,
                        t.window_size(),
                        t.options(),
                        t.payload(),
                    ),
                    (
                        self.sport,
                        self.dport,
                        self.seq,
                        self.ack,
                        self.tcp_flags,
                        self.window,
                        &self.tcp_options[..],
                        &self.payload[..],
                    ),
                )?;
                t.checksum()
            }
            L4::Udp(u) => {
                same(
                    "UDP header",
                    (
                        u.source_port(),
                        u.destination_port(),
                        usize::from(u.length()),
                        u.payload(),
                    ),
                    (self.sport, self.dport, l4.len(), &self.payload[..]),
                )?;
                u.checksum()
            }
            L4::Icmp(_) => return Err("an ICMP frame".into()),
        };
        if self.partial_checksum {
            same("partial checksum seed", field, pseudo_header_sum(&parsed))
        } else if self.proto == PROTO_UDP && self.udp_no_checksum {
            same("UDP checksum (none)", field, 0)
        } else {
            verify(&parsed)
        }
    }
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "called with tuples built in place"
)]
fn same<T: PartialEq + fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: parsed {got:?}, described {want:?}"))
    }
}

/// A frame as etherparse reads it.
struct Parsed<'a> {
    eth: Ethernet2HeaderSlice<'a>,
    ip: Ipv4Slice<'a>,
    l4: L4<'a>,
}

enum L4<'a> {
    Tcp(TcpSlice<'a>),
    Udp(UdpSlice<'a>),
    Icmp(Icmpv4Slice<'a>),
}

/// Parses an Ethernet + IPv4 + TCP/UDP/ICMP frame (the IPv4 total length
/// bounds the L4 segment).
fn parse(frame: &[u8]) -> Result<Parsed<'_>, String> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|e| format!("Ethernet: {e}"))?;
    if eth.ether_type() != EtherType::IPV4 {
        return Err(format!("ethertype {:?}, not IPv4", eth.ether_type()));
    }
    let ip =
        Ipv4Slice::from_slice(&frame[eth.slice().len()..]).map_err(|e| format!("IPv4: {e}"))?;
    let l4 = ip.payload().payload;
    let l4 = match ip.payload().ip_number {
        IpNumber::TCP => L4::Tcp(TcpSlice::from_slice(l4).map_err(|e| format!("TCP: {e}"))?),
        IpNumber::UDP => L4::Udp(UdpSlice::from_slice(l4).map_err(|e| format!("UDP: {e}"))?),
        IpNumber::ICMP => L4::Icmp(Icmpv4Slice::from_slice(l4).map_err(|e| format!("ICMP: {e}"))?),
        p => return Err(format!("IP protocol {}", p.0)),
    };
    Ok(Parsed { eth, ip, l4 })
}

/// The IPv4 header checksum of a parsed frame, and its TCP, UDP (unless
/// zero: none) or ICMP checksum, as etherparse computes them.
fn verify(p: &Parsed<'_>) -> Result<(), String> {
    let h = p.ip.header();
    same(
        "IPv4 header checksum",
        h.header_checksum(),
        h.to_header().calc_header_checksum(),
    )?;
    let (src, dst) = (h.source(), h.destination());
    match &p.l4 {
        L4::Tcp(t) => {
            let want = t
                .calc_checksum_ipv4(src, dst)
                .map_err(|e| format!("TCP checksum: {e}"))?;
            same("TCP checksum", t.checksum(), want)
        }
        L4::Udp(u) if u.checksum() == 0 => Ok(()),
        L4::Udp(u) => {
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(src, dst, u.payload())
                .map_err(|e| format!("UDP checksum: {e}"))?;
            same("UDP checksum", u.checksum(), want)
        }
        L4::Icmp(i) => same(
            "ICMP checksum",
            i.checksum(),
            i.icmp_type().calc_checksum(i.payload()),
        ),
    }
}

/// The pseudo-header sum of a parsed frame's segment, folded and not
/// inverted: the seed of a partial checksum, as the field reads.
fn pseudo_header_sum(p: &Parsed<'_>) -> u16 {
    let h = p.ip.header();
    let len = p.ip.payload().payload.len() as u16;
    let sum = Sum16BitWords::new()
        .add_4bytes(h.source())
        .add_4bytes(h.destination())
        .add_2bytes([0, h.protocol().0])
        .add_2bytes(len.to_be_bytes());
    // Native-order words summed; as a value of the big-endian field.
    (!sum.ones_complement()).to_be()
}

/// An Ethernet + IPv4 + ICMP error frame (`icmp_type`, `code`, the 4
/// bytes after the checksum `rest`, e.g. the next-hop MTU of
/// "fragmentation needed") from `saddr` to `daddr` quoting `quote` (the
/// offending IPv4 packet or its first bytes), every checksum computed from
/// scratch.
#[must_use]
#[allow(clippy::too_many_arguments, reason = "the fields of one ICMP error")]
pub fn icmp_error(
    macs: ([u8; 6], [u8; 6]),
    saddr: impl Into<Ipv4Addr>,
    daddr: impl Into<Ipv4Addr>,
    ttl: u8,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let c = checksum::compute(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, ttl, 1, 0, 0]);
    ip.extend_from_slice(&saddr.into().octets());
    ip.extend_from_slice(&daddr.into().octets());
    let c = checksum::compute(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + ip.len() + icmp.len());
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Asserts that the IPv4 header checksum and the TCP/UDP/ICMP checksum of
/// `frame` (Ethernet first) are right, as etherparse computes them.
pub fn assert_checksums(frame: &[u8]) {
    if let Err(e) = parse(frame).and_then(|p| verify(&p)) {
        panic!("{e}: {frame:02x?}");
    }
}

/// Asserts that the IPv4 header checksum of `frame` (Ethernet first) is
/// right, as etherparse computes it.
pub fn assert_ipv4_header_checksum(frame: &[u8]) {
    let check = || -> Result<(), String> {
        let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|e| e.to_string())?;
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&frame[eth.slice().len()..])
            .map_err(|e| e.to_string())?;
        same(
            "IPv4 header checksum",
            ip.header_checksum(),
            ip.to_header().calc_header_checksum(),
        )
    };
    if let Err(e) = check() {
        panic!("{e}: {frame:02x?}");
    }
}

/// Reassembles IPv4 fragment frames (in any order, all of one datagram)
/// into the whole frame: the first fragment's Ethernet and IPv4 header
/// (flags and offset cleared, length and checksum made whole) and the
/// fragments' data by offset. Panics on a gap, an overlap or a bad header
/// checksum.
#[must_use]
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, bool, &[u8], &[u8])> = frames
        .iter()
        .map(|f| {
            assert_ipv4_header_checksum(f);
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
            let word = u16::from_be_bytes([f[20], f[21]]);
            (
                usize::from(word & 0x1fff) * 8,
                word & 0x2000 != 0,
                &f[..14 + ihl],
                &f[14 + ihl..14 + tot],
            )
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut data = Vec::new();
    for (offset, _, _, piece) in &parts {
        assert_eq!(
            *offset,
            data.len(),
            "fragments leave a gap or overlap: {frames:02x?}"
        );
        data.extend_from_slice(piece);
    }
    assert!(
        parts.last().is_some_and(|p| !p.1),
        "the last fragment has more-fragments set"
    );
    let mut head = parts[0].2.to_vec();
    let ihl = head.len() - 14;
    head[16..18].copy_from_slice(&((ihl + data.len()) as u16).to_be_bytes());
    head[20..22].copy_from_slice(&[0, 0]);
    head[24..26].copy_from_slice(&[0, 0]);
    let c = checksum::compute(&head[14..]);
    head[24..26].copy_from_slice(&c.to_be_bytes());
    head.extend_from_slice(&data);
    head
}

/// Asserts that the L4 checksum field of `frame` holds the partial seed for
/// its (rewritten) addresses, and its IPv4 header checksum is right.
pub fn assert_partial_seed(frame: &[u8]) {
    let check = |p: &Parsed<'_>| {
        let h = p.ip.header();
        same(
            "IPv4 header checksum",
            h.header_checksum(),
            h.to_header().calc_header_checksum(),
        )?;
        let field = match &p.l4 {
            L4::Tcp(t) => t.checksum(),
            L4::Udp(u) => u.checksum(),
            L4::Icmp(_) => return Err("an ICMP frame has no partial checksum".into()),
        };
        same("partial checksum seed", field, pseudo_header_sum(p))
    };
    if let Err(e) = parse(frame).and_then(|p| check(&p)) {
        panic!("{e}: {frame:02x?}");
    }
}

/// Runs `f` on a new thread (scoped: `f` may borrow) and returns what it
/// returned, or its panic. For [`PrivateNetns`], which changes the calling
/// thread's namespace.
pub fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> std::thread::Result<T> {
    std::thread::scope(|s| s.spawn(f).join())
}

fn sh(cmd: &str) -> Result<(), Error> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .context(|| format!("running `{cmd}`"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The calling thread in a network namespace of its own, with device `np0`
/// (the node, 10.200.0.11/24, [`NODE_MAC`]), neighbour entries for the
/// client 10.200.0.2 and the other node 10.200.0.12, a route to pod CIDR
/// 10.244.2.0/24 via the other node, and forwarding on. Processes the
/// thread starts run in it too. On drop the thread goes back to the
/// namespace it came from (the private one goes with its last user).
pub struct PrivateNetns {
    original: File,
    ifindex: u32,
}

impl PrivateNetns {
    /// Moves the calling thread (best a thread of its own: see
    /// [`on_own_thread`]) into a new network namespace and builds the
    /// topology. Needs root.
    pub fn enter() -> Result<Self, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::msg(
                "a private network namespace and BPF programs need root: run as root, e.g. via `cargo xtask test`",
            ));
        }
        let original = File::open("/proc/thread-self/ns/net")
            .context(|| "opening the thread's network namespace".into())?;
        // SAFETY: moves only the calling thread into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Error::wrap(
                "unshare(CLONE_NEWNET)",
                std::io::Error::last_os_error(),
            ));
        }
        // From here on, drop takes the thread back.
        let mut ns = Self {
            original,
            ifindex: 0,
        };
        sh(TOPOLOGY)?;
        let name = CString::new(DEVICE).expect("no NUL in the device name");
        // SAFETY: a valid C string.
        ns.ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ns.ifindex == 0 {
            return Err(Error::msg(format!("{DEVICE} has no ifindex")));
        }
        Ok(ns)
    }

    /// The ifindex of `np0`.
    #[must_use]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Runs `cmd` with `sh -c` in the namespace, e.g. to add routes.
    pub fn sh(&self, cmd: &str) -> Result<(), Error> {
        sh(cmd)
    }
}

impl Drop for PrivateNetns {
    fn drop(&mut self) {
        // SAFETY: the fd is an open network namespace file.
        if unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "cannot return to the original network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// One `BPF_PROG_TEST_RUN` call's outcome.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// The program's return value.
    pub verdict: u32,
    /// The kernel's measure: the average per repetition.
    pub duration: Duration,
    /// Bytes written to the output buffer.
    pub data_len: usize,
}

/// The datapath object loaded with its maps private to this process (none
/// pinned), and the maps the tests and benchmarks write and read.
pub struct Datapath {
    /// The object, with its programs and the maps not taken out of it into
    /// the fields below. `devices` and `config` stay here and are opened
    /// when written ([`Datapath::device`], [`Datapath::snat_pool`]), so a
    /// run that never writes them does not depend on their value layout.
    pub ebpf: Ebpf,
    /// The device the XDP program sees frames arrive on.
    pub ifindex: u32,
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub slots: HashMap<MapData, SlotKey, Slot>,
    pub backends: HashMap<MapData, BackendKey, Backend>,
    pub conntrack: HashMap<MapData, FlowKey, CtEntry>,
    pub rev_nat: HashMap<MapData, FlowKey, RevNat>,
    pub node_addrs: HashMap<MapData, NodeAddrKey, NodeAddr>,
    pub stats: PerCpuArray<MapData, u64>,
}

fn take_hash<K: Pod, V: Pod>(ebpf: &mut Ebpf, name: &str) -> Result<HashMap<MapData, K, V>, Error> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::msg(format!("no map {name} in the object")))?;
    HashMap::try_from(map).context(|| format!("map {name}"))
}

/// Loads program `name` (XDP, TC or tracepoint) into the kernel; returns a
/// descriptor of it.
fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<aya::programs::ProgramFd, Error> {
    // A program loaded already (the XDP program is its own tail-call
    // target) is taken as it is.
    macro_rules! load_once {
        ($p:expr) => {
            (|| -> Result<aya::programs::ProgramFd, aya::programs::ProgramError> {
                if $p.fd().is_err() {
                    $p.load()?;
                }
                Ok($p.fd()?.try_clone()?)
            })()
        };
    }
    let fd = match ebpf.program_mut(name) {
        Some(Program::Xdp(p)) => load_once!(p),
        Some(Program::SchedClassifier(p)) => load_once!(p),
        Some(Program::TracePoint(p)) => load_once!(p),
        Some(_) => {
            return Err(Error::msg(format!(
                "{name}: not an XDP, TC or tracepoint program"
            )));
        }
        None => return Err(Error::msg(format!("no program {name} in the object"))),
    };
    fd.context(|| format!("the verifier refuses {name}"))
}

impl Datapath {
    /// Loads `object` with the given maps resized (`max_entries`), loads
    /// `programs` (XDP, TC or tracepoint) into the kernel, and takes the
    /// maps. Frames run through the XDP program arrive on `ifindex`.
    pub fn load(
        object: &[u8],
        ifindex: u32,
        programs: &[&str],
        max_entries: &[(&str, u32)],
    ) -> Result<Self, Error> {
        let mut loader = EbpfLoader::new();
        for (name, n) in max_entries {
            loader.map_max_entries(name, *n);
        }
        let mut ebpf = loader
            .load(object)
            .context(|| "loading the datapath object".into())?;
        for name in programs {
            load_program(&mut ebpf, name)?;
        }
        // IPv4 headers with options, as the agent sets them up (the
        // program arrays the main programs tail-call into).
        for (map, caller, entries) in programs::PROGRAM_ARRAYS {
            if !programs.contains(&caller) {
                continue;
            }
            for &(index, name) in entries {
                let fd = load_program(&mut ebpf, name)?;
                let array = ebpf
                    .map_mut(map)
                    .ok_or_else(|| Error::msg(format!("no map {map} in the object")))?;
                aya::maps::ProgramArray::try_from(array)
                    .and_then(|mut a| a.set(index, &fd, 0))
                    .context(|| format!("{name} at index {index} of {map}"))?;
            }
        }
        let stats = ebpf
            .take_map(names::STATS)
            .ok_or_else(|| Error::msg("no stats map in the object"))?;
        Ok(Self {
            ifindex,
            frontends: take_hash(&mut ebpf, names::FRONTENDS)?,
            slots: take_hash(&mut ebpf, names::BACKEND_SLOTS)?,
            backends: take_hash(&mut ebpf, names::BACKENDS)?,
            conntrack: take_hash(&mut ebpf, names::CONNTRACK)?,
            rev_nat: take_hash(&mut ebpf, names::REV_NAT)?,
            node_addrs: take_hash(&mut ebpf, names::NODE_ADDRS)?,
            stats: PerCpuArray::try_from(stats).context(|| "stats map".into())?,
            ebpf,
        })
    }

    /// Makes `addr` a node address that serves NodePorts.
    pub fn node_addr(&mut self, addr: impl Into<Ipv4Addr>) -> Result<(), Error> {
        self.node_addrs
            .insert(
                NodeAddrKey { addr_be: be(addr) },
                NodeAddr {
                    flags: NODE_ADDR_F_NODEPORT,
                },
                0,
            )
            .context(|| "node address".into())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::msg(format!("no map {name} in the object")))
    }

    /// Describes the device to the datapath: its MAC and `flags`.
    pub fn device(&mut self, mac: [u8; 6], flags: u32) -> Result<(), Error> {
        self.device_with_addr(mac, flags, Ipv4Addr::UNSPECIFIED)
    }

    /// [`Datapath::device`] with the device's IPv4 address (the SNAT source
    /// of flows to external frontends).
    pub fn device_with_addr(
        &mut self,
        mac: [u8; 6],
        flags: u32,
        addr: Ipv4Addr,
    ) -> Result<(), Error> {
        let ifindex = self.ifindex;
        let mut devices: HashMap<_, DeviceKey, Device> =
            HashMap::try_from(self.map_mut(names::DEVICES)?).context(|| "devices map".into())?;
        let device = Device {
            flags,
            mac,
            pad: 0,
            addr_be: be(addr),
        };
        devices
            .insert(DeviceKey { ifindex }, device, 0)
            .context(|| "device".into())
    }

    /// Sets the SNAT pool (and the rest of closed flows' ports).
    pub fn snat_pool(&mut self, ranges: [PortRange; 2], rest_s: u32) -> Result<(), Error> {
        let mut config: Array<_, Config> =
            Array::try_from(self.map_mut(names::CONFIG)?).context(|| "config map".into())?;
        config
            .set(0, Config::new(ranges, rest_s), 0)
            .context(|| "config".into())
    }

    /// Sets the `CONFIG_F_*` bits of the run-time settings, keeping the rest.
    pub fn config_flags(&mut self, flags: u32) -> Result<(), Error> {
        let mut config: Array<_, Config> =
            Array::try_from(self.map_mut(names::CONFIG)?).context(|| "config map".into())?;
        let mut c = config.get(&0, 0).context(|| "config".into())?;
        c.flags = flags;
        config.set(0, c, 0).context(|| "config".into())
    }

    /// A frontend `key` with `backends` (id, backend) in its slots, in
    /// order: each backend and its slot, then the frontend.
    pub fn service(
        &mut self,
        service_id: u32,
        key: FrontendKey,
        flags: u32,
        affinity_timeout_s: u32,
        backends: &[(u32, Backend)],
    ) -> Result<(), Error> {
        for (slot, (id, backend)) in backends.iter().enumerate() {
            self.backends
                .insert(BackendKey { backend_id: *id }, *backend, 0)
                .context(|| format!("backend {id}"))?;
            self.slots
                .insert(
                    SlotKey {
                        service_id,
                        slot: u32::try_from(slot).expect("slot index fits"),
                    },
                    Slot { backend_id: *id },
                    0,
                )
                .context(|| format!("slot {slot} of service {service_id}"))?;
        }
        self.frontends
            .insert(
                key,
                Frontend {
                    service_id,
                    backend_count: u32::try_from(backends.len()).expect("backend count fits"),
                    flags,
                    affinity_timeout_s,
                },
                0,
            )
            .context(|| format!("frontend of service {service_id}"))
    }

    /// The `xdp_md` of a frame of `len` bytes received on the device.
    #[must_use]
    pub fn xdp_md(&self, len: usize) -> [u8; 24] {
        let fields = [0, len as u32, 0, self.ifindex, 0, 0];
        let mut md = [0u8; 24];
        for (chunk, v) in md.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
        md
    }

    /// One `BPF_PROG_TEST_RUN` call of program `prog` (XDP or TC) on `data`
    /// with context `ctx`, `repeat` times; the output goes to `out`.
    pub fn test_run(
        &self,
        prog: &str,
        data: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
        out: &mut [u8],
    ) -> Result<RunResult, Error> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(data);
        opts.data_out = Some(out);
        opts.ctx_in = ctx;
        opts.repeat = repeat;
        let r = match self.ebpf.program(prog) {
            Some(Program::Xdp(p)) => p.test_run(opts),
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(_) => return Err(Error::msg(format!("{prog}: not an XDP or TC program"))),
            None => return Err(Error::msg(format!("no program {prog} in the object"))),
        }
        .context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
        Ok(RunResult {
            verdict: r.return_value,
            duration: r.duration,
            data_len: r.data_size_out as usize,
        })
    }

    /// XDP program `prog` on `frame` as received on the device, `repeat`
    /// times.
    pub fn run_xdp(
        &self,
        prog: &str,
        frame: &[u8],
        repeat: u32,
        out: &mut [u8],
    ) -> Result<RunResult, Error> {
        self.test_run(prog, frame, Some(&self.xdp_md(frame.len())), repeat, out)
    }

    /// The XDP ingress program on `frame`: verdict and output (with the
    /// metadata in front of the frame, if the program left any).
    #[must_use]
    pub fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 4096];
        let r = self
            .run_xdp(programs::XDP_INGRESS, frame, 1, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        out.truncate(r.data_len);
        (r.verdict, out)
    }

    /// The TC egress program on `frame` (no context): verdict and output.
    #[must_use]
    pub fn tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 4096];
        let r = self
            .test_run(programs::TC_EGRESS, frame, None, 1, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        out.truncate(r.data_len);
        (r.verdict, out)
    }

    /// Counter `index` ([`stat`]), summed over CPUs.
    pub fn counter(&self, index: u32) -> Result<u64, Error> {
        let per_cpu = self
            .stats
            .get(&index, 0)
            .context(|| format!("counter {index}"))?;
        Ok(per_cpu.iter().sum())
    }

    /// The counter called `name` ([`stat::NAMES`]), summed over CPUs.
    #[must_use]
    pub fn counter_named(&self, name: &str) -> u64 {
        let index = stat::NAMES
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"));
        self.counter(index as u32).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The non-zero counters, by name, summed over CPUs.
    #[must_use]
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        stat::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, self.counter(i as u32).unwrap_or_else(|e| panic!("{e}"))))
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    /// Every counted (service, backend) key, summed over CPUs: its
    /// `service_stats` entry and the `svc_stats_cache` slots holding it.
    #[must_use]
    pub fn counter_entries(&self) -> Vec<(ServiceStatsKey, ServiceStats)> {
        let map: PerCpuHashMap<_, ServiceStatsKey, ServiceStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map(names::SERVICE_STATS)
                .expect("a service_stats map"),
        )
        .expect("service_stats is a per-CPU hash map");
        let mut out: std::collections::BTreeMap<ServiceStatsKey, ServiceStats> =
            std::collections::BTreeMap::new();
        for r in &map {
            let (k, per_cpu) = r.expect("a service_stats entry");
            let e = out.entry(k).or_default();
            *e = per_cpu.iter().fold(*e, |a, s| a.plus(s));
        }
        let cache: PerCpuArray<_, ServiceStatsSlot> = PerCpuArray::try_from(
            self.ebpf
                .map(names::SERVICE_STATS_CACHE)
                .expect("a svc_stats_cache map"),
        )
        .expect("svc_stats_cache is a per-CPU array");
        for index in 0..ServiceStatsSlot::SLOTS {
            let slots = cache.get(&index, 0).expect("a svc_stats_cache slot");
            for slot in slots.iter().filter(|s| s.key.service_id != 0) {
                let e = out.entry(slot.key).or_default();
                *e = e.plus(&slot.stats);
            }
        }
        out.into_iter().collect()
    }

    /// The keys of the `service_stats` hash (those a cache slot moved there).
    #[must_use]
    pub fn hashed_counter_keys(&self) -> Vec<ServiceStatsKey> {
        let map: PerCpuHashMap<_, ServiceStatsKey, ServiceStats> = PerCpuHashMap::try_from(
            self.ebpf
                .map(names::SERVICE_STATS)
                .expect("a service_stats map"),
        )
        .expect("service_stats is a per-CPU hash map");
        map.keys()
            .map(|k| k.expect("a service_stats key"))
            .collect()
    }

    /// The counters of service `service_id`: its entries (one per backend
    /// and one for none) summed (zero when the datapath made none).
    #[must_use]
    pub fn service_stats(&self, service_id: u32) -> ServiceStats {
        self.counter_entries()
            .iter()
            .filter(|(k, _)| k.service_id == service_id)
            .fold(ServiceStats::default(), |a, (_, s)| a.plus(s))
    }

    /// The counters of backend `backend_id`: the entries naming it summed.
    #[must_use]
    pub fn backend_stats(&self, backend_id: u32) -> BackendStats {
        self.counter_entries()
            .iter()
            .filter(|(k, _)| k.backend_id == backend_id)
            .fold(BackendStats::default(), |a, (_, s)| {
                a.plus(&BackendStats::of(s))
            })
    }

    /// Every conntrack entry.
    #[must_use]
    pub fn conntrack_entries(&self) -> Vec<(FlowKey, CtEntry)> {
        self.conntrack
            .iter()
            .map(|r| r.expect("conntrack entry"))
            .collect()
    }

    /// Every reverse-NAT entry.
    #[must_use]
    pub fn rev_nat_entries(&self) -> Vec<(FlowKey, RevNat)> {
        self.rev_nat
            .iter()
            .map(|r| r.expect("reverse-NAT entry"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_back_with_valid_checksums() {
        let syn = Frame::tcp(CLIENT, 40000, NODE, 31000);
        let b = syn.bytes();
        assert_eq!(b.len(), 54);
        assert_checksums(&b);
        let frames = [
            Frame {
                tcp_flags: TCP_ACK | TCP_PSH,
                payload: b"odd".to_vec(),
                tcp_options: vec![2, 4, 0x05, 0xb4],
                ip_options: vec![1, 1, 1, 0],
                ..syn.clone()
            },
            Frame::udp(CLIENT, 40001, NODE, 31000),
            Frame {
                payload: b"odd".to_vec(),
                ..Frame::udp(CLIENT, 40001, NODE, 31000)
            },
            Frame {
                udp_no_checksum: true,
                ..Frame::udp(CLIENT, 40001, NODE, 31000)
            },
        ];
        for f in &frames {
            assert_checksums(&f.bytes());
        }
        for f in [syn, Frame::udp(CLIENT, 40001, NODE, 31000)] {
            let partial = Frame {
                partial_checksum: true,
                ..f
            };
            assert_partial_seed(&partial.bytes());
        }
    }

    #[test]
    #[should_panic(expected = "TCP checksum")]
    fn a_corrupted_checksum_is_caught() {
        let mut b = Frame::tcp(CLIENT, 40000, NODE, 31000).bytes();
        b[34 + 16] ^= 0x5a;
        assert_checksums(&b);
    }

    #[test]
    fn a_udp_checksum_of_zero_is_sent_as_all_ones() {
        // Vary the payload until the computed checksum is zero.
        let f = (0..=u16::MAX)
            .map(|v| Frame {
                payload: v.to_be_bytes().to_vec(),
                ..Frame::udp(CLIENT, 40000, NODE, 31000)
            })
            .find(|f| {
                let mut l4 = f.l4_bytes();
                l4[6..8].copy_from_slice(&[0, 0]);
                checksum::l4_ipv4(f.saddr.octets(), f.daddr.octets(), PROTO_UDP, &l4) == 0
            })
            .expect("a payload whose UDP checksum is zero");
        let b = f.bytes();
        assert_eq!(&b[40..42], &[0xff, 0xff]);
        assert_checksums(&b);
    }
}
