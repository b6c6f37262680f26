//! Bytes for everything floe persists or sends: bincode 2 (serde) bodies, and a checked
//! envelope — magic, format version, length, crc32 — for anything that must never be used
//! if it is corrupt or truncated (snapshots, checkpoint metadata).
//!
//! Envelope layout (little endian):
//! `magic: [u8; 4] | version: u16 | body_len: u32 | crc32(body): u32 | body`.

use serde::{de::DeserializeOwned, Serialize};

/// The most bytes one decoded value may claim. bincode checks a length prefix against this
/// *before* allocating, so bytes that declare a 2^45-byte string are a typed error, not an
/// allocation failure that aborts the process (found by the `frame_decoder` fuzz target).
pub const DECODE_BYTES_MAX: usize = 1 << 30;

/// floe's bincode configuration (standard: varint integers, little endian; see [`DECODE_BYTES_MAX`]).
pub type Config = bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint, bincode::config::Limit<DECODE_BYTES_MAX>>;

/// The bincode configuration floe uses everywhere: standard, with a decode limit.
pub fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// Encodes a value with floe's bincode configuration.
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends the encoding of a value to `out`: the same bytes as [`to_bytes`]. On error `out` is
/// left as it was.
pub fn append_bytes<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    let start = out.len();
    bincode::serde::encode_into_std_write(value, out, config()).map(|_| ()).map_err(|e| {
        out.truncate(start);
        CodecError::Encode(e.to_string())
    })
}

/// Decodes a value; trailing bytes are an error (a frame carries exactly one value).
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes { used, len: bytes.len() });
    }
    Ok(value)
}

/// Bytes in the envelope before the body.
pub const ENVELOPE_HEADER_BYTES: usize = 4 + 2 + 4 + 4;

