//! Keeping the neighbour entries of remote backends' next hops present, so
//! the XDP fast path (`bpf_fib_lookup`) finds a MAC address for the first
//! packet of a flow instead of dropping it.
//!
//! An empty UDP datagram to the discard port of each remote backend makes
//! the kernel resolve the route's next hop; the entry then stays usable
//! (reachable or stale) while the agent refreshes it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use tracing::debug;

/// The discard service (RFC 863).
const DISCARD_PORT: u16 = 9;

/// Triggers neighbour resolution towards each address.
pub fn warm(addrs: &BTreeSet<Ipv4Addr>) {
    if addrs.is_empty() {
        return;
    }
    let sock = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "cannot open a socket to warm neighbours");
            return;
        }
    };
    for addr in addrs {
        if let Err(e) = sock.send_to(&[], SocketAddrV4::new(*addr, DISCARD_PORT)) {
            debug!(%addr, error = %e, "neighbour warm-up failed");
        }
    }
}
