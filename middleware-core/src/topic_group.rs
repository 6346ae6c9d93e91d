//! Topic name -> multicast group (SPEC §8.3).
//!
//! eCAL 6.x receivers join, for each subscribed topic, a group derived from a 32-bit FNV-1 hash
//! of the topic name; 5.x senders sent there. 6.1 senders use the base group for every topic.

use std::net::Ipv4Addr;

/// Which mapping eCAL's `config_version` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupMapping {
    /// The default since eCAL 5.12: `(base & mask) | (hash & !mask)`.
    #[default]
    V2,
    /// The legacy mapping: octets 2..4 from the hash bytes masked by the mask's octets.
    V1,
}

/// 32-bit FNV-1 (multiply, then XOR) over the name bytes.
pub fn fnv1_32(name: &str) -> u32 {
    const OFFSET: u32 = 2_166_136_261;
    const PRIME: u32 = 16_777_619;
    name.bytes().fold(OFFSET, |h, b| h.wrapping_mul(PRIME) ^ u32::from(b))
}

/// The group a receiver joins for `topic`, given the base group and mask.
pub fn topic_group(topic: &str, base: Ipv4Addr, mask: Ipv4Addr, mapping: GroupMapping) -> Ipv4Addr {
    let h = fnv1_32(topic);
    match mapping {
        GroupMapping::V2 => {
            let base = u32::from(base);
            let mask = u32::from(mask);
            let mut g = (base & mask) | (h & !mask);
            if g == base {
                g = (base & mask) | (base.wrapping_add(1) & !mask);
            }
            Ipv4Addr::from(g)
        }
        GroupMapping::V1 => {
            let m = mask.octets();
            let first = base.octets()[0];
            let mut last = (h as u8) & m[3];
            if last < 2 {
                last = 2;
            }
            Ipv4Addr::new(first, ((h >> 16) as u8) & m[1], ((h >> 8) as u8) & m[2], last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Ipv4Addr = Ipv4Addr::new(239, 0, 0, 1);
    const MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 240);

    #[test]
    fn spec_hash_examples() {
        assert_eq!(fnv1_32("wire_small"), 0x10b4_10c2);
        assert_eq!(fnv1_32("wire_a"), 0x6cb7_4c36);
        assert_eq!(fnv1_32("wire_b"), 0x6cb7_4c35);
        assert_eq!(fnv1_32("wire_1mb"), 0x1b63_9d0f);
        assert_eq!(fnv1_32("topic3"), 0x3f34_8b51);
    }

    #[test]
    fn spec_v2_examples() {
        let g = |t| topic_group(t, BASE, MASK, GroupMapping::V2);
        assert_eq!(g("wire_small"), Ipv4Addr::new(239, 0, 0, 2));
        assert_eq!(g("wire_a"), Ipv4Addr::new(239, 0, 0, 6));
        assert_eq!(g("wire_b"), Ipv4Addr::new(239, 0, 0, 5));
        assert_eq!(g("wire_1mb"), Ipv4Addr::new(239, 0, 0, 15));
        // Low nibble 1 collides with the base group and is moved to base + 1.
        assert_eq!(g("topic3"), Ipv4Addr::new(239, 0, 0, 2));
    }

    #[test]
    fn v1_mapping() {
        // wire_a: h = 0x6cb74c36 -> 239.(0xb7 & 255).(0x4c & 255).(0x36 & 240 = 0x30)
        let g = topic_group("wire_a", BASE, MASK, GroupMapping::V1);
        assert_eq!(g, Ipv4Addr::new(239, 0xb7, 0x4c, 0x30));
        // A last octet below 2 becomes 2: wire_small's low byte 0xc2 & 0 = 0.
        let g = topic_group("wire_small", BASE, Ipv4Addr::new(255, 255, 255, 0), GroupMapping::V1);
        assert_eq!(g.octets()[3], 2);
    }
}