/// Wraps `body` in a checked envelope.
pub fn seal(magic: [u8; 4], version: u16, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("an envelope body is below 4 GiB");
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_BYTES + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks an envelope and returns its body. Never panics, whatever the bytes.
pub fn open(magic: [u8; 4], version: u16, bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < ENVELOPE_HEADER_BYTES {
        return Err(CodecError::Truncated { needed: ENVELOPE_HEADER_BYTES, got: bytes.len() });
    }
    let (header, body) = bytes.split_at(ENVELOPE_HEADER_BYTES);
    if header[0..4] != magic {
        return Err(CodecError::BadMagic { expected: magic, found: [header[0], header[1], header[2], header[3]] });
    }
    let found_version = u16::from_le_bytes([header[4], header[5]]);
    if found_version != version {
        return Err(CodecError::UnsupportedVersion { expected: version, found: found_version });
    }
    let len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
    if body.len() < len {
        return Err(CodecError::Truncated { needed: ENVELOPE_HEADER_BYTES + len, got: bytes.len() });
    }
    if body.len() > len {
        return Err(CodecError::TrailingBytes { used: ENVELOPE_HEADER_BYTES + len, len: bytes.len() });
    }
    let crc = u32::from_le_bytes([header[10], header[11], header[12], header[13]]);
    let actual = crc32fast::hash(body);
    if crc != actual {
        return Err(CodecError::ChecksumMismatch { expected: crc, actual });
    }
    Ok(body)
}

/// Encodes `value` and seals it.
pub fn seal_value<T: Serialize + ?Sized>(magic: [u8; 4], version: u16, value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(seal(magic, version, &to_bytes(value)?))
}

/// Appends the envelope of `value` to `out`: the same bytes as [`seal_value`], encoded straight
/// into `out` (no body buffer to grow and copy). On error `out` is left as it was.
pub fn seal_value_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, magic: [u8; 4], version: u16, value: &T) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; ENVELOPE_HEADER_BYTES]);
    let encoded = bincode::serde::encode_into_std_write(value, out, config()).map_err(|e| CodecError::Encode(e.to_string()));
    let body_len = out.len() - start - ENVELOPE_HEADER_BYTES;
    let len = match (encoded, u32::try_from(body_len)) {
        (Ok(_), Ok(len)) => len,
        (Err(e), _) => {
            out.truncate(start);
            return Err(e);
        }
        (Ok(_), Err(_)) => {
            out.truncate(start);
            return Err(CodecError::Encode(format!("an envelope body of {body_len} bytes is not below 4 GiB")));
        }
    };
    let crc = crc32fast::hash(&out[start + ENVELOPE_HEADER_BYTES..]);
    let header = &mut out[start..start + ENVELOPE_HEADER_BYTES];
    header[0..4].copy_from_slice(&magic);
    header[4..6].copy_from_slice(&version.to_le_bytes());
    header[6..10].copy_from_slice(&len.to_le_bytes());
    header[10..14].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes a `Vec<String>` encoded by [`to_bytes`] (a varint count, then each string as a varint
/// length and its bytes) — the same result as `from_bytes::<Vec<String>>`, but each string is
/// checked in place and copied into a plain allocation: bincode's owned path allocates zeroed
/// memory (`calloc`, which bypasses glibc's thread cache) for every string and copies it there.
/// Never panics, whatever the bytes; the count reserves at most one slot per remaining byte.
pub fn strings_from_bytes(bytes: &[u8]) -> Result<Vec<String>, CodecError> {
    str_batch_from_bytes(bytes)
}

/// [`strings_from_bytes`] into any string type made from a `&str` (a `String`, or an inline
/// [`CompactString`](crate::key_groups::CompactString), which takes no allocation at all for a
/// short string): the same bytes decode to equal strings, or fail alike.
pub fn str_batch_from_bytes<S: for<'a> From<&'a str>>(bytes: &[u8]) -> Result<Vec<S>, CodecError> {
    let mut pos = 0usize;
    let count = read_varint(bytes, &mut pos)?;
    let remaining = bytes.len() - pos;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX).min(remaining));
    // One validation pass over the batch after its count: when that is UTF-8 (it is whenever
    // every length is below 128, as for words), a string between two char boundaries is too, and
    // slicing checks only its two ends. Otherwise each string is validated on its own.
    let strings_start = pos;
    let whole = std::str::from_utf8(&bytes[strings_start..]).ok();
    for _ in 0..count {
        let len = read_varint(bytes, &mut pos)?;
        let end = usize::try_from(len).ok().and_then(|len| pos.checked_add(len)).filter(|end| *end <= bytes.len());
        let Some(end) = end else {
            return Err(CodecError::Decode(format!("a string of {len} bytes at byte {pos} of {}", bytes.len())));
        };
        let s = match whole.and_then(|text| text.get(pos - strings_start..end - strings_start)) {
            Some(s) => s,
            None => std::str::from_utf8(&bytes[pos..end]).map_err(|e| CodecError::Decode(format!("a string at byte {pos} is not UTF-8: {e}")))?,
        };
        out.push(S::from(s));
        pos = end;
    }
    if pos != bytes.len() {
        return Err(CodecError::TrailingBytes { used: pos, len: bytes.len() });
    }
    Ok(out)
}

