//! The flow hash that picks a new flow's backend slot and its first SNAT
//! port candidate. Shared so that tests can predict the datapath's choice.

use crate::FlowKey;

/// A 32-bit mix of the 5-tuple (murmur3 finaliser over the folded words).
#[inline(always)]
#[must_use]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = k.saddr_be ^ k.daddr_be.rotate_left(11);
    h ^= (u32::from(k.sport_be) << 16 | u32::from(k.dport_be)).rotate_left(5);
    h ^= u32::from(k.proto).wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ports_spread_over_slots() {
        // 60 connections from one client over 2 slots must hit both, and
        // over 4 slots every slot, as the end-to-end tests expect.
        for slots in [2u32, 3, 4] {
            let mut seen = [0u32; 4];
            for port in 40_000u16..40_060 {
                let k = FlowKey {
                    saddr_be: u32::from_ne_bytes([10, 200, 0, 2]),
                    daddr_be: u32::from_ne_bytes([10, 200, 0, 11]),
                    sport_be: port.to_be(),
                    dport_be: 31_000u16.to_be(),
                    proto: 6,
                    pad: [0; 3],
                };
                seen[(flow_hash(&k) % slots) as usize] += 1;
            }
            assert!(
                seen[..slots as usize].iter().all(|&n| n >= 5),
                "{slots} slots: {seen:?}"
            );
        }
    }
}
