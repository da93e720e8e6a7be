//! Fragmented datagrams. The first fragment carries the ports: when the
//! datapath serves it, its ports are remembered by (source, destination,
//! IP identification, protocol) in an LRU map, and every later fragment of
//! the datagram, which carries none, takes them back and follows the first
//! fragment's flow (conntrack, NAT of the addresses). A later fragment whose
//! first fragment was not seen is passed to the stack untouched and counted
//! (`pass_fragment`).
//!
//! A fragmented datagram's L4 checksum is complete (the sender's stack
//! completes a partial one before it fragments) and lies in the first
//! fragment only: the first fragment's checksum is updated for the whole
//! datagram's new addresses and ports; later fragments get only their IPv4
//! header rewritten.

use aya_ebpf::bindings::BPF_ANY;
use nodeport_common::{FragKey, FragPorts, stat};

use crate::{
    error::Error,
    headers::{Parsed, frag},
    maps::{FRAGMENTS, count},
};

/// Whether the lookup found the ports (bit 32 of what
/// [`nodeport_frag_ports`] returns).
const FOUND: u64 = 1 << 32;

#[inline(always)]
fn key(saddr_be: u32, daddr_be: u32, id_proto: u32) -> FragKey {
    FragKey {
        saddr_be,
        daddr_be,
        id_be: id_proto as u16,
        proto: (id_proto >> 16) as u8,
        pad: 0,
    }
}

/// The IP identification and protocol of `p`, packed as the global
/// functions take them.
#[inline(always)]
fn id_proto(p: &Parsed) -> u32 {
    u32::from(p.id_be) | u32::from(p.proto) << 16
}

/// Gives a later fragment the ports of its datagram's first fragment;
/// anything else is left as it is. A later fragment without a remembered
/// first fragment is not served.
#[inline(always)]
pub fn follow(p: &mut Parsed) -> Result<(), Error> {
    if p.frag != frag::LATER {
        return Ok(());
    }
    let found = nodeport_frag_ports(p.saddr_be, p.daddr_be, id_proto(p));
    if found & FOUND == 0 {
        return Err(Error::Fragment);
    }
    p.sport_be = found as u16;
    p.dport_be = (found >> 16) as u16;
    Ok(())
}

/// A first fragment the datapath serves: remembers its ports for the later
/// fragments.
#[inline(always)]
pub fn remember(p: &Parsed) {
    if p.frag == frag::FIRST {
        nodeport_frag_remember(
            p.saddr_be,
            p.daddr_be,
            id_proto(p),
            u32::from(p.sport_be) | u32::from(p.dport_be) << 16,
        );
    }
}

/// The ports remembered for a datagram (source port in bits 0-15,
/// destination port in 16-31, both in network order) with [`FOUND`], or 0.
/// Global functions, these two: the verifier checks each once, not on every
/// path that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_frag_ports(saddr_be: u32, daddr_be: u32, id_proto: u32) -> u64 {
    // SAFETY: the value is copied out at once.
    let Some(ports) = FRAGMENTS
        .get_ptr(key(saddr_be, daddr_be, id_proto))
        .map(|v| unsafe { *v })
    else {
        return 0;
    };
    count(stat::FRAGMENT_FOLLOWED);
    FOUND | u64::from(ports.sport_be) | u64::from(ports.dport_be) << 16
}

/// Remembers the ports (as [`nodeport_frag_ports`] returns them) of a
/// datagram whose first fragment is served. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nodeport_frag_remember(
    saddr_be: u32,
    daddr_be: u32,
    id_proto: u32,
    ports: u32,
) -> u32 {
    let ports = FragPorts {
        sport_be: ports as u16,
        dport_be: (ports >> 16) as u16,
    };
    if FRAGMENTS
        .insert(key(saddr_be, daddr_be, id_proto), ports, u64::from(BPF_ANY))
        .is_ok()
    {
        count(stat::FRAGMENT_FIRST);
    }
    0
}
