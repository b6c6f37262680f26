//! Key groups, bit-compatible with Apache Flink's `KeyGroupRangeAssignment`.
//!
//! ```text
//! key_group      = murmur_hash(java_hash_code(key)) % max_parallelism
//! operator_index = key_group * parallelism / max_parallelism
//! range(i)       = [ceil(i * maxP / p), floor(((i + 1) * maxP - 1) / p)]
//! ```
//!
//! A key lands on the same key group and subtask as it would in Flink. Hashing never uses
//! `RandomState`: the result must be identical across processes, runs and restarts. A user key
//! type implements [`Key`] by supplying its Java-style hash code.

use crate::ids::{KeyGroup, SubtaskIndex};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt::Debug;

/// Flink's lower bound for the default max parallelism.
pub const DEFAULT_LOWER_BOUND_MAX_PARALLELISM: u32 = 1 << 7;
/// Flink's upper bound for any max parallelism.
pub const UPPER_BOUND_MAX_PARALLELISM: u32 = 1 << 15;

/// A type records can be keyed by.
///
/// The hash must be stable: a pure function of the value, the same in every process and every
/// build. The built-in implementations follow Java's `hashCode` so key groups match Flink's.
pub trait Key: Clone + Eq + Ord + Debug + Serialize + DeserializeOwned + Send + 'static {
    /// Java's `hashCode()` of the equivalent Java value.
    fn java_hash_code(&self) -> i32;

    /// Appends the key's serialized bytes to `out`: exactly `codec::to_bytes(self)`. The keyed
    /// state backend keys its tables by these bytes; a type may write them without serde.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), crate::codec::CodecError> {
        bincode::serde::encode_into_std_write(self, out, crate::codec::config()).map(|_| ()).map_err(|e| crate::codec::CodecError::Encode(e.to_string()))
    }
}

/// A string key's bytes: a varint length, then the bytes (bincode's encoding of a string),
/// without serde.
fn encode_str_key(s: &str, out: &mut Vec<u8>) -> Result<(), crate::codec::CodecError> {
    crate::codec::put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Key for String {
    fn java_hash_code(&self) -> i32 {
        java_string_hash(self)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), crate::codec::CodecError> {
        encode_str_key(self, out)
    }
}

/// An inline small string: up to 24 bytes without a heap allocation (longer ones spill to the
/// heap). It serializes as a `str`, so its bytes — on a channel, as a state key, in a snapshot —
/// are a `String`'s, and as a [`Key`] it hashes like one: a record keyed by it lands in the same
/// key group and state entry as the equal `String`.
pub use compact_str::CompactString;

impl Key for CompactString {
    fn java_hash_code(&self) -> i32 {
        java_string_hash(self)
    }

    /// Exactly a `String`'s encoding.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), crate::codec::CodecError> {
        encode_str_key(self, out)
    }
}

impl Key for i32 {
    fn java_hash_code(&self) -> i32 {
        *self
    }
}

impl Key for i64 {
    fn java_hash_code(&self) -> i32 {
        java_long_hash(*self)
    }
}

impl Key for u32 {
    /// The Java `int` with the same bits.
    fn java_hash_code(&self) -> i32 {
        *self as i32
    }
}

impl Key for u64 {
    /// The Java `long` with the same bits.
    fn java_hash_code(&self) -> i32 {
        java_long_hash(*self as i64)
    }
}

impl Key for bool {
    /// `Boolean.hashCode`: 1231 for true, 1237 for false.
    fn java_hash_code(&self) -> i32 {
        if *self {
            1231
        } else {
            1237
        }
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    /// Flink's `Tuple2.hashCode`: `31 * f0.hashCode() + f1.hashCode()`.
    fn java_hash_code(&self) -> i32 {
        self.0.java_hash_code().wrapping_mul(31).wrapping_add(self.1.java_hash_code())
    }
}

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    // One pass for ASCII (every ASCII byte is one UTF-16 unit of the same value); the first
    // non-ASCII byte starts over on the UTF-16 units.
    let mut h = 0i32;
    for &byte in s.as_bytes() {
        if !byte.is_ascii() {
            return s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32));
        }
        h = h.wrapping_mul(31).wrapping_add(byte as i32);
    }
    h
}

/// Java's `Long.hashCode`: `(int) (v ^ (v >>> 32))`.
pub fn java_long_hash(v: i64) -> i32 {
    let bits = v as u64;
    (bits ^ (bits >> 32)) as u32 as i32
}