/// Appends a batch of strings in the bytes of `to_bytes(&strings)` (a varint count, then each
/// string as a varint length and its bytes), without serde: the encoder of
/// [`str_batch_from_bytes`]. Works for `String`s and inline strings alike.
pub fn put_str_batch<S: AsRef<str>>(out: &mut Vec<u8>, strings: &[S]) {
    put_varint(out, strings.len() as u64);
    for s in strings {
        let s = s.as_ref();
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
}

/// Bytes [`put_varint`] writes for `v`.
pub fn varint_bytes(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

/// Appends `v` in bincode's varint encoding (floe's [`config`]): below 251 one byte; else a
/// marker byte (251, 252, 253) and the value as a little-endian u16, u32 or u64.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    // The one-byte case inline at every caller (string lengths, counts); the rest out of line.
    if v <= 250 {
        out.push(v as u8);
    } else {
        put_wide_varint(out, v);
    }
}

fn put_wide_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xFFFF => {
            out.push(251);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(252);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        _ => {
            out.push(253);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Reads one unsigned varint in bincode's encoding (below 251: the byte; 251, 252, 253: a
/// little-endian u16, u32, u64 follows) at `pos`, advancing it.
#[inline]
fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, CodecError> {
    let take = |pos: &mut usize, n: usize| -> Result<u64, CodecError> {
        let start = *pos + 1;
        let field = bytes.get(start..start + n).ok_or(CodecError::Decode(format!("a varint at byte {} runs past the end", *pos)))?;
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(field);
        *pos = start + n;
        Ok(u64::from_le_bytes(le))
    };
    match bytes.get(*pos) {
        None => Err(CodecError::Decode(format!("a varint at byte {} runs past the end", *pos))),
        Some(&b) if b < 251 => {
            *pos += 1;
            Ok(u64::from(b))
        }
        Some(251) => take(pos, 2),
        Some(252) => take(pos, 4),
        Some(253) => take(pos, 8),
        Some(b) => Err(CodecError::Decode(format!("invalid varint marker {b} at byte {}", *pos))),
    }
}

/// Opens an envelope and decodes its body.
pub fn open_value<T: DeserializeOwned>(magic: [u8; 4], version: u16, bytes: &[u8]) -> Result<T, CodecError> {
    from_bytes(open(magic, version, bytes)?)
}

/// `#[serde(with = "floe_core::codec::byte_buf")]` for a `Vec<u8>` field: serializes it as one
/// byte string instead of a sequence of `u8`s. In floe's bincode configuration both forms are the
/// same bytes (a varint length, then the bytes), so the wire and disk formats do not change; the
/// byte-string form is copied in one `memcpy` instead of being visited byte by byte.
pub mod byte_buf {
    use serde::{de, Deserializer, Serializer};

    /// Serializes `bytes` as a byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Deserializes a byte string (or, from self-describing formats, a sequence of `u8`s).
    ///
    /// Asks for borrowed bytes: from a slice, bincode then hands over the bytes in place and
    /// they are copied into a plain allocation, where `deserialize_byte_buf` would make bincode
    /// allocate zeroed memory (`calloc`, which skips glibc's thread cache) and then copy.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_bytes(BytesVisitor)
    }

    pub(super) struct BytesVisitor;

    impl<'de> de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Bound the pre-allocation: the size hint comes from untrusted bytes.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(super::SEQ_PREALLOCATION_BYTES_MAX));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// `#[serde(with = "floe_core::codec::opt_byte_buf")]` for an `Option<Vec<u8>>` field: as
/// [`byte_buf`], inside an option (same bytes as the derived form in floe's bincode configuration).
pub mod opt_byte_buf {
    use serde::{de, Deserializer, Serializer};

    /// Serializes `bytes` as an optional byte string.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => serializer.serialize_some(&Bytes(b)),
            None => serializer.serialize_none(),
        }
    }

    /// Deserializes an optional byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        deserializer.deserialize_option(OptVisitor)
    }

    struct Bytes<'a>(&'a [u8]);

    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    struct OptVisitor;

    impl<'de> de::Visitor<'de> for OptVisitor {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an optional byte string")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            super::byte_buf::deserialize(deserializer).map(Some)
        }
    }
}

/// The most bytes [`byte_buf`] reserves up front when it reads a byte string as a sequence.
const SEQ_PREALLOCATION_BYTES_MAX: usize = 64 << 10;

/// Why bytes could not be turned into a value (or back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Serialization failed.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The body is not a valid encoding of the expected type.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Fewer bytes than the header or the declared length.
    #[error("truncated: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the envelope declares.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// More bytes than one value.
    #[error("trailing bytes: a value used {used} of {len} bytes")]
    TrailingBytes {
        /// Bytes the value used.
        used: usize,
        /// Bytes present.
        len: usize,
    },
    /// The envelope is of another kind.
    #[error("bad magic: expected {expected:?}, found {found:?}")]
    BadMagic {
        /// The magic this reader wants.
        expected: [u8; 4],
        /// The magic in the bytes.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    #[error("unsupported format version {found} (this build reads {expected})")]
    UnsupportedVersion {
        /// The version this build reads.
        expected: u16,
        /// The version in the bytes.
        found: u16,
    },
    /// The body's crc32 does not match the header's.
    #[error("checksum mismatch: header says {expected:#010x}, body hashes to {actual:#010x}")]
    ChecksumMismatch {
        /// The crc in the header.
        expected: u32,
        /// The crc of the body present.
        actual: u32,
    },
}

#[cfg(test)]
mod tests {

