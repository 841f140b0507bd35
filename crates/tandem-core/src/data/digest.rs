//! The replica digest: order-independent, incremental, and cheap enough to keep current on
//! every write.
//!
//! The digest is the wrapping sum of a 128-bit hash of every element of the replica: each
//! section (key and value), each stream message not yet consumed (its seq, origin and payload),
//! and the consumed position. A sum does not depend on the order elements were added in, so a
//! state transfer that copies sections in priority order while live writes overtake them ends
//! with the same digest as the primary's, and a write updates it in O(size of the write):
//! subtract the old element's hash, add the new one. Each element's hash is XXH3-128 of its
//! bytes, seeded with a hash of its key and a tag, so equal values under different keys (or a
//! section and a message with equal bytes) do not cancel out.

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

use super::MessageOrigin;

/// Tags keeping the element kinds apart.
const TAG_SECTION: u64 = 0x5345_4354_494f_4e00;
const TAG_MESSAGE: u64 = 0x4d45_5353_4147_4500;
const TAG_CONSUMED: u64 = 0x434f_4e53_554d_4500;

/// An order-independent digest of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct Digest(pub u128);

impl Digest {
    /// Adds an element's hash.
    pub fn add(&mut self, element: u128) {
        self.0 = self.0.wrapping_add(element);
    }

    /// Removes an element's hash added before.
    pub fn remove(&mut self, element: u128) {
        self.0 = self.0.wrapping_sub(element);
    }

    /// Hex form for status and logs.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", (self.0 >> 64) as u64 ^ self.0 as u64)
    }
}

/// The hash of section `key` holding `value`.
pub fn section_hash(key: &[u8], value: &[u8]) -> u128 {
    let seed = xxh3_64_with_seed(key, TAG_SECTION);
    xxh3_128_with_seed(value, seed)
}

/// The hash of stream message `seq`.
pub fn message_hash(seq: u64, origin: &MessageOrigin, payload: &[u8]) -> u128 {
    let origin_seed = xxh3_64_with_seed(origin.peer.as_bytes(), origin.origin as u64);
    let seed = TAG_MESSAGE ^ seq.rotate_left(17) ^ origin_seed;
    xxh3_128_with_seed(payload, seed)
}

/// The hash of the consumed position.
pub fn consumed_hash(consumed: u64) -> u128 {
    xxh3_128_with_seed(&consumed.to_le_bytes(), TAG_CONSUMED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Origin;

    #[test]
    fn the_sum_does_not_depend_on_order() {
        let elements = [
            section_hash(b"a", b"1"),
            section_hash(b"b", b"2"),
            section_hash(b"c", b"3"),
        ];
        let mut forward = Digest::default();
        for element in elements {
            forward.add(element);
        }
        let mut backward = Digest::default();
        for element in elements.iter().rev() {
            backward.add(*element);
        }
        assert_eq!(forward, backward);
        forward.remove(elements[1]);
        let mut two = Digest::default();
        two.add(elements[0]);
        two.add(elements[2]);
        assert_eq!(forward, two);
    }

    #[test]
    fn keys_values_and_kinds_are_kept_apart() {
        assert_ne!(section_hash(b"ab", b"c"), section_hash(b"a", b"bc"));
        assert_ne!(section_hash(b"k", b"v"), section_hash(b"k", b"w"));
        let origin = MessageOrigin {
            origin: Origin::Client,
            peer: String::new(),
        };
        assert_ne!(
            message_hash(1, &origin, b"x"),
            message_hash(2, &origin, b"x")
        );
        // Two equal sections under different keys must not cancel out.
        let mut digest = Digest::default();
        digest.add(section_hash(b"a", b"same"));
        digest.add(section_hash(b"b", b"same"));
        assert_ne!(digest, Digest::default());
    }
}