/// Flink's `MathUtils.murmurHash(int)`: murmur3-32 of one int with seed 0, made non-negative.
pub fn murmur_hash(code: i32) -> i32 {
    let mut h = code as u32;
    h = h.wrapping_mul(0xcc9e_2d51);
    h = h.rotate_left(15);
    h = h.wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13);
    h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    h ^= 4;
    h = bit_mix(h);
    let h = h as i32;
    if h >= 0 {
        h
    } else if h != i32::MIN {
        -h
    } else {
        0
    }
}

fn bit_mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The key group of a key hash (`computeKeyGroupForKeyHash`).
pub fn key_group_for_hash(java_hash: i32, max_parallelism: u32) -> KeyGroup {
    debug_assert!(max_parallelism > 0);
    let hash = murmur_hash(java_hash) as u32;
    // The default max parallelism is a power of two: a mask instead of a division.
    if max_parallelism.is_power_of_two() {
        return KeyGroup(hash & (max_parallelism - 1));
    }
    KeyGroup(hash % max_parallelism)
}

/// How a keyed stream gets each record's key (Flink's `KeySelector`). Every `Fn(&T) -> K`
/// closure is one; [`RecordIsKey`] keys a record by itself without copying it per record.
pub trait KeySelector<T, K>: Clone + Send + Sync + 'static {
    /// Writes the key of `record` into `key`, reusing the allocation already there when it can.
    fn key_into(&self, record: &T, key: &mut Option<K>);

    /// The key of `record`: borrowed from the record when it is its own key, else computed into
    /// `scratch` (the hash router needs only a reference, for the key group).
    fn key_of<'a>(&self, record: &'a T, scratch: &'a mut Option<K>) -> &'a K;
}

impl<T, K, F: Fn(&T) -> K + Clone + Send + Sync + 'static> KeySelector<T, K> for F {
    fn key_into(&self, record: &T, key: &mut Option<K>) {
        *key = Some(self(record));
    }

    fn key_of<'a>(&self, record: &'a T, scratch: &'a mut Option<K>) -> &'a K {
        scratch.insert(self(record))
    }
}

/// Keys each record by itself: `key_by(|x| x.clone())` without a clone (an allocation, for a
/// `String`) per record and per hop — see `DataStream::key_by_record`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordIsKey;

impl<T: Key> KeySelector<T, T> for RecordIsKey {
    fn key_into(&self, record: &T, key: &mut Option<T>) {
        match key {
            // `clone_from` reuses the key's buffer: no allocation once it is large enough.
            Some(k) => k.clone_from(record),
            None => *key = Some(record.clone()),
        }
    }

    fn key_of<'a>(&self, record: &'a T, _scratch: &'a mut Option<T>) -> &'a T {
        record
    }
}

/// The key group of a key (`assignToKeyGroup`).
pub fn key_group_for_key<K: Key>(key: &K, max_parallelism: u32) -> KeyGroup {
    key_group_for_hash(key.java_hash_code(), max_parallelism)
}

/// The subtask owning a key group (`computeOperatorIndexForKeyGroup`).
pub fn operator_index_for_key_group(max_parallelism: u32, parallelism: u32, key_group: KeyGroup) -> SubtaskIndex {
    debug_assert!(key_group.0 < max_parallelism);
    debug_assert!(parallelism >= 1 && parallelism <= max_parallelism);
    SubtaskIndex(((key_group.0 as u64 * parallelism as u64) / max_parallelism as u64) as u32)
}

/// Flink's default max parallelism for an operator of parallelism `p`
/// (`computeDefaultMaxParallelism`): `min(max(round_up_pow2(p + p/2), 128), 32768)`.
pub fn default_max_parallelism(parallelism: u32) -> u32 {
    let wanted = (parallelism as u64 + parallelism as u64 / 2).next_power_of_two();
    wanted.clamp(DEFAULT_LOWER_BOUND_MAX_PARALLELISM as u64, UPPER_BOUND_MAX_PARALLELISM as u64) as u32
}

/// A contiguous, inclusive range of key groups; empty when `start > end`
/// (Flink's `KeyGroupRange`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: u32,
    /// Last key group in the range (inclusive).
    pub end: u32,
}

impl KeyGroupRange {
    /// The range `[start, end]`.
    pub const fn new(start: u32, end: u32) -> Self {
        KeyGroupRange { start, end }
    }