    #[test]
    fn put_varint_writes_bincode_varints_of_the_size_varint_bytes_says() {
        for v in [0u64, 250, 251, 0xFFFF, 0x1_0000, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, to_bytes(&v).unwrap(), "{v}");
            assert_eq!(out.len(), varint_bytes(v), "{v}");
        }
    }

    use super::*;

    #[test]
    fn strings_decode_like_the_generic_decoder_at_every_length_class() {
        let cases: Vec<Vec<String>> = vec![
            vec![],
            vec![String::new()],
            vec!["a".into(), "wörd".into(), "y".repeat(250), "y".repeat(251), "z".repeat(0xFFFF), "z".repeat(0x1_0000)],
            (0..300).map(|i| format!("w{i}")).collect(),
            (0..300).map(|i| format!("wörd{i}")).chain(["x".repeat(127), "y".repeat(128)]).collect(),
        ];
        for strings in cases {
            let bytes = to_bytes(&strings).unwrap();
            assert_eq!(strings_from_bytes(&bytes).unwrap(), strings, "{} strings", strings.len());
            let inline: Vec<crate::key_groups::CompactString> = str_batch_from_bytes(&bytes).unwrap();
            assert!(inline.iter().map(|s| s.as_str()).eq(strings.iter().map(String::as_str)), "{} inline strings", strings.len());
            let mut out = b"old".to_vec();
            put_str_batch(&mut out, &strings);
            assert_eq!(out[3..], bytes[..], "put_str_batch appends the codec bytes");
            let mut out = Vec::new();
            put_str_batch(&mut out, &inline);
            assert_eq!(out, bytes, "inline strings encode alike");
        }
    }

    #[test]
    fn malformed_string_batches_are_errors_like_the_generic_decoder() {
        let good = to_bytes(&vec!["ab".to_string(), "c".to_string()]).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        let not_utf8 = vec![1u8, 1, 0xFF];
        let huge_count = vec![253u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        let huge_len = vec![1u8, 253, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        let bad_marker = vec![255u8];
        // The whole batch is UTF-8 ("\x01\x01ö"), but its one string ends inside the "ö".
        let cut_char = vec![1u8, 1, 0xC3, 0xB6];
        let cases: Vec<Vec<u8>> = vec![vec![], good[..good.len() - 1].to_vec(), trailing, not_utf8, huge_count, huge_len, bad_marker, vec![251, 1], cut_char];
        for bytes in cases {
            assert!(strings_from_bytes(&bytes).is_err(), "{bytes:?}");
            assert!(str_batch_from_bytes::<crate::key_groups::CompactString>(&bytes).is_err(), "{bytes:?}");
            assert!(from_bytes::<Vec<String>>(&bytes).is_err(), "{bytes:?}");
        }
        // Non-minimal varints (a wide form of a small number): both decoders agree.
        let wide: Vec<Vec<u8>> = vec![vec![251, 1, 0, 1, b'a'], vec![1, 252, 1, 0, 0, 0, b'a'], vec![253, 1, 0, 0, 0, 0, 0, 0, 0, 0]];
        for bytes in wide {
            assert_eq!(strings_from_bytes(&bytes).ok(), from_bytes::<Vec<String>>(&bytes).ok(), "{bytes:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, the fast decoder agrees with the generic one on what decodes.
        #[test]
        fn strings_decode_exactly_when_the_generic_decoder_does(strings in proptest::collection::vec("\\PC{0,8}", 0..20), cut in 0usize..64, flip in proptest::option::of((0usize..64, 0u8..=255))) {
            let mut bytes = to_bytes(&strings).unwrap();
            if let Some((at, b)) = flip {
                if let Some(x) = bytes.get_mut(at) {
                    *x = b;
                }
            }
            bytes.truncate(bytes.len().saturating_sub(cut % 3));
            proptest::prop_assert_eq!(strings_from_bytes(&bytes).ok(), from_bytes::<Vec<String>>(&bytes).ok());
            let inline = str_batch_from_bytes::<crate::key_groups::CompactString>(&bytes).ok();
            proptest::prop_assert_eq!(inline.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>()), from_bytes::<Vec<String>>(&bytes).ok());
        }
    }

    #[test]
    fn a_value_sealed_into_a_buffer_appends_the_same_bytes_as_seal_value() {
        let long = "x".repeat(70_000);
        let values: [&str; 3] = ["", "word", long.as_str()];
        for value in values {
            let mut out = b"prefix".to_vec();
            seal_value_into(&mut out, *b"TEST", 3, &(value, 7u64)).unwrap();
            let mut want = b"prefix".to_vec();
            want.extend(seal_value(*b"TEST", 3, &(value, 7u64)).unwrap());
            assert_eq!(out, want, "{} bytes", value.len());
            assert_eq!(open_value::<(String, u64)>(*b"TEST", 3, &out[6..]).unwrap(), (value.to_string(), 7));
        }
    }

    #[test]
    fn byte_strings_encode_to_the_same_bytes_as_the_derived_vec_form() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Derived {
            key: Option<Vec<u8>>,
            value: Vec<u8>,
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct ByteString {
            #[serde(with = "opt_byte_buf")]
            key: Option<Vec<u8>>,
            #[serde(with = "byte_buf")]
            value: Vec<u8>,
        }
        let long: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let cases: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![(None, vec![]), (Some(vec![]), vec![0]), (Some(b"k".to_vec()), long.clone()), (Some(long), b"v".to_vec())];
        for (key, value) in cases {
            let derived = to_bytes(&Derived { key: key.clone(), value: value.clone() }).unwrap();
            let bytes = to_bytes(&ByteString { key: key.clone(), value: value.clone() }).unwrap();
            assert_eq!(bytes, derived, "key {:?}", key.as_ref().map(Vec::len));
            let back: ByteString = from_bytes(&derived).unwrap();
            assert_eq!(back, ByteString { key: key.clone(), value: value.clone() });
            let back: Derived = from_bytes(&bytes).unwrap();
            assert_eq!(back, Derived { key, value });
        }
    }

    #[test]
    fn a_truncated_byte_string_is_a_decode_error() {
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        struct ByteString(#[serde(with = "byte_buf")] Vec<u8>);
        let bytes = to_bytes(&ByteString(vec![7; 300])).unwrap();
        for cut in [0, 1, 2, 100, bytes.len() - 1] {
            assert!(matches!(from_bytes::<ByteString>(&bytes[..cut]), Err(CodecError::Decode(_))), "cut at {cut}");
        }
    }

    const MAGIC: [u8; 4] = *b"TEST";

    #[test]
    fn a_sealed_value_opens_to_itself() {
        let v = (String::from("word"), 7u64, vec![1u8, 2, 3]);
        let bytes = seal_value(MAGIC, 1, &v).unwrap();
        let back: (String, u64, Vec<u8>) = open_value(MAGIC, 1, &bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn every_kind_of_damage_is_a_typed_error() {
        let good = seal_value(MAGIC, 1, &vec![5u32; 16]).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        let mut longer = good.clone();
        longer.push(0);
        type IsExpected = fn(&CodecError) -> bool;
        let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
            ("empty", vec![], |e| matches!(e, CodecError::Truncated { .. })),
            ("header only", good[..ENVELOPE_HEADER_BYTES].to_vec(), |e| matches!(e, CodecError::Truncated { .. })),
            ("one byte short", good[..good.len() - 1].to_vec(), |e| matches!(e, CodecError::Truncated { .. })),
            ("one byte long", longer, |e| matches!(e, CodecError::TrailingBytes { .. })),
            ("bit flip in body", flipped, |e| matches!(e, CodecError::ChecksumMismatch { .. })),
        ];
        for (name, bytes, is_expected) in cases {
            let err = open_value::<Vec<u32>>(MAGIC, 1, &bytes).unwrap_err();
            assert!(is_expected(&err), "{name}: unexpected {err:?}");
        }
        assert!(matches!(open(*b"NOPE", 1, &good), Err(CodecError::BadMagic { .. })));
        assert!(matches!(open(MAGIC, 2, &good), Err(CodecError::UnsupportedVersion { expected: 2, found: 1 })));
    }

    #[test]
    fn a_length_prefix_beyond_the_limit_is_an_error_before_any_allocation() {
        // A String whose varint length prefix (0xFD + u64 LE) declares 2^45 bytes.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(1u64 << 45).to_le_bytes());
        assert!(matches!(from_bytes::<String>(&bytes), Err(CodecError::Decode(_))));
        let mut huge = vec![0xFD];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(from_bytes::<Vec<u8>>(&huge), Err(CodecError::Decode(_))));
    }

    #[test]
    fn a_body_of_the_wrong_type_is_a_decode_error_not_a_panic() {
        let bytes = seal_value(MAGIC, 1, &u8::MAX).unwrap();
        assert!(matches!(open_value::<String>(MAGIC, 1, &bytes), Err(CodecError::Decode(_))));
    }
}
