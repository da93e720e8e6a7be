//! IPv4 addresses as the maps hold them: a `u32` whose bytes are the
//! address in network order, read natively (the `_be` fields). The one
//! place where an address becomes a map field and back.

use core::net::Ipv4Addr;

/// The map form of `addr`.
#[inline(always)]
#[must_use]
pub const fn to_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The address a map field holds.
#[inline(always)]
#[must_use]
pub const fn from_be(addr_be: u32) -> Ipv4Addr {
    let b = addr_be.to_ne_bytes();
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_network_order() {
        let a = Ipv4Addr::new(10, 244, 1, 5);
        assert_eq!(to_be(a).to_ne_bytes(), [10, 244, 1, 5]);
        assert_eq!(from_be(to_be(a)), a);
    }
}