    /// Every key group of an operator with this max parallelism.
    pub const fn all(max_parallelism: u32) -> Self {
        KeyGroupRange { start: 0, end: max_parallelism - 1 }
    }

    /// The range owned by `operator_index` (`computeKeyGroupRangeForOperatorIndex`).
    pub fn for_operator_index(max_parallelism: u32, parallelism: u32, operator_index: SubtaskIndex) -> Self {
        assert!(parallelism >= 1, "parallelism must be at least 1");
        assert!(parallelism <= max_parallelism, "parallelism {parallelism} above max parallelism {max_parallelism}");
        assert!(operator_index.0 < parallelism, "operator index {operator_index} out of [0, {parallelism})");
        let (i, p, m) = (operator_index.0 as u64, parallelism as u64, max_parallelism as u64);
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p;
        KeyGroupRange { start: start as u32, end: end as u32 }
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        if self.start > self.end {
            0
        } else {
            self.end - self.start + 1
        }
    }

    /// True when the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `kg` is in the range.
    pub fn contains(&self, kg: KeyGroup) -> bool {
        self.start <= kg.0 && kg.0 <= self.end
    }

    /// The key groups in order.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> + Clone {
        let (start, len) = (self.start, self.len());
        (0..len).map(move |i| KeyGroup(start + i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_is_its_own_key_gets_the_same_key_as_a_cloning_selector() {
        let clone = |w: &String| w.clone();
        let mut by_clone = None;
        let mut by_record = Some(String::with_capacity(64));
        let capacity_before = by_record.as_ref().map(String::capacity);
        for word in ["", "a", "word", "straße"] {
            let record = word.to_string();
            clone.key_into(&record, &mut by_clone);
            RecordIsKey.key_into(&record, &mut by_record);
            assert_eq!(by_record, by_clone, "{word:?}");
            let mut scratch = None;
            assert_eq!(RecordIsKey.key_of(&record, &mut scratch), &record);
            assert!(scratch.is_none(), "the record itself is borrowed");
            assert_eq!(clone.key_of(&record, &mut scratch), &record);
        }
        assert_eq!(by_record.as_ref().map(String::capacity), capacity_before, "the key buffer is reused");
        let mut empty = None;
        RecordIsKey.key_into(&7i64, &mut empty);
        assert_eq!(empty, Some(7));
    }
    use proptest::prelude::*;

    /// Values computed by Flink 2.3's `KeyGroupRangeAssignment` (see the issue that asked for them).
    #[test]
    fn key_groups_match_flink() {
        let hello = String::from("hello");
        let flink = String::from("flink");
        let cases: &[(&str, KeyGroup, KeyGroup)] = &[
            ("\"hello\" @128", key_group_for_key(&hello, 128), KeyGroup(35)),
            ("\"flink\" @4096", key_group_for_key(&flink, 4096), KeyGroup(226)),
            ("42i32 @128", key_group_for_key(&42i32, 128), KeyGroup(29)),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(operator_index_for_key_group(128, 7, KeyGroup(35)), SubtaskIndex(1));
        assert_eq!(operator_index_for_key_group(128, 13, KeyGroup(35)), SubtaskIndex(3));
    }

    #[test]
    fn java_hash_codes_match_java() {
        // Values from the JDK: "hello".hashCode(), "".hashCode(), Long.hashCode, a non-BMP char.
        let cases: &[(i32, i32)] = &[
            (java_string_hash("hello"), 99_162_322),
            (java_string_hash(""), 0),
            (java_string_hash("a"), 97),
            (java_string_hash("polygenelubricants"), i32::MIN),
            (java_string_hash("\u{1F600}"), 1_772_899), // "😀": UTF-16 0xD83D * 31 + 0xDE00
            (java_long_hash(1), 1),
            (java_long_hash(-1), 0),
            (java_long_hash(1 << 32), 1),
            (true.java_hash_code(), 1231),
        ];
        for (i, (got, want)) in cases.iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn murmur_hash_is_never_negative() {
        for code in [i32::MIN, -1, 0, 1, i32::MAX, 99_162_322] {
            assert!(murmur_hash(code) >= 0, "{code}");
        }
    }

    #[test]
    fn default_max_parallelism_follows_flink() {
        let cases: &[(u32, u32)] = &[(1, 128), (85, 128), (86, 256), (100, 256), (1000, 2048), (30_000, 32_768)];
        for &(p, want) in cases {
            assert_eq!(default_max_parallelism(p), want, "p={p}");
        }
    }

    #[test]
    fn ranges_for_a_small_example() {
        let got: Vec<_> = (0..3).map(|i| KeyGroupRange::for_operator_index(10, 3, SubtaskIndex(i))).collect();
        assert_eq!(got, vec![KeyGroupRange::new(0, 3), KeyGroupRange::new(4, 6), KeyGroupRange::new(7, 9)]);
    }

    #[test]
    fn a_string_key_encodes_to_the_codec_bytes_at_every_length_class() {
        let long = "x".repeat(70_000);
        let keys = ["", "a", "wörd", &"y".repeat(250), &"y".repeat(251), &"z".repeat(0xFFFF), long.as_str()];
        for key in keys {
            let key = key.to_string();
            let mut out = b"ns".to_vec();
            key.encode_into(&mut out).unwrap();
            assert_eq!(out[2..], crate::codec::to_bytes(&key).unwrap()[..], "{} bytes", key.len());
            assert_eq!(&out[..2], b"ns", "appends");
        }
    }

    #[test]
    fn an_inline_string_key_is_the_equal_string_key() {
        let long = "x".repeat(70_000);
        for word in ["", "a", "wörd", "exactly-twenty-four-byte", "twenty-five-bytes-is-heap", long.as_str()] {
            let (string, inline) = (word.to_string(), CompactString::new(word));
            assert_eq!(inline.java_hash_code(), string.java_hash_code(), "{} bytes", word.len());
            assert_eq!(key_group_for_key(&inline, 128), key_group_for_key(&string, 128), "{} bytes", word.len());
            let (mut a, mut b) = (b"ns".to_vec(), b"ns".to_vec());
            inline.encode_into(&mut a).unwrap();
            string.encode_into(&mut b).unwrap();
            assert_eq!(a, b, "{} bytes", word.len());
            assert_eq!(crate::codec::to_bytes(&inline).unwrap(), crate::codec::to_bytes(&string).unwrap(), "serde bytes too");
        }
        assert!(!CompactString::new("exactly-twenty-four-byte").is_heap_allocated(), "24 bytes are inline");
    }

    proptest! {
        /// The ASCII fast path of the Java string hash is Java's UTF-16 hash.
        #[test]
        fn the_java_string_hash_is_the_utf16_hash(s in "\\PC{0,24}|[ -~]{0,40}") {
            let utf16 = s.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32));
            prop_assert_eq!(java_string_hash(&s), utf16);
        }

        /// Tuple keys (the default, serde encoding) and string keys append `codec::to_bytes`.
        #[test]
        fn every_key_encodes_to_its_codec_bytes(a in "\\PC{0,12}", b in any::<u64>()) {
            let key = (a.clone(), b);
            let mut out = Vec::new();
            key.encode_into(&mut out).unwrap();
            prop_assert_eq!(out, crate::codec::to_bytes(&key).unwrap());
            let mut out = Vec::new();
            a.encode_into(&mut out).unwrap();
            prop_assert_eq!(out, crate::codec::to_bytes(&a).unwrap());
        }

        /// For every parallelism, the ranges are contiguous, disjoint and cover [0, maxP);
        /// and a key group's operator index is the subtask whose range holds it.
        #[test]
        fn ranges_partition_every_key_group(max_p in 1u32..=4096, p_seed in 1u32..=4096) {
            let p = 1 + (p_seed - 1) % max_p;
            let mut next = 0u32;
            for i in 0..p {
                let r = KeyGroupRange::for_operator_index(max_p, p, SubtaskIndex(i));
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty(), "subtask {} of {} got no key group at maxP {}", i, p, max_p);
                for kg in [r.start, r.end] {
                    prop_assert_eq!(operator_index_for_key_group(max_p, p, KeyGroup(kg)), SubtaskIndex(i));
                }
                next = r.end + 1;
            }
            prop_assert_eq!(next, max_p);
        }

        /// The power-of-two mask is Flink's modulo.
        #[test]
        fn a_key_group_is_the_murmur_hash_modulo_max_parallelism(hash in any::<i32>(), max_p in 1u32..=32768, shift in 0u32..=15) {
            for m in [max_p, 1 << shift] {
                prop_assert_eq!(key_group_for_hash(hash, m), KeyGroup(murmur_hash(hash) as u32 % m));
            }
        }

        #[test]
        fn every_key_lands_in_range(key in ".*", max_p in 1u32..=32768) {
            let kg = key_group_for_key(&key, max_p);
            prop_assert!(kg.0 < max_p);
        }
    }
}
